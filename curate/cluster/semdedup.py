"""Semantic dedup inside clusters (SemDeDup, Abbas et al. 2023; NeMo Curator's semantic dedup).

Near-duplicates in embedding space land in the same k-means cluster, so pairs are only compared
inside a leaf cluster: the cost is sum(n_c^2) instead of n^2. Within a leaf (one call of
``dedup_leaf``, a per-cluster reduce):

1. rows are put in survivor-preference order: highest quality column first, or ``hard`` (farthest
   from the centroid first — SemDeDup's default: keep the less prototypical copy), or ``easy``
   (closest first); ties by a seeded hash of the key, never by arrival order;
2. cosine similarities of the unit embeddings are computed block by block; every pair above
   ``1 - eps`` is an edge (NeMo's default eps 0.01);
3. kept rows by the leader algorithm in preference order: the first row not yet decided is kept,
   every undecided row with cosine above ``1 - eps`` to it is removed naming it and that cosine;
   repeat on what is left. Every removed row is within the threshold of a row that is KEPT, so
   near-duplicate chains (a~b~c~..., the ends far apart) cannot remove rows far from any survivor.
   The connected components of the pairs are still computed, for the report (largest component).

NeMo removes an item when *any* earlier-ranked item is similar, even one that was itself removed:
on a chain that removes rows that are nowhere near a kept one; here only a kept row removes. The
work is the pair computation (already all pairs of the leaf, in blocks) plus one pass over the
pairs, so a giant component costs no more than its pairs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK_ROWS = 2048


@dataclass
class LeafGroups:
    """Per row of the leaf (in the order given to dedup_leaf)."""
    survivor: np.ndarray        # index (into the leaf's rows) of the kept row it is close to (itself if kept)
    group_size: np.ndarray      # rows naming that kept row, itself included (1: no duplicate)
    similarity: np.ndarray      # cosine to its kept row (NaN for kept rows)
    component_size: np.ndarray  # rows in its connected component of similar pairs


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
    i, j, sim = similar_pairs(unit, 1.0 - eps)       # i < j: i is the preferred one
    if len(i) == 0:
        return LeafGroups(np.arange(n), np.ones(n, dtype=np.int64), np.full(n, np.nan), np.ones(n, dtype=np.int64))
    _, label = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)
    centre, similarity = leader_cover(n, i, j, sim.astype(np.float64))
    out_survivor = np.empty(n, dtype=np.int64)
    out_size = np.empty(n, dtype=np.int64)
    out_sim = np.empty(n)
    out_comp = np.empty(n, dtype=np.int64)
    out_survivor[order] = order[centre]
    out_size[order] = np.bincount(centre, minlength=n)[centre]
    out_sim[order] = similarity
    out_comp[order] = np.bincount(label)[label]
    return LeafGroups(out_survivor, out_size, out_sim, out_comp)


def leader_cover(n: int, i: np.ndarray, j: np.ndarray, sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The leader algorithm over positions 0..n-1 (preference order) and similar pairs (i < j): per
    position, the kept position it is close to (itself when kept) and that similarity (NaN if kept)."""
    centre = np.arange(n, dtype=np.int64)
    similarity = np.full(n, np.nan)
    removed = np.zeros(n, dtype=bool)
    by_i = np.lexsort((j, i))
    i, j, sim = i[by_i], j[by_i], sim[by_i]
    starts = np.flatnonzero(np.r_[True, i[1:] != i[:-1]])
    ends = np.r_[starts[1:], i.shape[0]]
    for lo, hi in zip(starts, ends):
        p = i[lo]
        if removed[p]:                      # a removed row removes nothing
            continue
        near, s = j[lo:hi], sim[lo:hi]
        take = ~removed[near]
        removed[near[take]] = True
        centre[near[take]] = p
        similarity[near[take]] = s[take]
    return centre, similarity
