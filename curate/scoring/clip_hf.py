"""CLIP and SigLIP through transformers (``CLIPModel`` / ``SiglipModel``) from a local directory.

The directory is what ``save_pretrained`` writes (config.json, model.safetensors, tokenizer files,
preprocessor_config.json). Nothing is downloaded: ``local_files_only=True``. Image preprocessing
follows ``preprocessor_config.json`` through ``ImageTransform`` (PIL + numpy, no torchvision);
the normalisation runs on the device.

The score is the cosine of the projected, L2-normalised image and text embeddings — the number
LAION thresholded at 0.3 with OpenAI's ViT-B/32. SigLIP cosines live on a different scale; pick
thresholds per model (or use ``top_fraction``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from PIL import Image

from curate.scoring.base import EncodedImages, ImageTransform, PairScorer, stack_uint8


def _features(out: Any) -> Any:
    """transformers < 5 returns a tensor from get_*_features; 5.x returns an output whose
    pooler_output holds the projected embedding."""
    import torch
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"unexpected features output {type(out).__name__}")
    return pooled


class HFClipScorer(PairScorer):
    """``kind="clip"``: CLIPModel; ``kind="siglip"``: SiglipModel (texts padded to max_length, as trained)."""

    def __init__(self, model_path: str | Path, kind: Literal["clip", "siglip"] = "clip", device: str = "cpu",
                 dtype: Any = None):
        from transformers import AutoTokenizer, CLIPModel, SiglipModel

        path = Path(model_path)
        if not path.is_dir():
            raise FileNotFoundError(f"model_path: {path} is not a directory with a saved {kind} model")
        model_cls = CLIPModel if kind == "clip" else SiglipModel
        model = model_cls.from_pretrained(str(path), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        transform = ImageTransform.from_hf_config(path, fallback_size=int(model.config.vision_config.image_size))
        self._init(model, tokenizer, transform, kind, device, dtype, f"hf_{kind}:{path}")

    @classmethod
    def from_objects(cls, model: Any, tokenizer: Any, transform: ImageTransform, kind: Literal["clip", "siglip"] = "clip",
                     device: str = "cpu", dtype: Any = None, name: str = "") -> "HFClipScorer":
        """A scorer around an already built model (notebooks, benchmarks of architectures without weights)."""
        self = cls.__new__(cls)
        self._init(model, tokenizer, transform, kind, device, dtype, name or f"hf_{kind}:<in-memory>")
        return self

    def _init(self, model: Any, tokenizer: Any, transform: ImageTransform, kind: str, device: str, dtype: Any,
              name: str) -> None:
        import torch
        self.kind = kind
        self.device = device
        self.dtype = dtype or torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.tokenizer = tokenizer
        text_cfg = self.model.config.text_config
        limit = getattr(tokenizer, "model_max_length", None) or text_cfg.max_position_embeddings
        self.max_length = int(min(limit, text_cfg.max_position_embeddings))
        self.transform = transform
        self.name = name

    def prepare_image(self, im: Image.Image) -> np.ndarray:
        return self.transform.resize_crop(im)

    def encode_images(self, arrays: Sequence[np.ndarray]) -> EncodedImages:
        import torch
        with torch.inference_mode():
            pixels = self.transform.normalize(stack_uint8(arrays, self.device), self.dtype)
            emb = _features(self.model.get_image_features(pixel_values=pixels))
            return EncodedImages(torch.nn.functional.normalize(emb.float(), dim=-1))

    def encode_texts(self, texts: Sequence[str]) -> Any:
        import torch
        padding = "max_length" if self.kind == "siglip" else True
        tok = self.tokenizer(list(texts), padding=padding, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        inputs = {"input_ids": tok["input_ids"].to(self.device)}
        if self.kind == "clip" and "attention_mask" in tok:
            inputs["attention_mask"] = tok["attention_mask"].to(self.device)
        with torch.inference_mode():
            emb = _features(self.model.get_text_features(**inputs))
            return torch.nn.functional.normalize(emb.float(), dim=-1)
