"""Hierarchical k-means (Vo et al. 2024) on faiss: fit on a sample, then assign every row.

* **Fit** (driver, small): one seeded sample of rows (``draw_fit_sample``: the rows with the smallest
  seeded hash of their key, so the sample does not depend on how the data is partitioned). Level 1
  clusters the sample into ``levels[0]`` centroids, level 2 clusters level 1's centroids into
  ``levels[1]``, and so on (bottom-up, as Vo et al. build their hierarchy).
* **Resampling** (Vo et al.): plain k-means piles centroids into dense regions. After a level is fitted,
  ``resampling_steps`` times: keep only the ``resample_points`` points closest to each centroid, and
  re-fit on that union starting from the current centroids. Every cluster then weighs the same in
  the re-fit, which moves centroids out of the dense regions and spreads them over the data.
* **Assignment** (per batch, a pure map holding the centroids): nearest leaf centroid, then the
  leaf's ancestors; the distance to the centroid of every level. faiss proposes the two nearest
  leaves; the winner is decided on distances computed row by row (not by BLAS over the batch), so
  a row's answer does not depend on which other rows share its batch.

faiss's ``max_points_per_centroid`` (default 256) silently subsamples the training set; it is set to
the sample size here, so the fit sample is exactly the logged one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FitSettings:
    levels: tuple[int, ...]          # clusters per level, finest first (Vo et al.: 10M/500k/50k/10k)
    niter: int = 20
    resampling_steps: int = 3
    resample_points: int = 64        # points kept per centroid in a resampling step
    spherical: bool = True           # unit centroids (cosine geometry), as SemDeDup / Vo et al. on unit embeddings
    seed: int = 0


@dataclass
class Hierarchy:
    """Centroids per level (finest first) and, for every level but the top, each centroid's parent."""
    centroids: list[np.ndarray]      # level l: (k_l, D) float32
    parents: list[np.ndarray]        # level l < top: (k_l,) int64 index into level l + 1

    @property
    def depth(self) -> int:
        return len(self.centroids)

    def ancestors(self, leaf: np.ndarray) -> np.ndarray:
        """(n, depth) ids, coarsest level first (the cluster *path*), for leaf ids (n,)."""
        path = [np.asarray(leaf, dtype=np.int64)]
        for parent in self.parents:
            path.append(parent[path[-1]])
        return np.stack(path[::-1], axis=1)


def seeded_hash(keys: list[str], seed: int) -> np.ndarray:
    """uint64 per key from blake2b(seed, key): the seeded, partition-independent order used for the
    fit sample and for random choices inside clusters."""
    salt = int(seed).to_bytes(8, "little", signed=True)
    return np.fromiter((int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8, key=salt).digest(), "little")
                        for k in keys), dtype=np.uint64, count=len(keys))


def draw_fit_sample(hashes: np.ndarray, size: int) -> np.ndarray:
    """Indices of the `size` rows with the smallest hashes, in hash order (a combine of per-batch
    top-`size` lists gives the same answer)."""
    size = min(int(size), len(hashes))
    if size <= 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.argpartition(hashes, size - 1)[:size] if size < len(hashes) else np.arange(len(hashes))
    return idx[np.argsort(hashes[idx], kind="stable")]


def _kmeans(points: np.ndarray, k: int, s: FitSettings, init: np.ndarray | None = None, niter: int | None = None
            ) -> np.ndarray:
    import faiss
    km = faiss.Kmeans(points.shape[1], k, niter=niter or s.niter, seed=s.seed, spherical=s.spherical,
                      max_points_per_centroid=max(1, points.shape[0]), min_points_per_centroid=1, verbose=False,
                      gpu=faiss.get_num_gpus() > 0)     # faiss-gpu builds fit on the GPU; faiss-cpu reports 0
    km.train(np.ascontiguousarray(points, dtype=np.float32),
             init_centroids=None if init is None else np.ascontiguousarray(init, dtype=np.float32))
    return np.asarray(km.centroids, dtype=np.float32)


def squared_distances(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n, k) float64 squared Euclidean distances (dense; for the small fit-time sets)."""
    p = points.astype(np.float64)
    c = centroids.astype(np.float64)
    d2 = (p * p).sum(1)[:, None] - 2.0 * p @ c.T + (c * c).sum(1)[None, :]
    return np.maximum(d2, 0.0)


def resample_once(points: np.ndarray, centroids: np.ndarray, per_centroid: int) -> np.ndarray:
    """Indices of the `per_centroid` points closest to each centroid (Vo et al.'s resampling set)."""
    d2 = squared_distances(points, centroids)
    nearest = d2.argmin(axis=1)
    keep: list[np.ndarray] = []
    for c in range(centroids.shape[0]):
        members = np.flatnonzero(nearest == c)
        if members.size:
            keep.append(members[np.argsort(d2[members, c], kind="stable")[:per_centroid]])
    return np.sort(np.concatenate(keep)) if keep else np.arange(len(points))


def fit_level(points: np.ndarray, k: int, s: FitSettings) -> np.ndarray:
    """Centroids of one level: k-means, then Vo et al.'s resampling steps. k is clamped to the points."""
    k = max(1, min(int(k), points.shape[0]))
    centroids = _kmeans(points, k, s)
    for _ in range(s.resampling_steps):
        chosen = resample_once(points, centroids, s.resample_points)
        if len(chosen) < k:
            break
        centroids = _kmeans(points[chosen], k, s, init=centroids)
    return centroids


def fit_hierarchy(sample: np.ndarray, s: FitSettings) -> Hierarchy:
    """Bottom-up: level 0 on the sample, level l + 1 on level l's centroids."""
    if sample.ndim != 2 or sample.shape[0] == 0:
        raise ValueError("cluster: no embeddings to fit on")
    centroids = [fit_level(sample, s.levels[0], s)]
    parents: list[np.ndarray] = []
    for k in s.levels[1:]:
        below = centroids[-1]
        upper = fit_level(below, min(k, below.shape[0]), s)
        parents.append(squared_distances(below, upper).argmin(axis=1).astype(np.int64))
        centroids.append(upper)
    return Hierarchy(centroids, parents)


def _row_sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distance of row i of x to row i of c; each row's sum depends on that row alone."""
    diff = x - c
    return np.einsum("ij,ij->i", diff, diff)


def assign(points: np.ndarray, h: Hierarchy) -> tuple[np.ndarray, np.ndarray]:
    """Per-batch map: (paths (n, depth) int32 coarse -> fine, distances (n, depth) float32 to each
    level's centroid on the path)."""
    import faiss
    x = np.ascontiguousarray(points, dtype=np.float32)
    leaves = h.centroids[0]
    index = faiss.IndexFlatL2(leaves.shape[1])
    index.add(leaves)
    _, cand = index.search(x, min(2, leaves.shape[0]))
    best_d2 = _row_sq_dist(x, leaves[cand[:, 0]])
    leaf = cand[:, 0].copy()
    if cand.shape[1] > 1:   # faiss's own order can vary with the batch (BLAS blocking): decide per row
        d2 = _row_sq_dist(x, leaves[cand[:, 1]])
        second = (d2 < best_d2) | ((d2 == best_d2) & (cand[:, 1] < cand[:, 0]))
        leaf[second], best_d2[second] = cand[second, 1], d2[second]
    path = h.ancestors(leaf)
    dist = np.empty(path.shape, dtype=np.float32)
    dist[:, -1] = np.sqrt(best_d2)
    for level in range(h.depth - 1):
        dist[:, level] = np.sqrt(_row_sq_dist(x, h.centroids[h.depth - 1 - level][path[:, level]]))
    return path.astype(np.int32), dist
