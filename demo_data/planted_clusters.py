"""A planted, imbalanced embedding corpus: a few dominant concepts hold most samples, many are rare.

Used by the tests and ``bench/bench_cluster.py`` to measure what cluster-balanced sampling is for:
after keeping a fraction, how much of the kept data the dominant concepts still take, and how many
distinct concepts survive, against uniform random sampling of the same size.

Each concept is a random unit direction in ``dim`` dimensions; its samples are that direction plus
Gaussian noise of a per-concept width (so clusters differ in spread), normalised to unit length.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PlantedCorpus:
    embeddings: np.ndarray   # (n, dim) float32, unit rows
    concept: np.ndarray      # (n,) int64
    dominant: np.ndarray     # concept ids of the dominant concepts


def planted_corpus(n: int = 20_000, dim: int = 32, dominant: int = 3, rare: int = 300, dominant_share: float = 0.9,
                   seed: int = 0) -> PlantedCorpus:
    """`dominant` concepts share `dominant_share` of n equally; the `rare` ones split the rest with
    Zipf-like sizes (1/rank), each at least one sample."""
    rng = np.random.default_rng(seed)
    n_dom = int(round(n * dominant_share))
    dom_sizes = np.full(dominant, n_dom // dominant)
    dom_sizes[: n_dom - dom_sizes.sum()] += 1
    zipf = 1.0 / np.arange(1, rare + 1)
    rare_sizes = np.maximum(1, np.floor(zipf / zipf.sum() * (n - n_dom))).astype(np.int64)
    rare_sizes[0] += max(0, (n - n_dom) - int(rare_sizes.sum()))   # exactly n rows when the floors fall short
    sizes = np.concatenate([dom_sizes, rare_sizes])
    centres = rng.normal(size=(len(sizes), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    width = rng.uniform(0.05, 0.25, size=len(sizes)) / np.sqrt(dim)
    concept = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[concept] + rng.normal(size=(len(concept), dim)) * width[concept, None]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(len(concept))
    return PlantedCorpus(x[perm].astype(np.float32), concept[perm], np.arange(dominant))


def kept_summary(concept: np.ndarray, dominant: np.ndarray, kept: np.ndarray) -> tuple[float, int]:
    """(share of kept rows from dominant concepts, distinct concepts kept) for a boolean/count mask."""
    k = np.asarray(kept) > 0
    if not k.any():
        return 0.0, 0
    share = float(np.isin(concept[k], dominant).mean())
    return share, int(len(np.unique(concept[k])))
