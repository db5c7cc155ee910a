"""The `pack` stage: every kept sample gets a pack and a position in it (the packing plan).

A global step: it sees `num_tokens` and `image_tokens` of every kept sample, handles samples longer
than the context (reject, or truncate their text), and assigns each sample a pack and a position.
The input is split by a seeded hash of the key into partitions of `partition_rows` samples, each
packed on its own worker (bench: fill within 0.01 pp of one global plan at a million per partition).
The plan is deterministic and independent of input row order (samples ordered by `_ordinal`,
lengths tie-broken by it).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import records as R
from curate.base import Resources, Stage, register
from curate.base.global_data import StepResult, stable_hash64
from pack.packing import OverlongError, first_fit_decreasing, pack_stats, plan_packs
from pack.packing import chunks as S
from pack.packing.split import ChunkCounter
from pack.packing.stats import PackStats
from pack.profile import run_profile
from pack import tokens as T
from pack.tokens.stage import list_parts

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
        **S.CHUNK_COLUMNS,
    }
    resources = Resources(cpus=1)
    global_columns = ("category", "num_tokens", "text_tokens", "image_tokens", "video_tokens")

    @dataclass
    class Config:
        context_length: int | None = field(default=None, metadata={
            "doc": "pack capacity in tokens; null: the recipe's model.context_length, the run's one declaration "
                   "(this setting is its older spelling: a recipe that sets both must set the same number)"})
        overlong: Literal["reject", "truncate", "split"] = field(default="reject", metadata={
            "doc": "samples longer than context_length: reject, or truncate their text (vision tokens are never cut; "
                   "a sample whose vision tokens alone do not fit is rejected as overlong_images), or split: an "
                   "interleaved document becomes chunks that each fit, cut between segments (pack.packing.split), "
                   "each chunk a sample with doc_key and chunk_index; other overlong samples are rejected"})
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
        if c.context_length is not None and (not isinstance(c.context_length, int) or c.context_length <= 0):
            raise ValueError(f"context_length: must be a positive integer, got {c.context_length!r}")
        declared = run_profile(self.context).context_length
        if c.context_length is None:   # resolved once, here: every later read of the capacity sees the number
            self.config = c = dataclasses.replace(c, context_length=declared)
        elif self.context.profile is not None and c.context_length != declared:
            raise ValueError(f"context_length: {c.context_length} differs from the model profile's context_length "
                             f"{declared}; the pack length is declared once (model.context_length)")
        if c.overlong == "split":   # the split counts chunks with count_tokens' tokenizer and template
            profile = run_profile(self.context)
            self.split_template = T.Template(**profile.template_fields())
            self.split_tokenizer = profile.tokenizer
            self.global_columns = (*type(self).global_columns, "text", "segments", "conversations")
        if not isinstance(c.keep_whole, (list, tuple)) or not all(isinstance(x, str) for x in c.keep_whole):
            raise ValueError(f"keep_whole: must be a list of category names, got {c.keep_whole!r}")
        for name in ("max_images_per_pack", "max_image_tokens_per_pack"):
            v = getattr(c, name)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise ValueError(f"{name}: must be a positive integer or null, got {v!r}")

    def global_step(self, data: Any) -> Any:
        """Pack each hash partition on its own worker; the report sums the partitions' numbers, which
        ride on each partition's first decision row (PARTITION_REPORT, JSON) and come back to the
        driver by an aggregate: one small row per partition, no side files."""
        parts = max(1, -(-data.count() // self.config.partition_rows))
        salt = self.context.seed

        def tag(batch: pa.Table) -> pa.Table:
            if parts == 1:   # up to partition_rows rows: one partition, no key to hash (a µs a row)
                return batch.append_column(PART, pa.array(np.zeros(batch.num_rows, dtype=np.int64)))
            part = (stable_hash64(batch.column("key"), salt) % np.uint64(parts)).astype(np.int64)
            return batch.append_column(PART, pa.array(part))

        decided = data.map_batches(tag).shuffle_reduce(PART, self.pack_partitions, partitions=parts).materialize()
        reports = decided.aggregate(_partition_reports, _loaded_reports)
        return StepResult(decided.map_batches(_without_partition_report),
                          {"packing": combine_reports(reports, self.config, parts)})

    def pack_partitions(self, group: pa.Table) -> pa.Table:
        """Decisions for every partition in `group` (rows sorted by partition, then _ordinal), each
        partition's report numbers (JSON) on its first row."""
        out = []
        col = group.column(PART).to_numpy()
        for part in np.unique(col).tolist():
            decisions, report = self.plan_partition(group.filter(pa.array(col == part)).drop_columns([PART]), part)
            notes = [json.dumps(report, sort_keys=True)] + [None] * (decisions.num_rows - 1)
            out.append(decisions.append_column(PARTITION_REPORT, pa.array(notes, type=pa.string())))
        return pa.concat_tables(out)

    def plan_partition(self, table: pa.Table, part: int = 0) -> tuple[pa.Table, dict[str, Any]]:
        """Pack one partition: decisions (pack ids offset by part << 32) and its report numbers."""
        c = self.config
        L = c.context_length
        order = np.argsort(np.asarray(table.column(R.ORDINAL).to_numpy(zero_copy_only=False)), kind="stable")
        t = table.take(pa.array(order))
        split = S.expand_documents(t, L, self._chunk_counter, c.keep_whole) if c.overlong == "split" else None
        if split is not None:
            t = split.table
        a = admit(t, c)
        emitted = S.settle_chunks(t, a.reasons, a.details, split.reasons) if split else [True] * t.num_rows
        keep = np.array([r is None for r in a.reasons], dtype=bool) & np.array(emitted, dtype=bool)
        idx = np.flatnonzero(keep)
        kw: dict[str, Any] = {}
        if c.max_images_per_pack is not None:
            kw.update(num_images=a.images[idx], max_images_per_pack=c.max_images_per_pack)
        if c.max_image_tokens_per_pack is not None:
            kw.update(image_tokens=a.vision[idx], max_image_tokens_per_pack=c.max_image_tokens_per_pack)
        try:
            bins = plan_packs(a.lengths[idx], L, algorithm=c.algorithm, **kw)
        except OverlongError as exc:  # a bug upstream: every kept length was checked above
            raise RuntimeError(f"pack: {exc}") from exc
        ffd_packs = int(first_fit_decreasing(a.lengths[idx], L, **kw).max()) + 1 \
            if c.algorithm == "plan" and idx.size else None
        pack_id = np.full(t.num_rows, -1, dtype=np.int64)
        position = np.full(t.num_rows, -1, dtype=np.int64)
        pack_id[idx] = bins + (int(part) << 32)
        position[idx] = positions_in_packs(idx, bins)
        stats = pack_stats(a.lengths[idx], bins, L)
        truncated = a.truncated_from >= 0
        report = {"items": stats.items, "packs": stats.packs, "tokens": stats.tokens, "ffd_packs": ffd_packs,
                  "truncated": int(truncated.sum()), "truncated_tokens": int((a.num[truncated] - L).sum()),
                  "rejected": {r: a.reasons.count(r) for r in sorted({r for r in a.reasons if r})},
                  "split_documents": split.documents if split else 0, "chunks": split.chunks if split else 0}
        kept = pa.array(keep)
        decisions = pa.table({
            R.ORDINAL: t.column(R.ORDINAL),
            R.STATUS: pc.if_else(kept, pa.scalar(R.KEPT), pa.scalar(R.REJECTED)),
            R.REASON: pa.array(a.reasons, type=pa.string()),
            R.DETAIL: pa.array(a.details, type=pa.string()),
            "num_tokens": pa.array(np.where(a.num < 0, 0, a.lengths), type=pa.int64()),
            "pack_id": pa.array(np.where(keep, pack_id, None).tolist(), type=pa.int64()),
            "pack_position": pa.array(np.where(keep, position, None).tolist(), type=pa.int32()),
            "truncated_from": pa.array(np.where(truncated, a.truncated_from, None).tolist(), type=pa.int64()),
        })
        return S.with_chunk_columns(decisions, t, emitted), report

    def _chunk_counter(self) -> ChunkCounter:
        if getattr(self, "_counter", None) is None:
            self._counter = ChunkCounter(T.load_tokenizer(self.split_tokenizer), self.split_template)
        return self._counter


@dataclass
class Admission:
    """Per sample (in _ordinal order): counted and packed lengths, vision totals, why it cannot be packed."""
    num: np.ndarray
    lengths: np.ndarray
    truncated_from: np.ndarray
    images: np.ndarray
    vision: np.ndarray
    reasons: list[str | None]
    details: list[str | None]


def admit(t: pa.Table, c: Any) -> Admission:
    """Which samples can be packed: overlong ones are rejected or have their text truncated (vision
    tokens are never cut), and per-pack image limits reject samples that alone exceed them."""
    L, n = c.context_length, t.num_rows
    num = np.asarray(pc.fill_null(t.column("num_tokens"), -1).to_numpy(zero_copy_only=False), dtype=np.int64)
    img_n, img_sum = _list_count_sum(t, "image_tokens")
    vid_n, vid_sum = _list_count_sum(t, "video_tokens")
    vision = img_sum + vid_sum
    # vision pads plus <|vision_start|>/<|vision_end|> per image or video: what truncation cannot cut
    vision_block = vision + 2 * (img_n + vid_n)
    a = Admission(num, num.copy(), np.full(n, -1, dtype=np.int64), img_n, vision, [None] * n, [None] * n)
    for i in np.flatnonzero(num < 0).tolist():
        a.reasons[i], a.details[i] = "missing_num_tokens", "count_tokens did not run on this sample"
    whole = set(c.keep_whole)
    categories = t.column("category").to_pylist() if ("category" in t.column_names and whole) else [None] * n
    for i in np.flatnonzero(num > L).tolist():
        if c.overlong in ("reject", "split") or categories[i] in whole:
            why = " (category must stay whole)" if c.overlong == "truncate" else ""
            a.reasons[i], a.details[i] = "overlong", f"{num[i]} tokens > context_length {L}{why}"
        elif vision_block[i] >= L:
            a.reasons[i], a.details[i] = "overlong_images", f"vision tokens {vision_block[i]} >= context_length {L}"
        else:
            a.truncated_from[i], a.lengths[i] = num[i], L
    limits = ((c.max_images_per_pack, img_n, "too_many_images", "images > max_images_per_pack"),
              (c.max_image_tokens_per_pack, vision, "too_many_image_tokens", "vision tokens > max_image_tokens_per_pack"))
    for limit, values, reason, what in limits:
        if limit is not None:
            for i in np.flatnonzero(values > limit).tolist():
                if a.reasons[i] is None:
                    a.reasons[i], a.details[i] = reason, f"{values[i]} {what}"
    return a


def positions_in_packs(idx: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Position of each packed sample inside its pack, by _ordinal (idx is in _ordinal order)."""
    if not idx.size:
        return np.zeros(0, dtype=np.int64)
    o = np.lexsort((idx, bins))
    sorted_bins = bins[o]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_bins)) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, sorted_bins.size]))
    pos = np.empty(idx.size, dtype=np.int64)
    pos[o] = np.arange(idx.size) - run_start
    return pos

PART = "_pack_part"
PARTITION_REPORT = "_pack_partition_report"   # a partition's report numbers (JSON), on its first decision row


def _partition_reports(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_valid(batch.column(PARTITION_REPORT))).select([PARTITION_REPORT])


def _loaded_reports(notes: pa.Table) -> list[dict[str, Any]]:
    return [json.loads(n) for n in notes.column(PARTITION_REPORT).to_pylist()] if notes.num_rows else []


def _without_partition_report(batch: pa.Table) -> pa.Table:
    return batch.drop_columns([PARTITION_REPORT])


def combine_reports(reports: list[dict[str, Any]], config: Any, partitions: int) -> dict[str, Any]:
    """The stage's packing report from its partitions' numbers (sums; fill from the totals)."""
    L = config.context_length
    total = {k: sum(r.get(k, 0) for r in reports)
             for k in ("items", "packs", "tokens", "truncated", "truncated_tokens", "split_documents", "chunks")}
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
            **({"split": {"documents": total["split_documents"], "chunks": total["chunks"]}}
               if config.overlong == "split" else {}),
            "max_images_per_pack": config.max_images_per_pack,
            "max_image_tokens_per_pack": config.max_image_tokens_per_pack}


def _list_count_sum(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    n = table.num_rows
    if name not in table.column_names:
        return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    col = table.column(name).combine_chunks()
    offsets, flat = list_parts(col)
    counts = np.diff(offsets)
    if len(flat) == 0:
        return counts, np.zeros(n, dtype=np.int64)
    values = np.asarray(pc.fill_null(flat, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    sums = np.add.reduceat(np.r_[values, 0], offsets[:-1]) * (counts > 0)
    return counts, sums.astype(np.int64)
