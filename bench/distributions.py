"""The three length distributions the packing benchmark (and the issue's targets) are stated on.

* caption-like (L=4096): 144 image tokens (Open-Qwen2VL's fixed budget) + text tokens drawn from a
  lognormal with median 30, clipped to 5..300 — every item is 149..444 tokens.
* native resolution (L=8192): width/height lognormal around 800x600, counted with Qwen2-VL's
  smart_resize (default max_pixels 1280*28*28), + text lognormal with median 200.
* SFT mix (L=24576): 70% uniform 50-500, 25% uniform 500-4000, 5% uniform 4000-24576.

All draws come from numpy's PCG64 with a fixed seed, so every run packs the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

CAPTION_SIGMA = 0.6       # spread of the caption lognormal (median 30 tokens)
NATIVE_TEXT_SIGMA = 0.8   # spread of the native-resolution text lognormal (median 200 tokens)
NATIVE_SIZE_SIGMA = 0.35  # spread of image scale around 800x600
NATIVE_ASPECT_SIGMA = 0.25


def caption_like(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    text = np.clip(np.rint(rng.lognormal(np.log(30), CAPTION_SIGMA, n)), 5, 300).astype(np.int64)
    return 144 + text


def native_resolution_sizes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scale = rng.lognormal(0.0, NATIVE_SIZE_SIGMA, n)
    aspect = rng.lognormal(0.0, NATIVE_ASPECT_SIGMA, n)
    w = np.maximum(np.rint(800 * scale * np.sqrt(aspect)), 16).astype(np.int64)
    h = np.maximum(np.rint(600 * scale / np.sqrt(aspect)), 16).astype(np.int64)
    return w, h


def native_resolution(n: int, seed: int = 0, capacity: int = 8192) -> np.ndarray:
    from pack.tokens import image_tokens
    w, h = native_resolution_sizes(n, seed)
    img = image_tokens(w, h)
    rng = np.random.default_rng(seed + 1)
    text = np.rint(rng.lognormal(np.log(200), NATIVE_TEXT_SIGMA, n)).astype(np.int64)
    return np.minimum(img + np.maximum(text, 1), capacity)


def sft_mix(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    short = rng.integers(50, 501, n)
    mid = rng.integers(500, 4001, n)
    long = rng.integers(4000, 24577, n)
    return np.where(u < 0.70, short, np.where(u < 0.95, mid, long)).astype(np.int64)


@dataclass(frozen=True)
class Distribution:
    name: str
    capacity: int
    make: Callable[[int, int], np.ndarray]


DISTRIBUTIONS = (
    Distribution("caption-like", 4096, caption_like),
    Distribution("native-res", 8192, native_resolution),
    Distribution("sft-mix", 24576, sft_mix),
)
