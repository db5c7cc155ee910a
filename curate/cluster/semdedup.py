"""Semantic dedup inside clusters (SemDeDup, Abbas et al. 2023; NeMo Curator's semantic dedup).

Near-duplicates in embedding space land in the same k-means cluster, so pairs are only compared
inside a leaf cluster: the cost is sum(n_c^2) instead of n^2. Within a leaf (one call of
``dedup_leaf``, a per-cluster reduce):

1. rows are put in survivor-preference order: highest quality column first, or ``hard`` (farthest
   from the centroid first — SemDeDup's default: keep the less prototypical copy), or ``easy``
   (closest first); ties by a seeded hash of the key, never by arrival order;
2. cosine similarities of the unit embeddings are computed block by block; every pair above
   ``1 - eps`` is an edge (NeMo's default eps 0.01);
3. connected components of those edges are the groups (as the dedup stages report them); the first
   row of a group in preference order survives, the others are removed naming it.

NeMo removes an item when *any* earlier-ranked item is similar, even one that was itself removed;
components give the same removals for eps this small and let every removed row name a survivor.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK_ROWS = 2048


@dataclass
class LeafGroups:
    """Per row of the leaf (in the order given to dedup_leaf)."""
    survivor: np.ndarray     # index (into the leaf's rows) of the row that represents its group
    group_size: np.ndarray   # rows in the group (1: no duplicate)
    best_similarity: np.ndarray  # highest cosine to another row of its group (NaN for singletons)


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    e = np.asarray(embeddings, dtype=np.float32)
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.where(norm > 0, norm, 1.0)


def preference_order(quality: np.ndarray | None, distance: np.ndarray, hashes: np.ndarray, survivor: str) -> np.ndarray:
    """Row indices, preferred survivor first."""
    if survivor == "quality":
        if quality is None:
            raise ValueError("survivor: quality needs quality_column")
        q = np.asarray(quality, dtype=np.float64)
        primary = np.where(np.isnan(q), np.inf, -q)          # missing quality ranks last
    elif survivor == "hard":
        primary = -np.asarray(distance, dtype=np.float64)
    elif survivor == "easy":
        primary = np.asarray(distance, dtype=np.float64)
    else:
        raise ValueError(f"survivor: expected quality, hard or easy, got {survivor!r}")
    return np.lexsort((hashes, primary))


def similar_pairs(unit: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine) for i < j with cosine > threshold, computed in row blocks (memory BLOCK_ROWS x n)."""
    rows, cols, sims = [], [], []
    n = len(unit)
    for start in range(0, n, BLOCK_ROWS):
        block = unit[start:start + BLOCK_ROWS] @ unit[start:].T
        i, j = np.nonzero(block > threshold)
        keep = j > i                     # upper triangle: column offset is relative to `start`
        rows.append(i[keep] + start)
        cols.append(j[keep] + start)
        sims.append(block[i[keep], j[keep]])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(sims)


def dedup_leaf(embeddings: np.ndarray, order: np.ndarray, eps: float) -> LeafGroups:
    """Groups of one leaf. `order` is the preference order (preference_order)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    n = len(embeddings)
    unit = unit_rows(embeddings)[order]              # position p = p-th preferred row
    i, j, sim = similar_pairs(unit, 1.0 - eps)
    if len(i) == 0:
        return LeafGroups(np.arange(n), np.ones(n, dtype=np.int64), np.full(n, np.nan))
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    # the first position of each component in preference order is its survivor
    first = np.full(label.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, label, np.arange(n))
    size = np.bincount(label)
    best = np.full(n, np.nan)
    np.fmax.at(best, i, sim.astype(np.float64))
    np.fmax.at(best, j, sim.astype(np.float64))
    survivor_pos = first[label]
    out_survivor = np.empty(n, dtype=np.int64)
    out_size = np.empty(n, dtype=np.int64)
    out_best = np.empty(n)
    out_survivor[order] = order[survivor_pos]
    out_size[order] = size[label]
    out_best[order] = best
    return LeafGroups(out_survivor, out_size, out_best)
