"""``pixel_values`` / ``image_grid_thw`` of a pack's images, so a trainer needs nothing but the loader.

Built from the shards alone: the image processor is transformers' Qwen2-VL image processor (the PIL
one: no torchvision) configured from ``manifest.json``'s model profile — pixel bounds, patch, merge
and temporal patch sizes, mean and std — with no hub access. Every grid is checked against the one
the shards stage recorded, so the image-pad runs in ``input_ids`` match the vision features.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pack import packformat as F
from pack.profile import ModelProfile


class ImageInputs:
    """Callable: a pack's image entries (with ``bytes`` and ``grid_thw``) -> (pixel_values, grids)."""

    def __init__(self, profile: ModelProfile):
        if profile.image_mode != "qwen2_vl":
            raise ValueError(f"pixel_values: the shards' model profile {profile.preset!r} has no dynamic-resolution "
                             "image processor (fixed tokens per image); decode image_bytes with your processor")
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        cfg = profile.image_processor_config()
        self.processor = Qwen2VLImageProcessorPil(
            min_pixels=cfg["min_pixels"], max_pixels=cfg["max_pixels"], patch_size=cfg["patch_size"],
            merge_size=cfg["merge_size"], temporal_patch_size=cfg["temporal_patch_size"],
            image_mean=cfg["image_mean"], image_std=cfg["image_std"])
        self.row_width = 3 * cfg["temporal_patch_size"] * cfg["patch_size"] ** 2

    def __call__(self, images: Sequence[Mapping[str, Any]], where: str) -> tuple[np.ndarray, np.ndarray]:
        if not images:
            return np.zeros((0, self.row_width), dtype=np.float32), np.zeros((0, 3), dtype=np.int64)
        from curate.media.images import decode
        decoded = [decode(im["bytes"]) for im in images]
        out = self.processor(images=decoded, return_tensors="np")
        grids = np.asarray(out["image_grid_thw"], dtype=np.int64).reshape(-1, 3)
        for im, grid in zip(images, grids.tolist()):
            if im.get("grid_thw") is not None and list(im["grid_thw"]) != grid:
                raise F.PackFormatError(f"{where}: image {im['member']} gives grid {grid} in the image processor, "
                                        f"the shards recorded {im['grid_thw']}")
        return np.asarray(out["pixel_values"], dtype=np.float32), grids
