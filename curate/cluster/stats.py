"""Per-cluster count, mean distance and variance, exact in one pass: ``aggregate(partial, combine)``.

Every batch yields integer sums per cluster (``partial_stats``), any two partials add up
(``combine_stats``), and ``finalize_stats`` turns the total into numbers. The sums are *fixed
point* (values scaled by 2**20 and rounded to int64), so addition is exact and associative: the
statistics come out bit-identical however the rows were split into batches or partitions — float
sums would differ in their last bits with the order of addition. The resolution is 1e-6; the
int64 range holds ~8e12 rows x value for unit-norm embeddings.

Variance is the total variance of the members around their own mean,
``E||x||^2 - ||E x||^2``; the distance is to the fitted centroid (what sampling uses as spread).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIXED_SCALE = float(2 ** 20)


def _fixed(values: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(values, dtype=np.float64) * FIXED_SCALE).astype(np.int64)


@dataclass
class ClusterSums:
    """Integer sums for the k clusters of one level."""
    count: np.ndarray        # (k,) rows
    dist: np.ndarray         # (k,) sum of distance to centroid, fixed point
    dist_sq: np.ndarray      # (k,) sum of squared distance, fixed point
    vec: np.ndarray          # (k, D) sum of embeddings, fixed point
    norm_sq: np.ndarray      # (k,) sum of squared norms, fixed point


def partial_stats(ids: np.ndarray, dist: np.ndarray, points: np.ndarray, k: int) -> ClusterSums:
    """Sums of one batch for one level (ids (n,), dist (n,), points (n, D))."""
    ids = np.asarray(ids, dtype=np.int64)
    pts = np.asarray(points, dtype=np.float64)
    d = np.asarray(dist, dtype=np.float64)
    vec = np.zeros((k, pts.shape[1]), dtype=np.int64)
    np.add.at(vec, ids, _fixed(pts))
    return ClusterSums(count=np.bincount(ids, minlength=k).astype(np.int64),
                       dist=_bincount_int(ids, _fixed(d), k), dist_sq=_bincount_int(ids, _fixed(d * d), k),
                       vec=vec, norm_sq=_bincount_int(ids, _fixed((pts * pts).sum(1)), k))


def _bincount_int(ids: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros(k, dtype=np.int64)
    np.add.at(out, ids, values)
    return out


def combine_stats(a: ClusterSums, b: ClusterSums) -> ClusterSums:
    return ClusterSums(a.count + b.count, a.dist + b.dist, a.dist_sq + b.dist_sq, a.vec + b.vec, a.norm_sq + b.norm_sq)


def finalize_stats(s: ClusterSums) -> dict[str, np.ndarray]:
    """count, mean_distance, rms_distance (spread around the centroid) and variance per cluster."""
    n = np.maximum(s.count, 1).astype(np.float64)
    mean_vec = s.vec / FIXED_SCALE / n[:, None]
    variance = s.norm_sq / FIXED_SCALE / n - (mean_vec * mean_vec).sum(1)
    return {"count": s.count.copy(), "mean_distance": s.dist / FIXED_SCALE / n,
            "rms_distance": np.sqrt(np.maximum(s.dist_sq / FIXED_SCALE / n, 0.0)),
            "variance": np.maximum(variance, 0.0)}


def spread_by_cluster(ids: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, rms distance) per cluster from per-row columns alone (what cluster_sample re-derives,
    so allocation can be re-tuned without re-clustering); exact like partial_stats."""
    ids = np.asarray(ids, dtype=np.int64)
    count = np.bincount(ids, minlength=k).astype(np.int64)
    d = np.asarray(dist, dtype=np.float64)
    sq = _bincount_int(ids, _fixed(d * d), k)
    return count, np.sqrt(sq / FIXED_SCALE / np.maximum(count, 1))
