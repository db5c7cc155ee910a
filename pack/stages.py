"""Pipeline stages: `count_tokens` (sequence length per sample) and `pack` (the packing plan).

`count_tokens` runs per batch: image tokens from the width/height stored at ingest (no decode),
video tokens from duration/fps/size, text tokens with the recipe's tokenizer laid out by the
trainer's template. `pack` is a global step: it sees `num_tokens` and `image_tokens` of every kept
sample, handles samples longer than the context (reject, or truncate their text), and assigns each
sample a pack and a position in it. The plan is deterministic and independent of input row order
(samples are ordered by `_ordinal`, lengths tie-broken by it).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import records as R
from curate.base import BatchResult, Resources, Stage, register
from curate.base.global_data import stable_hash64
from curate.base.partials import read_partials, write_partial
from pack import tokens as T
from pack.packing import OverlongError, first_fit_decreasing, pack_stats, plan_packs
from pack.packing.stats import PackStats
from pack.profile import resolve_profile


# =============================================================================================
# count_tokens
# =============================================================================================

@register
class CountTokensStage(Stage):
    name = "count_tokens"
    description = ("Sequence length of every sample as the trainer builds it: Qwen2-VL image/video tokens from "
                   "metadata (no decode) plus text tokens through the chat template, with a local tokenizer.")
    requires = ("images", "videos", "text", "conversations")
    adds = {
        "num_tokens": pa.int64(),
        "text_tokens": pa.int64(),
        "image_tokens": pa.list_(pa.int32()),
        "video_tokens": pa.list_(pa.int32()),
    }
    # Large batches: the text counter's per-pass costs (hash of cached pieces) amortise over more rows.
    resources = Resources(cpus=1, batch_size=16384, kind="task")
    summary_columns = ("num_tokens", "text_tokens")

    @dataclass
    class Config:
        profile: str | dict[str, Any] | None = field(default=None, metadata={
            "doc": "the model profile (pack.profile: a preset name such as qwen2-vl, qwen2.5-vl, open-qwen2vl, or "
                   "{preset: ..., field: value}); null: the recipe's model:, else the default qwen2-vl"})

    def validate_config(self) -> None:
        self.profile = resolve_profile(self.context, self.config.profile)
        p = self.profile
        if p.tokenizer is not None and not Path(p.tokenizer).is_dir():
            raise ValueError(f"tokenizer: directory {p.tokenizer!r} does not exist")
        self.template = T.Template(**p.template_fields())
        self.video = p.video_settings()

    def setup(self) -> None:
        self.tokenizer = T.load_tokenizer(self.profile.tokenizer)

    # --- per-batch ------------------------------------------------------------------------------
    def _image_counts(self, images: pa.ListArray, reasons: list[str | None], details: list[str | None]) -> pa.ListArray:
        c = self.profile
        n = len(images)
        offsets, flat = _list_parts(images)
        parent = np.repeat(np.arange(n), np.diff(offsets))
        m = len(flat)
        values = np.zeros(m, dtype=np.int64)
        if m and c.image_mode == "fixed":
            values[:] = c.fixed_tokens_per_image
        elif m:
            w = pc.struct_field(flat, "width")
            h = pc.struct_field(flat, "height")
            ok = np.asarray(pc.and_(pc.is_valid(w), pc.is_valid(h)).to_numpy(zero_copy_only=False))
            wv = np.asarray(pc.fill_null(w, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
            hv = np.asarray(pc.fill_null(h, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
            ok &= (wv > 0) & (hv > 0)
            for i in np.unique(parent[~ok]).tolist():
                _reject(reasons, details, i, "unknown_image_size", "an image has no width/height from its header")
            wv, hv = np.where(ok, wv, 1), np.where(ok, hv, 1)
            ratio = np.maximum(wv, hv) / np.minimum(wv, hv)
            extreme = ratio > T.MAX_ASPECT_RATIO
            for i in np.unique(parent[extreme]).tolist():
                _reject(reasons, details, i, "extreme_aspect_ratio",
                        f"aspect ratio {ratio[parent == i].max():.0f} > {T.MAX_ASPECT_RATIO}")
            good = ok & ~extreme
            values[good] = T.image_tokens(wv[good], hv[good], min_pixels=c.min_pixels, max_pixels=c.max_pixels,
                                          patch_size=c.patch_size, merge_size=c.merge_size)
        return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), pa.array(values, type=pa.int32()))

    def _video_counts(self, videos: pa.ListArray, reasons: list[str | None], details: list[str | None]) -> pa.ListArray:
        n = len(videos)
        offsets, flat = _list_parts(videos)
        parent = np.repeat(np.arange(n), np.diff(offsets))
        values = np.zeros(len(flat), dtype=np.int64)
        if len(flat):
            cols = {k: np.asarray(pc.fill_null(pc.struct_field(flat, k), 0).to_numpy(zero_copy_only=False),
                                  dtype=np.float64)
                    for k in ("duration_s", "fps", "width", "height")}
            ok = np.ones(len(flat), dtype=bool)
            for v in cols.values():
                ok &= np.isfinite(v) & (v > 0)
            for i in np.unique(parent[~ok]).tolist():
                _reject(reasons, details, i, "unknown_video_metadata", "a video lacks duration, fps or size")
            for j in np.flatnonzero(ok).tolist():
                try:
                    values[j] = T.video_tokens(cols["duration_s"][j], cols["fps"][j], int(cols["width"][j]),
                                               int(cols["height"][j]), self.video)
                except ValueError as exc:
                    reason = "video_too_short" if "short" in str(exc) else "extreme_aspect_ratio"
                    _reject(reasons, details, int(parent[j]), reason, str(exc))
        return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), pa.array(values, type=pa.int32()))

    def process_batch(self, batch: pa.Table) -> BatchResult:
        n = batch.num_rows
        reasons: list[str | None] = [None] * n
        details: list[str | None] = [None] * n
        empty_list = pa.array([[]] * n, type=pa.list_(R.IMAGE_REF))
        images = batch.column("images").combine_chunks() if "images" in batch.column_names else empty_list
        videos = batch.column("videos").combine_chunks() if "videos" in batch.column_names else \
            pa.array([[]] * n, type=pa.list_(R.VIDEO_REF))
        img = self._image_counts(images, reasons, details)
        vid = self._video_counts(videos, reasons, details)
        counts = T.count_rows(batch, self.tokenizer, img, vid, self.template)
        for i, err in enumerate(counts.error):
            if err is not None:
                _reject(reasons, details, i, err, counts.detail[i])
        out = batch
        for name, arr in (("num_tokens", pa.array(counts.num_tokens, type=pa.int64())),
                          ("text_tokens", pa.array(counts.text_tokens, type=pa.int64())),
                          ("image_tokens", img), ("video_tokens", vid)):
            idx = out.schema.get_field_index(name)
            out = out.set_column(idx, name, arr) if idx >= 0 else out.append_column(name, arr)
        return BatchResult.split(out, reasons, details)

    def summarize(self, kept: pa.Table) -> dict:
        if kept.num_rows == 0:
            return {"tokens": {"samples": 0}}
        num = np.asarray(kept.column("num_tokens").to_numpy(zero_copy_only=False), dtype=np.int64)
        text = np.asarray(kept.column("text_tokens").to_numpy(zero_copy_only=False), dtype=np.int64)
        pct = np.percentile(num, [50, 90, 99]).round().astype(int).tolist()
        return {"tokens": {"samples": int(num.size), "total": int(num.sum()), "text": int(text.sum()),
                           "vision": int(num.sum() - text.sum()), "p50": pct[0], "p90": pct[1], "p99": pct[2],
                           "max": int(num.max())}}


def _reject(reasons: list[str | None], details: list[str | None], i: int, reason: str, detail: str | None) -> None:
    if reasons[i] is None:
        reasons[i], details[i] = reason, detail


def _list_parts(lists: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Offsets (rows with null lists count as empty) and the flattened values of a list array."""
    n = len(lists)
    lengths = np.asarray(pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, pc.list_flatten(lists)


# =============================================================================================
# pack
# =============================================================================================

@register
class PackStage(Stage):
    name = "pack"
    description = ("Plan packs: every kept sample gets a pack id and a position; first-fit-decreasing or the "
                   "default bin-completion planner (never more packs than FFD), with per-pack image budgets.")
    requires = ("num_tokens", "image_tokens")
    adds = {
        "num_tokens": pa.int64(),
        "pack_id": pa.int64(),
        "pack_position": pa.int32(),
        "truncated_from": pa.int64(),
    }
    resources = Resources(cpus=1)
    global_columns = ("category", "num_tokens", "text_tokens", "image_tokens", "video_tokens")

    @dataclass
    class Config:
        context_length: int = field(default=4096, metadata={
            "doc": "pack capacity in tokens; at most the model profile's context_length when it declares one"})
        overlong: Literal["reject", "truncate"] = field(default="reject", metadata={
            "doc": "samples longer than context_length: reject, or truncate their text (vision tokens are never cut; "
                   "a sample whose vision tokens alone do not fit is rejected as overlong_images)"})
        keep_whole: list[str] = field(default_factory=list, metadata={
            "doc": "categories whose samples must stay whole (e.g. grounding, conversation): with overlong: truncate "
                   "they are rejected as overlong instead of cut"})
        algorithm: Literal["plan", "ffd"] = field(default="plan", metadata={
            "doc": "plan: bin completion, never more packs than FFD; ffd: exact first-fit-decreasing"})
        max_images_per_pack: int | None = field(default=None, metadata={"doc": "images per pack (null: no limit)"})
        max_image_tokens_per_pack: int | None = field(default=None, metadata={
            "doc": "vision tokens (images and videos) per pack: ViT memory and pipeline-stage balance (MindVL)"})
        partition_rows: int = field(default=1_000_000, metadata={
            "doc": "samples packed together: the input is split by a seeded hash of the key into ceil(N / this) "
                   "partitions packed in parallel (bench_pack_partitions: fill within 0.01 pp of one global "
                   "plan at a million samples per partition)"})

    def validate_config(self) -> None:
        c = self.config
        if not isinstance(c.context_length, int) or c.context_length <= 0:
            raise ValueError(f"context_length: must be a positive integer, got {c.context_length!r}")
        model_length = resolve_profile(self.context, None).context_length
        if model_length is not None and c.context_length > model_length:
            raise ValueError(f"context_length: {c.context_length} is longer than the model profile's "
                             f"context_length {model_length}")
        if c.overlong not in ("reject", "truncate"):
            raise ValueError(f"overlong: must be 'reject' or 'truncate', got {c.overlong!r}")
        if c.algorithm not in ("plan", "ffd"):
            raise ValueError(f"algorithm: must be 'plan' or 'ffd', got {c.algorithm!r}")
        if not isinstance(c.keep_whole, (list, tuple)) or not all(isinstance(x, str) for x in c.keep_whole):
            raise ValueError(f"keep_whole: must be a list of category names, got {c.keep_whole!r}")
        for name in ("max_images_per_pack", "max_image_tokens_per_pack"):
            v = getattr(c, name)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise ValueError(f"{name}: must be a positive integer or null, got {v!r}")

    def global_step(self, data: Any) -> Any:
        """Pack each hash partition on its own worker; the report sums the partitions' numbers."""
        parts = max(1, -(-data.count() // self.config.partition_rows))
        salt = self.context.seed
        partials = os.path.join(self.context.out_dir or tempfile.mkdtemp(prefix="mmcurate-pack-"), "stages",
                                f".{self.context.stage_index:02d}_pack.partials")
        shutil.rmtree(partials, ignore_errors=True)

        def tag(batch: pa.Table) -> pa.Table:
            part = (stable_hash64(batch.column("key"), salt) % np.uint64(parts)).astype(np.int64)
            return batch.append_column(PART, pa.array(part))

        decisions = data.map_batches(tag).shuffle_reduce(
            PART, lambda group: self.pack_partitions(group, partials), partitions=parts).materialize()
        self.report = {"packing": combine_reports(list(read_partials(partials).values()), self.config, parts)}
        return decisions

    def pack_partitions(self, group: pa.Table, partials: str) -> pa.Table:
        """Decisions for every partition in `group` (rows sorted by partition, then _ordinal)."""
        out = []
        col = group.column(PART).to_numpy()
        for part in np.unique(col).tolist():
            decisions, report = self.plan_partition(group.filter(pa.array(col == part)).drop_columns([PART]), part)
            write_partial(partials, part, report)
            out.append(decisions)
        return pa.concat_tables(out)

    def plan_partition(self, table: pa.Table, part: int = 0) -> tuple[pa.Table, dict[str, Any]]:
        """Pack one partition: decisions (pack ids offset by part << 32) and its report numbers."""
        c = self.config
        L = c.context_length
        n = table.num_rows
        order = np.argsort(np.asarray(table.column(R.ORDINAL).to_numpy(zero_copy_only=False)), kind="stable")
        t = table.take(pa.array(order))
        num = np.asarray(pc.fill_null(t.column("num_tokens"), -1).to_numpy(zero_copy_only=False), dtype=np.int64)
        img_n, img_sum = _list_count_sum(t, "image_tokens")
        vid_n, vid_sum = _list_count_sum(t, "video_tokens")
        vision = img_sum + vid_sum
        # vision pads plus <|vision_start|>/<|vision_end|> per image or video: what truncation cannot cut
        vision_block = vision + 2 * (img_n + vid_n)

        reasons: list[str | None] = [None] * n
        details: list[str | None] = [None] * n
        truncated_from = np.full(n, -1, dtype=np.int64)
        lengths = num.copy()
        for i in np.flatnonzero(num < 0).tolist():
            reasons[i], details[i] = "missing_num_tokens", "count_tokens did not run on this sample"
        over = np.flatnonzero(num > L)
        whole = set(c.keep_whole)
        categories = t.column("category").to_pylist() if ("category" in t.column_names and whole) else [None] * n
        for i in over.tolist():
            if c.overlong == "reject" or categories[i] in whole:
                why = " (category must stay whole)" if c.overlong == "truncate" else ""
                reasons[i], details[i] = "overlong", f"{num[i]} tokens > context_length {L}{why}"
            elif vision_block[i] >= L:
                reasons[i], details[i] = "overlong_images", f"vision tokens {vision_block[i]} >= context_length {L}"
            else:
                truncated_from[i] = num[i]
                lengths[i] = L
        if c.max_images_per_pack is not None:
            for i in np.flatnonzero(img_n > c.max_images_per_pack).tolist():
                if reasons[i] is None:
                    reasons[i], details[i] = "too_many_images", f"{img_n[i]} images > max_images_per_pack"
        if c.max_image_tokens_per_pack is not None:
            for i in np.flatnonzero(vision > c.max_image_tokens_per_pack).tolist():
                if reasons[i] is None:
                    reasons[i], details[i] = "too_many_image_tokens", \
                        f"{vision[i]} vision tokens > max_image_tokens_per_pack"

        keep = np.array([r is None for r in reasons], dtype=bool)
        idx = np.flatnonzero(keep)
        kw = {}
        if c.max_images_per_pack is not None:
            kw.update(num_images=img_n[idx], max_images_per_pack=c.max_images_per_pack)
        if c.max_image_tokens_per_pack is not None:
            kw.update(image_tokens=vision[idx], max_image_tokens_per_pack=c.max_image_tokens_per_pack)
        try:
            bins = plan_packs(lengths[idx], L, algorithm=c.algorithm, **kw)
        except OverlongError as exc:  # a bug upstream: every kept length was checked above
            raise RuntimeError(f"pack: {exc}") from exc
        ffd_packs = None
        if c.algorithm == "plan" and idx.size:
            ffd_packs = int(first_fit_decreasing(lengths[idx], L, **kw).max()) + 1

        pack_id = np.full(n, -1, dtype=np.int64)
        position = np.full(n, -1, dtype=np.int64)
        pack_id[idx] = bins
        if idx.size:
            # position inside a pack: by _ordinal (rows are already in _ordinal order)
            o = np.lexsort((idx, bins))
            sorted_bins = bins[o]
            starts = np.r_[0, np.flatnonzero(np.diff(sorted_bins)) + 1]
            run_start = np.repeat(starts, np.diff(np.r_[starts, sorted_bins.size]))
            pos = np.empty(idx.size, dtype=np.int64)
            pos[o] = np.arange(idx.size) - run_start
            position[idx] = pos

        stats = pack_stats(lengths[idx], bins, L)
        report = {"items": stats.items, "packs": stats.packs, "tokens": stats.tokens, "ffd_packs": ffd_packs,
                  "truncated": int((truncated_from >= 0).sum()),
                  "truncated_tokens": int((num[truncated_from >= 0] - L).sum()),
                  "rejected": {r: reasons.count(r) for r in sorted({r for r in reasons if r})}}
        pack_id = np.where(pack_id >= 0, pack_id + (int(part) << 32), pack_id)
        kept = pa.array(keep)
        return pa.table({
            R.ORDINAL: t.column(R.ORDINAL),
            R.STATUS: pc.if_else(kept, pa.scalar(R.KEPT), pa.scalar(R.REJECTED)),
            R.REASON: pa.array(reasons, type=pa.string()),
            R.DETAIL: pa.array(details, type=pa.string()),
            "num_tokens": pa.array(np.where(num < 0, 0, lengths), type=pa.int64()),
            "pack_id": pa.array(np.where(keep, pack_id, None).tolist(), type=pa.int64()),
            "pack_position": pa.array(np.where(keep, position, None).tolist(), type=pa.int32()),
            "truncated_from": pa.array(np.where(truncated_from >= 0, truncated_from, None).tolist(), type=pa.int64()),
        }), report


PART = "_pack_part"


def combine_reports(reports: list[dict[str, Any]], config: Any, partitions: int) -> dict[str, Any]:
    """The stage's packing report from its partitions' numbers (sums; fill from the totals)."""
    L = config.context_length
    total = {k: sum(r[k] for r in reports) for k in ("items", "packs", "tokens", "truncated", "truncated_tokens")}
    rejected: dict[str, int] = {}
    for r in reports:
        for reason, n in r["rejected"].items():
            rejected[reason] = rejected.get(reason, 0) + n
    stats = PackStats(total["items"], total["packs"], L, total["tokens"], -(-total["tokens"] // L) if total["tokens"] else 0)
    ffd = [r["ffd_packs"] for r in reports]
    return {**stats.as_dict(), "algorithm": config.algorithm, "partitions": partitions,
            "ffd_packs": sum(ffd) if ffd and all(f is not None for f in ffd) else None,
            "fill_efficiency": round(stats.fill, 6), "truncated": total["truncated"],
            "truncated_tokens": total["truncated_tokens"], "rejected": dict(sorted(rejected.items())),
            "max_images_per_pack": config.max_images_per_pack,
            "max_image_tokens_per_pack": config.max_image_tokens_per_pack}


def _list_count_sum(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    n = table.num_rows
    if name not in table.column_names:
        return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    col = table.column(name).combine_chunks()
    offsets, flat = _list_parts(col)
    counts = np.diff(offsets)
    if len(flat) == 0:
        return counts, np.zeros(n, dtype=np.int64)
    values = np.asarray(pc.fill_null(flat, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    sums = np.add.reduceat(np.r_[values, 0], offsets[:-1]) * (counts > 0)
    return counts, sums.astype(np.int64)
