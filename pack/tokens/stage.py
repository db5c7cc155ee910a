"""The `count_tokens` stage: the sequence length of every sample, from metadata.

Per batch: image tokens from the width/height stored at ingest (no decode), video tokens from
duration/fps/size, text tokens with the model profile's tokenizer laid out by the trainer's
template. The `pack` stage that reads these lengths is in pack.packing.stage.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import records as R
from curate.base import BatchResult, Drop, Resources, Stage, register, split_drops
from pack import tokens as T
from pack.profile import ModelProfile, run_profile


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

    # No settings: the model profile (tokenizer, template, patching) is the run's, the recipe's `model:`.
    def validate_config(self) -> None:
        self.profile = run_profile(self.context)
        p = self.profile
        if p.tokenizer is not None and not Path(p.tokenizer).is_dir():
            raise ValueError(f"tokenizer: directory {p.tokenizer!r} does not exist")
        self.template = T.Template(**p.template_fields())
        self.video = p.video_settings()

    def input_identity(self) -> ModelProfile:
        """The run's model profile is this stage's input beside its rows (no setting of its own): a
        changed `model:` re-runs the counts, and everything after them, on resume."""
        return self.profile

    def setup(self) -> None:
        self.tokenizer = T.load_tokenizer(self.profile.tokenizer)

    # --- per-batch ------------------------------------------------------------------------------
    def _image_counts(self, images: pa.ListArray, reasons: list[str | None], details: list[str | None]) -> pa.ListArray:
        c = self.profile
        n = len(images)
        offsets, flat = list_parts(images)
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
        offsets, flat = list_parts(videos)
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
            # the header's frame count when the reader recorded one (0: round(duration * fps))
            frames = np.zeros(len(flat), dtype=np.int64)
            if flat.type.get_field_index("frames") >= 0:
                frames[:] = pc.fill_null(pc.struct_field(flat, "frames"), 0).to_numpy(zero_copy_only=False)
            for j in np.flatnonzero(ok).tolist():
                try:
                    values[j] = T.video_tokens(cols["duration_s"][j], cols["fps"][j], int(cols["width"][j]),
                                               int(cols["height"][j]), self.video, int(frames[j]) or None)
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
        for i in _rows_with_control_tokens(batch).tolist():
            _reject(reasons, details, i, T.SpecialTokenInText.reason,
                    "text contains a control token of the chat template (turn marker, end-of-text, vision marker "
                    "or pad); it would inject turns or image pads")
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
        return split_drops(out, [None if r is None else Drop(r, d) for r, d in zip(reasons, details)])

    def summary_partial(self, kept: pa.Table) -> pa.Table:
        """Per batch, a histogram: (num_tokens, rows with that length, their text tokens). Lengths take
        at most a few thousand values, so the driver's summary input stays small at any row count."""
        return kept.select(["num_tokens", "text_tokens"]).group_by("num_tokens", use_threads=False).aggregate(
            [([], "count_all"), ("text_tokens", "sum")])

    def summary_merge(self, parts: pa.Table) -> pa.Table:
        """Partials of the histogram above as one (counts and text tokens summed per length)."""
        merged = parts.group_by("num_tokens", use_threads=False).aggregate([("count_all", "sum"),
                                                                           ("text_tokens_sum", "sum")])
        return merged.rename_columns({"count_all_sum": "count_all", "text_tokens_sum_sum": "text_tokens_sum"}) \
            .select(["num_tokens", "count_all", "text_tokens_sum"]).sort_by("num_tokens")

    def summarize(self, kept: pa.Table) -> dict:
        hist = kept.group_by("num_tokens", use_threads=False).aggregate([("count_all", "sum"),
                                                                         ("text_tokens_sum", "sum")])
        if hist.num_rows == 0:
            return {"tokens": {"samples": 0}}
        hist = hist.sort_by("num_tokens")
        values = np.asarray(hist.column("num_tokens").to_numpy(zero_copy_only=False), dtype=np.int64)
        counts = np.asarray(hist.column("count_all_sum").to_numpy(zero_copy_only=False), dtype=np.int64)
        total = int((values * counts).sum())
        text = int(pc.sum(hist.column("text_tokens_sum_sum")).as_py() or 0)
        pct = [round(histogram_percentile(values, counts, q)) for q in (50, 90, 99)]
        return {"tokens": {"samples": int(counts.sum()), "total": total, "text": text, "vision": total - text,
                           "p50": pct[0], "p90": pct[1], "p99": pct[2], "max": int(values[-1])}}


def histogram_percentile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """numpy.percentile(q, linear interpolation) of the multiset {values[i] x counts[i]} (values
    sorted ascending), without expanding it."""
    n = int(counts.sum())
    rank = q / 100.0 * (n - 1)
    lo, hi = int(np.floor(rank)), int(np.ceil(rank))
    ends = np.cumsum(counts)
    at_lo = values[np.searchsorted(ends, lo, side="right")]
    at_hi = values[np.searchsorted(ends, hi, side="right")]
    return float(at_lo + (at_hi - at_lo) * (rank - lo))


def _reject(reasons: list[str | None], details: list[str | None], i: int, reason: str, detail: str | None) -> None:
    if reasons[i] is None:
        reasons[i], details[i] = reason, detail


def _rows_with_control_tokens(batch: pa.Table) -> np.ndarray:
    """Indices of rows whose text or any turn's content contains a control-token string (one regex
    scan per column, no Python per row)."""
    n = batch.num_rows
    bad = np.zeros(n, dtype=bool)
    if "text" in batch.column_names:
        hit = pc.match_substring_regex(batch.column("text"), T.CONTROL_TOKEN_PATTERN)
        bad |= np.asarray(pc.fill_null(hit, False).to_numpy(zero_copy_only=False), dtype=bool)
    if "conversations" in batch.column_names:
        conv = batch.column("conversations").combine_chunks()
        contents = pc.struct_field(pc.list_flatten(conv), "content")
        if len(contents):
            hit = np.asarray(pc.fill_null(pc.match_substring_regex(contents, T.CONTROL_TOKEN_PATTERN), False)
                             .to_numpy(zero_copy_only=False), dtype=bool)
            parents = pc.list_parent_indices(conv).to_numpy()
            bad[np.unique(parents[hit])] = True
    return np.flatnonzero(bad)


def list_parts(lists: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Offsets (rows with null lists count as empty) and the flattened values of a list array."""
    n = len(lists)
    lengths = np.asarray(pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, pc.list_flatten(lists)
