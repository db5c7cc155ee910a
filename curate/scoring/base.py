"""What every image-text relevance scorer provides, and the image path they share.

A scorer maps images and texts into one embedding space; the score of a pair is the cosine of the
two unit vectors. The stage (``curate/scoring/stages.py``) owns batching, the thread pool that
decodes the next batch while the model runs, and the bookkeeping; a scorer only has to

* ``prepare_image(PIL image) -> np.ndarray`` — CPU work run in worker threads (resize, crop);
* ``encode_images(stacked arrays) -> EncodedImages`` — unit vectors, on the model's device;
* ``encode_texts(list[str]) -> tensor`` — unit vectors.

``ImageTransform`` is the resize/crop/normalise recipe of CLIP-family processors, implemented on
PIL + numpy so that (a) it needs no torchvision, (b) the uint8 crop is made in the decode threads
and only the cheap normalisation runs in the model thread, on the device.
"""
from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ImageTransform:
    """Resize (shortest edge, or to an exact size), optional center crop, then normalise.

    Matches Hugging Face's CLIP/SigLIP image processors: the short side is resized to
    ``shortest_edge`` keeping the aspect ratio (long side truncated to int), and the crop starts at
    ``(size - crop) // 2``.
    """
    shortest_edge: int | None = 224             # resize keeping aspect ratio ...
    exact_size: tuple[int, int] | None = None   # ... or to (height, width)
    crop_size: tuple[int, int] | None = (224, 224)
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    resample: int = Image.BICUBIC
    rescale: float = 1 / 255

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of what the model receives."""
        if self.crop_size:
            return self.crop_size
        if self.exact_size:
            return self.exact_size
        raise ValueError("a transform with shortest_edge needs a crop_size")

    def draft_request(self, width: int, height: int) -> tuple[int, int]:
        """Smallest (width, height) a JPEG may be decoded to without losing resolution we need."""
        if self.exact_size:
            return self.exact_size[1], self.exact_size[0]
        edge = self.shortest_edge or max(self.output_size)
        scale = edge / min(width, height)
        return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))

    def resize_crop(self, im: Image.Image) -> np.ndarray:
        """uint8 array (H, W, 3) ready for normalisation."""
        im = im.convert("RGB") if im.mode != "RGB" else im
        w, h = im.size
        if self.exact_size:
            th, tw = self.exact_size
        else:
            edge = self.shortest_edge or max(self.output_size)
            if w <= h:
                tw, th = edge, int(edge * h / w)
            else:
                th, tw = edge, int(edge * w / h)
        if (tw, th) != (w, h):
            im = im.resize((tw, th), self.resample)
        if self.crop_size:
            ch, cw = self.crop_size
            if th < ch or tw < cw:  # pad like HF's center_crop does for small images
                canvas = Image.new("RGB", (max(tw, cw), max(th, ch)))
                canvas.paste(im, ((max(tw, cw) - tw) // 2, (max(th, ch) - th) // 2))
                im, tw, th = canvas, canvas.size[0], canvas.size[1]
            top, left = (th - ch) // 2, (tw - cw) // 2
            im = im.crop((left, top, left + cw, top + ch))
        return np.array(im, dtype=np.uint8)  # writable: torch.from_numpy wants that

    def normalize(self, batch: Any, dtype: Any) -> Any:
        """uint8 tensor (B, H, W, 3) on the device -> normalised (B, 3, H, W) of `dtype`."""
        import torch
        x = batch.permute(0, 3, 1, 2).to(torch.float32).mul_(self.rescale)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std).to(dtype)

    @classmethod
    def from_hf_config(cls, path: str | Path, fallback_size: int = 224) -> "ImageTransform":
        """Read ``preprocessor_config.json`` of a CLIP/SigLIP checkpoint directory."""
        cfg_file = Path(path) / "preprocessor_config.json"
        cfg: dict[str, Any] = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        size = cfg.get("size", {"shortest_edge": fallback_size})
        if isinstance(size, int):
            size = {"shortest_edge": size}
        crop = cfg.get("crop_size")
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        shortest = size.get("shortest_edge")
        exact = (int(size["height"]), int(size["width"])) if "height" in size and "width" in size else None
        do_crop = cfg.get("do_center_crop", shortest is not None)
        crop_hw = (int(crop["height"]), int(crop["width"])) if do_crop and crop else None
        if shortest is not None and crop_hw is None:
            crop_hw = (int(shortest), int(shortest))
        mean = tuple(cfg.get("image_mean", cls.mean))
        std = tuple(cfg.get("image_std", cls.std))
        if not cfg.get("do_normalize", True):
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        rescale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
        return cls(shortest_edge=None if exact else int(shortest or fallback_size), exact_size=exact,
                   crop_size=crop_hw, mean=mean, std=std, resample=int(cfg.get("resample", Image.BICUBIC)),
                   rescale=rescale)


@dataclass
class EncodedImages:
    """Unit image embeddings (B, D) on the device, plus an optional human note per image."""
    embeddings: Any
    notes: list[str] | None = None


class PairScorer(ABC):
    """An image-text relevance model loaded once per worker."""

    #: what reports call it, e.g. "hf_clip:/models/clip-vit-b32"
    name: str = ""
    device: str = "cpu"

    @abstractmethod
    def prepare_image(self, im: Image.Image) -> np.ndarray:
        """CPU-side preprocessing of one decoded RGB image (runs in decode threads)."""

    @abstractmethod
    def encode_images(self, arrays: Sequence[np.ndarray]) -> EncodedImages:
        """Unit embeddings of prepared images."""

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> Any:
        """Unit embeddings (T, D) of texts, on the same device as the image embeddings."""

    #: the transform used for decode-time JPEG draft scaling (None: decode at full size)
    transform: ImageTransform | None = None

    def score_pairs(self, arrays: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        """Cosine of image i with text i (convenience for notebooks and the benchmark)."""
        img = self.encode_images(arrays).embeddings
        txt = self.encode_texts(texts)
        return (img.float() * txt.float()).sum(-1).cpu().numpy()


def stack_uint8(arrays: Sequence[np.ndarray], device: str) -> Any:
    """(B, H, W, 3) uint8 tensor on `device`; pinned host memory for CUDA copies."""
    import torch
    batch = torch.from_numpy(np.stack(arrays))
    if device.startswith("cuda"):
        batch = batch.pin_memory()
        return batch.to(device, non_blocking=True)
    return batch.to(device)
