"""CLIP through open_clip: a model name plus a local checkpoint file.

``open_clip.create_model_and_transforms(model_name, pretrained=<path to .pt/.bin/.safetensors>)``
loads the weights from disk; the tokenizer of built-in architectures (``ViT-B-32``, ``ViT-L-14``...)
ships inside the open_clip package, so nothing is downloaded. ``hf-hub:`` model names would fetch
from the Hub and are refused.

open_clip imports torchvision (its transforms), which has no build matching the CPU torch of the
development machine; ``available()`` says so and the tests skip with that reason there. On a
machine with a matching torchvision this path is the production scorer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from curate.scoring.base import EncodedImages, ImageTransform, PairScorer

UNAVAILABLE_REASON = "open_clip needs torchvision, which has no build for this CPU torch"


def available() -> tuple[bool, str]:
    """(True, "") when open_clip imports; else (False, why)."""
    try:
        import open_clip  # noqa: F401
    except Exception as exc:  # noqa: BLE001 — ImportError, or torchvision's operator errors
        return False, f"{UNAVAILABLE_REASON} ({type(exc).__name__}: {exc})"
    return True, ""


class OpenClipScorer(PairScorer):
    def __init__(self, model_name: str, checkpoint: str | Path, device: str = "cpu", dtype: Any = None):
        import torch
        import open_clip

        if model_name.startswith(("hf-hub:", "local-dir:")) and not Path(str(checkpoint)).exists():
            raise ValueError(f"model_name: {model_name!r} would be fetched from the Hub; give a built-in "
                             "architecture name and a local checkpoint")
        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise FileNotFoundError(f"model_path: {ckpt} is not a checkpoint file")
        self.device = device
        self.dtype = dtype or torch.float32
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(ckpt), device=device)
        self.model = model.to(dtype=self.dtype).eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        size = getattr(model.visual, "image_size", 224)
        side = int(size[0] if isinstance(size, (tuple, list)) else size)
        # used only to decode JPEGs at a reduced DCT scale; preprocessing is open_clip's own
        self.transform = ImageTransform(shortest_edge=side, crop_size=(side, side))
        self.name = f"open_clip:{model_name}:{ckpt}"

    def prepare_image(self, im: Image.Image) -> np.ndarray:
        return self.preprocess(im).numpy()

    def encode_images(self, arrays: Sequence[np.ndarray]) -> EncodedImages:
        import torch
        with torch.inference_mode():
            x = torch.from_numpy(np.stack(arrays)).to(self.device, dtype=self.dtype)
            emb = self.model.encode_image(x)
            return EncodedImages(torch.nn.functional.normalize(emb.float(), dim=-1))

    def encode_texts(self, texts: Sequence[str]) -> Any:
        import torch
        with torch.inference_mode():
            tokens = self.tokenizer(list(texts)).to(self.device)
            emb = self.model.encode_text(tokens)
            return torch.nn.functional.normalize(emb.float(), dim=-1)
