"""Per-token model inputs derived from a pack: modality ids, segment ids and position ids.

Why here and not in the trainer: in a pack, positions restart at every sample (``cu_seqlens``), and
Qwen2-VL-family models use 3-D rotary positions (M-RoPE: temporal, height, width) for vision tokens.
HF Qwen2-VL silently accepts 1-D ``position_ids`` — wrong for M-RoPE — and its own
``get_rope_index`` treats a pack as one sequence. ``mrope_position_ids`` applies the same rule as
transformers' ``Qwen2VLModel.get_rope_index`` to every segment separately (tests check it against
that function on every segment of real packs):

* text tokens: one position per token, equal in all three rows, continuing from the last position;
* a vision block of grid (t, h, w) patches (``h/merge x w/merge`` tokens per frame): row 0 is
  ``start + frame_index * time_interval``, rows 1 and 2 are ``start + row`` and ``start + column``;
  text after it continues at ``start + max(h, w) / merge``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pack.packformat import position_ids as position_ids_1d
from pack.profile import ModelProfile

TEXT, IMAGE, VIDEO = 0, 1, 2      # mm_token_type_ids values, as transformers' processors emit them


def mm_token_type_ids(input_ids: np.ndarray, image_token_id: int, video_token_id: int) -> np.ndarray:
    """0 for text (and vision start/end markers), 1 for image pads, 2 for video pads (int64)."""
    out = np.zeros(np.shape(input_ids), dtype=np.int64)
    out[input_ids == image_token_id] = IMAGE
    out[input_ids == video_token_id] = VIDEO
    return out


def segment_ids(cu_seqlens: Sequence[int], num_segments: int) -> np.ndarray:
    """Per token, the index of its sample in the pack (0..num_segments-1), -1 on padding."""
    cu = np.asarray(cu_seqlens, dtype=np.int64)
    out = np.full(int(cu[-1]), -1, dtype=np.int64)
    for j in range(num_segments):
        out[cu[j]:cu[j + 1]] = j
    return out


def _runs(types: np.ndarray) -> list[tuple[int, int, int]]:
    """(type, start, end) of maximal runs of equal values."""
    if types.size == 0:
        return []
    change = np.flatnonzero(np.diff(types)) + 1
    starts = np.r_[0, change]
    ends = np.r_[change, types.size]
    return [(int(types[s]), int(s), int(e)) for s, e in zip(starts, ends)]


def _vision_positions(start: int, grid: Sequence[int], merge_size: int, time_interval: float) -> np.ndarray:
    t, h, w = int(grid[0]), int(grid[1]) // merge_size, int(grid[2]) // merge_size
    tt, hh, ww = np.meshgrid((np.arange(t) * time_interval).astype(np.int64), np.arange(h), np.arange(w),
                             indexing="ij")
    return np.stack([tt.ravel() + start, hh.ravel() + start, ww.ravel() + start])


def segment_mrope(types: np.ndarray, image_grids: Sequence[Sequence[int]], video_grids: Sequence[Sequence[int]],
                  merge_size: int, video_time_intervals: Sequence[float] = ()) -> np.ndarray:
    """(3, n) M-RoPE positions of one sample starting at 0; `types` are its mm_token_type_ids and the
    grids its images'/videos' ``grid_thw`` in order (``video_time_intervals``: per video, 1.0 for
    Qwen2-VL; Qwen2.5-VL uses tokens_per_second * temporal_patch / fps)."""
    grids = {IMAGE: iter(image_grids), VIDEO: iter(video_grids)}
    intervals = iter(video_time_intervals)
    parts: list[np.ndarray] = []
    pos = 0
    for kind, a, b in _runs(np.asarray(types)):
        if kind == TEXT:
            parts.append(np.broadcast_to(np.arange(pos, pos + b - a, dtype=np.int64), (3, b - a)))
            pos += b - a
            continue
        grid = next(grids[kind], None)
        if grid is None:
            raise ValueError(f"more {'image' if kind == IMAGE else 'video'} blocks than grids")
        interval = next(intervals, 1.0) if kind == VIDEO else 1.0
        block = _vision_positions(pos, grid, merge_size, interval)
        if block.shape[1] != b - a:
            raise ValueError(f"grid {list(grid)} gives {block.shape[1]} tokens, the ids have {b - a}")
        parts.append(block)
        pos += max(int(grid[1]), int(grid[2])) // merge_size
    if any(next(g, None) is not None for g in grids.values()):
        raise ValueError("more grids than vision blocks")
    return np.concatenate(parts, axis=1) if parts else np.zeros((3, 0), dtype=np.int64)


def mrope_position_ids(types: np.ndarray, cu_seqlens: Sequence[int], segment_grids: Sequence[tuple[list, list]],
                       merge_size: int, segment_intervals: Sequence[Sequence[float]] | None = None) -> np.ndarray:
    """(3, L) positions of a pack: ``segment_mrope`` per sample, restarting at 0 at every cu_seqlens
    boundary; the padding segment counts 0, 1, 2, ... in all three rows."""
    cu = np.asarray(cu_seqlens, dtype=np.int64)
    out = np.zeros((3, int(cu[-1])), dtype=np.int64)
    for j in range(cu.size - 1):
        a, b = int(cu[j]), int(cu[j + 1])
        if j < len(segment_grids):
            images, videos = segment_grids[j]
            intervals = segment_intervals[j] if segment_intervals else ()
            out[:, a:b] = segment_mrope(types[a:b], images, videos, merge_size, intervals)
        else:
            out[:, a:b] = np.arange(b - a)
    return out


def pack_model_inputs(doc: Mapping[str, Any], input_ids: np.ndarray | None, profile: ModelProfile) -> dict[str, Any]:
    """``segment_ids``, and with input_ids ``mm_token_type_ids`` and ``position_ids`` — (3, L) for an
    M-RoPE profile (from the grids the shards stage recorded), else (L,) restarting per segment."""
    cu = doc["cu_seqlens"]
    segs = doc["segments"]
    out: dict[str, Any] = {"segment_ids": segment_ids(cu, len(segs)), "mm_token_type_ids": None,
                           "position_ids": position_ids_1d(cu)}
    if input_ids is None:
        return out
    meta = doc["input_ids"]
    image_id, video_id = meta.get("image_token_id"), meta.get("video_token_id")
    types = mm_token_type_ids(input_ids, -1 if image_id is None else image_id, -1 if video_id is None else video_id)
    out["mm_token_type_ids"] = types
    if profile.rope == "mrope":
        grids = [([im["grid_thw"] for im in s["images"]], [v["grid_thw"] for v in s["videos"]]) for s in segs]
        if any(g is None for imgs, vids in grids for g in imgs + vids):
            raise ValueError("M-RoPE positions need grid_thw for every image and video (tokenized shards)")
        interval = (profile.tokens_per_second * profile.temporal_patch_size / profile.video_sample_fps
                    if profile.tokens_per_second else 1.0)
        intervals = [[interval] * len(s["videos"]) for s in segs]
        out["position_ids"] = mrope_position_ids(types, cu, grids, profile.merge_size, intervals)
    return out
