"""``pixel_values_videos`` / ``video_grid_thw`` of a pack's videos, so a trainer needs nothing but the loader.

Why not transformers' ``Qwen2VLVideoProcessor``: it needs torchvision, which mmcurate does not require.
This module follows the same steps with PyAV and PIL, configured from ``manifest.json``'s model profile:

1. frame indices as ``Qwen2VLVideoProcessor.sample_frames`` picks them for ``fps`` sampling:
   ``torch.arange(0, total, total / n).int()`` with ``n`` = the frames the ``count_tokens`` stage
   counted (``grid_t * temporal_patch_size``) and ``total`` the stream's frame count (the header's,
   as counted);
2. every sampled frame resized to the recorded grid (``grid_h * patch`` x ``grid_w * patch``, the
   processor's ``smart_resize`` under the profile's frame budget; recomputed here and checked against
   the grid the shards stage recorded) with bicubic resampling (PIL; the processor resizes tensors
   with torchvision's bicubic, so pixel values differ slightly, the shapes and grids do not);
3. rescaled by 1/255, normalized with the profile's mean and std, and cut into patches in the layout
   of the processor's ``patchify``: rows ``(t, h/merge, w/merge, merge, merge)``, each row
   ``channel x temporal_patch x patch x patch``.

The rows of all videos of a pack are concatenated in segment order, as the model's ``video_grid_thw``
expects; every grid's rows match the ``<|video_pad|>`` run of its video (``t*h*w / merge**2`` tokens).
"""
from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import numpy as np

from pack import packformat as F
from pack import tokens as T
from pack.profile import ModelProfile


def sample_indices(total_frames: int, num_frames: int) -> list[int]:
    """Frame indices the video processor samples (its ``torch.arange(0, total, total / n).int()``)."""
    import torch
    if not 0 < num_frames <= total_frames:
        raise ValueError(f"cannot sample {num_frames} of {total_frames} frames")
    return torch.arange(0, total_frames, total_frames / num_frames).int().tolist()


def decode_frames(data: bytes, indices: Sequence[int]) -> list[Any]:
    """The RGB PIL frames at `indices` (sorted) of the first video stream, decoding only up to the last."""
    from curate.media.video import _av
    av = _av()
    wanted = set(int(i) for i in indices)
    last = max(wanted)
    frames: dict[int, Any] = {}
    with av.open(io.BytesIO(data), mode="r") as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                frames[i] = frame.to_image().convert("RGB")
            if i >= last:
                break
    missing = sorted(wanted - frames.keys())
    if missing:
        raise ValueError(f"the stream decodes to fewer frames than the header says (no frame {missing[0]})")
    return [frames[int(i)] for i in indices]


class VideoInputs:
    """Callable: a pack's video entries (``bytes``, ``grid_thw``, header fields) -> (pixel_values_videos,
    video_grid_thw)."""

    def __init__(self, profile: ModelProfile):
        self.profile = profile
        if self.profile.image_mode != "qwen2_vl":
            raise ValueError(f"pixel_values: the shards' model profile {self.profile.preset!r} has no "
                             "dynamic-resolution video processor; decode the video bytes with your processor")
        cfg = self.profile.image_processor_config()
        self.patch, self.merge, self.tp = cfg["patch_size"], cfg["merge_size"], cfg["temporal_patch_size"]
        self.mean = np.asarray(cfg["image_mean"], dtype=np.float32)[:, None, None]
        self.std = np.asarray(cfg["image_std"], dtype=np.float32)[:, None, None]
        self.settings = self.profile.video_settings()
        self.row_width = 3 * self.tp * self.patch ** 2

    def grid(self, video: Mapping[str, Any]) -> tuple[int, int, int]:
        """The grid the counting rule gives this video's header (what count_tokens recorded)."""
        return T.video_grid(float(video["duration_s"]), float(video["fps"]), int(video["width"]),
                            int(video["height"]), self.settings, int(video["frames"]))

    def patches(self, video: Mapping[str, Any], where: str) -> tuple[np.ndarray, list[int]]:
        grid = list(self.grid(video))
        if video.get("grid_thw") is not None and list(video["grid_thw"]) != grid:
            raise F.PackFormatError(f"{where}: video {video['member']} gives grid {grid} under the profile, "
                                    f"the shards recorded {video['grid_thw']}")
        t, gh, gw = grid
        try:
            frames = decode_frames(video["bytes"], sample_indices(int(video["frames"]), t * self.tp))
        except ValueError as exc:
            raise F.PackFormatError(f"{where}: video {video['member']}: {exc}") from None
        from PIL import Image
        size = (gw * self.patch, gh * self.patch)
        stack = np.stack([np.asarray(f.resize(size, Image.BICUBIC), dtype=np.float32).transpose(2, 0, 1)
                          for f in frames])                                        # (T, C, H, W)
        return self.patchify((stack / 255.0 - self.mean) / self.std), grid

    def patchify(self, frames: np.ndarray) -> np.ndarray:
        """(T, C, H, W) normalized frames -> (T/tp * H/p * W/p, C*tp*p*p) rows in the processor's order:
        rows (t, h/merge, w/merge, merge, merge), each row (C, tp, p, p)."""
        T_, C, H, W = frames.shape
        m, p, tp = self.merge, self.patch, self.tp
        if T_ % tp or H % (p * m) or W % (p * m):
            raise ValueError(f"frames of shape {frames.shape} do not tile into {tp} x {p * m} x {p * m} patches")
        x = frames.reshape(T_ // tp, tp, C, H // p // m, m, p, W // p // m, m, p)
        x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)       # t, h/m, w/m, m, m, C, tp, p, p
        return np.ascontiguousarray(x.reshape(-1, C * tp * p * p), dtype=np.float32)

    def __call__(self, videos: Sequence[Mapping[str, Any]], where: str) -> tuple[np.ndarray, np.ndarray]:
        if not videos:
            return np.zeros((0, self.row_width), dtype=np.float32), np.zeros((0, 3), dtype=np.int64)
        rows, grids = zip(*(self.patches(v, where) for v in videos))
        return np.concatenate(rows), np.asarray(grids, dtype=np.int64).reshape(-1, 3)
