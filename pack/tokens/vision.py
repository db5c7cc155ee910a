"""Vision tokens from metadata: Qwen2-VL / Qwen2.5-VL image and video token counts from sizes alone.

``smart_resize`` / ``image_tokens`` reproduce Qwen2-VL's image processor from width and height
(vectorised over numpy arrays). Videos (``video_frames``, ``video_tokens``, ``video_grid``) follow
Qwen2-VL's temporal patching as transformers' ``Qwen2VLVideoProcessor`` does it with
``do_sample_frames=True``: frames sampled at ``sample_fps`` between ``min_frames`` and ``max_frames``
(rounded down to the temporal patch 2), each frame ``smart_resize``-d, 2 frames x 14 x 14 pixels per
patch, 2x2 patches merged per LLM token. The per-frame pixel cap is one of two rules
(``VideoSettings.pixel_budget``):

* ``"total"`` — openPangu-VL's frame-budget rule (openPangu-VL-7B report, section 2.4 "Visual
  Preprocessing": "the spatial resolution of each frame is inversely proportional to the total number
  of frames sampled"): frames share one pixel budget, ``max(min(max_pixels, total_pixels * 2 //
  nframes), int(1.05 * min_pixels))``. The report states the rule, not its constants; this is the
  form qwen-vl-utils' ``fetch_video`` and transformers' ``cap_pixels_per_frame=True`` compute, with
  ``total_pixels`` their 90 % of a context's worth of tokens.
* ``"per_frame"`` — Qwen2-VL's processor without a total bound (``cap_pixels_per_frame=False``, the
  transformers 5.x default): every frame within ``[min_pixels, max_pixels]`` whatever their number.

Tests hold these counts against grids that transformers' own ``Qwen2VLVideoProcessor`` reported.
Why: packing needs every sample's length without decoding a single frame (openPangu-VL section 6.1
reports ~4x faster offline packing from metadata alone).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# --- Qwen2-VL image processor defaults (transformers Qwen2VLImageProcessor) --------------------------
PATCH_SIZE = 14
MERGE_SIZE = 2
IMAGE_FACTOR = PATCH_SIZE * MERGE_SIZE          # 28
MIN_PIXELS = 56 * 56                            # size["shortest_edge"]
MAX_PIXELS = 28 * 28 * 1280                     # size["longest_edge"]
MAX_ASPECT_RATIO = 200

# --- qwen-vl-utils video defaults ---------------------------------------------------------------
VIDEO_SAMPLE_FPS = 2.0
VIDEO_MIN_FRAMES = 4
VIDEO_MAX_FRAMES = 768
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)
TEMPORAL_PATCH_SIZE = 2


def _as_int_array(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.floor(arr)):
            raise ValueError(f"{name} must be whole numbers")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() <= 0:
        raise ValueError(f"{name} must be positive; got {int(arr.min())}")
    return arr


def smart_resize(height: Any, width: Any, factor: int = IMAGE_FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[Any, Any]:
    """Qwen2-VL's resize rule: both sides multiples of `factor`, pixels within [min, max], aspect kept.

    Same arithmetic, in the same float64 order, as ``transformers...qwen2_vl.smart_resize`` (Python's
    ``round`` and numpy's are both round-half-even), so results agree bit for bit. Takes ints (returns
    ints) or arrays (returns int64 arrays). Raises ValueError for an aspect ratio above 200, like the
    processor does.
    """
    scalar = np.ndim(height) == 0 and np.ndim(width) == 0
    h = _as_int_array(height, "height")
    w = _as_int_array(width, "width")
    shape = np.broadcast_shapes(h.shape, w.shape)
    h = np.broadcast_to(h, shape).ravel()
    w = np.broadcast_to(w, shape).ravel()
    ratio = np.maximum(h, w) / np.minimum(h, w)
    if ratio.size and ratio.max() > MAX_ASPECT_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got {ratio.max()}")
    hf, wf = h.astype(np.float64), w.astype(np.float64)
    h_bar = np.round(hf / factor) * factor
    w_bar = np.round(wf / factor) * factor
    area = (h * w).astype(np.float64)
    big = h_bar * w_bar > max_pixels
    small = ~big & (h_bar * w_bar < min_pixels)
    if big.any():
        beta = np.sqrt(area[big] / max_pixels)
        h_bar[big] = np.maximum(factor, np.floor(hf[big] / beta / factor) * factor)
        w_bar[big] = np.maximum(factor, np.floor(wf[big] / beta / factor) * factor)
    if small.any():
        beta = np.sqrt(min_pixels / area[small])
        h_bar[small] = np.ceil(hf[small] * beta / factor) * factor
        w_bar[small] = np.ceil(wf[small] * beta / factor) * factor
    rh, rw = h_bar.astype(np.int64).reshape(shape), w_bar.astype(np.int64).reshape(shape)
    if scalar:
        return int(rh), int(rw)
    return rh, rw


def image_grid(width: Any, height: Any, *, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
               patch_size: int = PATCH_SIZE, merge_size: int = MERGE_SIZE) -> tuple[Any, Any]:
    """(grid_h, grid_w) in patches, as the processor's ``image_grid_thw`` reports them (t = 1)."""
    rh, rw = smart_resize(height, width, factor=patch_size * merge_size, min_pixels=min_pixels,
                          max_pixels=max_pixels)
    return rh // patch_size, rw // patch_size


def image_tokens(width: Any, height: Any, *, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
                 patch_size: int = PATCH_SIZE, merge_size: int = MERGE_SIZE) -> Any:
    """LLM tokens of one image (number of ``<|image_pad|>``): grid_h * grid_w / merge_size**2.

    Vectorised: ints give an int, arrays give an int64 array.
    """
    gh, gw = image_grid(width, height, min_pixels=min_pixels, max_pixels=max_pixels,
                        patch_size=patch_size, merge_size=merge_size)
    return gh * gw // (merge_size * merge_size)


def fixed_image_tokens(num_images: Any, tokens_per_image: int) -> Any:
    """Fixed-budget encoders (Open-Qwen2VL: 144 per image in pre-training, 729 in SFT)."""
    if tokens_per_image <= 0:
        raise ValueError(f"tokens_per_image must be positive, got {tokens_per_image}")
    return np.asarray(num_images, dtype=np.int64) * tokens_per_image if np.ndim(num_images) else \
        int(num_images) * tokens_per_image


@dataclass(frozen=True)
class VideoSettings:
    """qwen-vl-utils' video knobs (``fetch_video`` / ``smart_nframes``), same names and defaults."""
    sample_fps: float = VIDEO_SAMPLE_FPS
    min_frames: int = VIDEO_MIN_FRAMES
    max_frames: int = VIDEO_MAX_FRAMES
    min_pixels: int = VIDEO_MIN_PIXELS
    max_pixels: int = VIDEO_MAX_PIXELS
    total_pixels: int = VIDEO_TOTAL_PIXELS
    patch_size: int = PATCH_SIZE
    merge_size: int = MERGE_SIZE
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE
    pixel_budget: str = "total"       # "total": openPangu-VL frame budget; "per_frame": no total bound

    def __post_init__(self) -> None:
        if self.pixel_budget not in PIXEL_BUDGETS:
            raise ValueError(f"pixel_budget: must be one of {list(PIXEL_BUDGETS)}, got {self.pixel_budget!r}")


PIXEL_BUDGETS = ("total", "per_frame")


def frame_max_pixels(nframes: Any, settings: VideoSettings) -> Any:
    """The per-frame ``max_pixels`` given the number of sampled frames (see the module docstring):
    under ``"total"`` inversely proportional to ``nframes`` between ``int(1.05 * min_pixels)`` and
    ``max_pixels``; under ``"per_frame"`` always ``max_pixels``."""
    n = np.asarray(nframes, dtype=np.int64)
    if settings.pixel_budget == "per_frame":
        return np.full(n.shape, settings.max_pixels, dtype=np.int64)
    share = settings.total_pixels * settings.temporal_patch_size // np.maximum(n, 1)
    return np.maximum(np.minimum(settings.max_pixels, share), int(settings.min_pixels * 1.05)).astype(np.int64)


def video_frames(duration_s: Any, fps: Any, settings: VideoSettings = VideoSettings(),
                 total_frames: Any = None) -> np.ndarray:
    """Frames the trainer samples (``Qwen2VLVideoProcessor.sample_frames`` / ``smart_nframes``) from
    the stream's frame count `total_frames` (the container header's; where it is missing or 0,
    round(duration * fps)). Raises for videos under 2 frames."""
    dur = np.asarray(duration_s, dtype=np.float64)
    rate = np.asarray(fps, dtype=np.float64)
    if np.any(~np.isfinite(dur)) or np.any(dur <= 0) or np.any(~np.isfinite(rate)) or np.any(rate <= 0):
        raise ValueError("video duration and fps must be positive numbers")
    ff = settings.temporal_patch_size
    total = np.maximum(np.round(dur * rate), 1.0)
    if total_frames is not None:
        known = np.nan_to_num(np.asarray(total_frames, dtype=np.float64), nan=0.0)
        total = np.where(known > 0, known, total)
    min_frames = math.ceil(settings.min_frames / ff) * ff
    max_frames = np.floor(np.minimum(settings.max_frames, total) / ff) * ff
    n = total / rate * settings.sample_fps
    n = np.minimum(np.minimum(np.maximum(n, min_frames), max_frames), total)
    n = np.floor(n / ff) * ff
    if np.any(n < ff) or np.any(n > total):
        raise ValueError(f"video too short to sample: needs at least {ff} frames")
    return n.astype(np.int64)


def video_tokens(duration_s: Any, fps: Any, width: Any, height: Any,
                 settings: VideoSettings = VideoSettings(), total_frames: Any = None) -> Any:
    """LLM tokens of a video (number of ``<|video_pad|>``): (frames / 2) * grid_h * grid_w / 4, each
    frame ``smart_resize``-d within ``frame_max_pixels`` (the settings' pixel-budget rule).
    `total_frames`: the stream's frame count when the header has it (see ``video_frames``)."""
    scalar = all(np.ndim(x) == 0 for x in (duration_s, fps, width, height))
    n = video_frames(duration_s, fps, settings, total_frames)
    ff = settings.temporal_patch_size
    budget = frame_max_pixels(n, settings)
    h = np.broadcast_to(_as_int_array(height, "height"), n.shape)
    w = np.broadcast_to(_as_int_array(width, "width"), n.shape)
    budget = np.broadcast_to(budget, n.shape)
    # smart_resize takes one max_pixels; group by budget (few distinct frame counts per batch).
    tokens = np.zeros(n.shape, dtype=np.int64)
    factor = settings.patch_size * settings.merge_size
    flat_b, flat_h, flat_w, flat_n = budget.ravel(), h.ravel(), w.ravel(), n.ravel()
    out = tokens.ravel()
    for b in np.unique(flat_b):
        sel = flat_b == b
        rh, rw = smart_resize(flat_h[sel], flat_w[sel], factor=factor, min_pixels=settings.min_pixels,
                              max_pixels=int(b))
        out[sel] = (flat_n[sel] // ff) * (rh // factor) * (rw // factor)
    tokens = out.reshape(n.shape)
    return int(tokens) if scalar else tokens


def video_grid(duration_s: float, fps: float, width: int, height: int,
               settings: VideoSettings = VideoSettings(), total_frames: int | None = None) -> tuple[int, int, int]:
    """``video_grid_thw`` of one video as the processor reports it: (frames / temporal patch, grid_h,
    grid_w) in patches, with the per-frame budget of ``video_tokens`` (tokens = t * h * w / merge**2)."""
    n = int(video_frames(duration_s, fps, settings, total_frames))
    ff = settings.temporal_patch_size
    budget = int(frame_max_pixels(n, settings))
    rh, rw = smart_resize(int(height), int(width), factor=settings.patch_size * settings.merge_size,
                          min_pixels=settings.min_pixels, max_pixels=int(budget))
    return n // ff, rh // settings.patch_size, rw // settings.patch_size
