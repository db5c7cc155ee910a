"""Cluster-balanced sampling over a cluster hierarchy: allocation top-down, then a choice per leaf.

Shaped as the distributed steps it becomes: the per-cluster totals (rows or tokens, and spread) are
an aggregate of per-row columns; the allocation runs on the driver over those small arrays
(``allocate_tree``); the choice inside each leaf (``choose_in_leaves``) needs only that leaf's rows
and its quota (a per-cluster reduce).

Allocation follows Vo et al. 2024: the target is split over the top-level clusters by water-filling,
each cluster's share over its children, down to the leaves. Weights are ``size**alpha * spread**beta``
at every level (``curate/cluster/waterfill.py``), where spread is the root-mean-square distance of
the cluster's rows to its centroid. With ``max_repeat > 1`` a cluster's cap is its size times
``max_repeat`` (small clusters are upsampled; the row's ``cluster_repeat`` says how many times).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from curate.cluster.kmeans import seeded_hash
from curate.cluster.stats import FIXED_SCALE, _bincount_int, _fixed
from curate.cluster.waterfill import cluster_weights, waterfill

WithinLeaf = Literal["random", "closest", "farthest"]


@dataclass(frozen=True)
class AllocationSettings:
    alpha: float = 0.0
    beta: float = 0.0
    max_repeat: int = 1
    seed: int = 0


@dataclass
class LevelTotals:
    """Per-node totals of one level (node id = cluster id at that level)."""
    units: np.ndarray        # (k,) rows or tokens available
    rows: np.ndarray         # (k,) rows
    spread: np.ndarray       # (k,) rms distance to the node's centroid
    parent: np.ndarray       # (k,) node id one level up (-1 at the top, or for absent nodes)


def level_totals(paths: np.ndarray, dists: np.ndarray, units: np.ndarray) -> list[LevelTotals]:
    """Aggregate of per-row columns: totals for every level, coarsest first (exact integer sums)."""
    out: list[LevelTotals] = []
    for level in range(paths.shape[1]):
        ids = paths[:, level].astype(np.int64)
        k = int(ids.max()) + 1 if len(ids) else 0
        rows = np.bincount(ids, minlength=k).astype(np.int64)
        sq = _bincount_int(ids, _fixed(dists[:, level].astype(np.float64) ** 2), k)
        parent = np.full(k, -1, dtype=np.int64)
        if level:
            parent[ids] = paths[:, level - 1]
        out.append(LevelTotals(units=_bincount_int(ids, units.astype(np.int64), k), rows=rows,
                               spread=np.sqrt(sq / FIXED_SCALE / np.maximum(rows, 1)), parent=parent))
    return out


def _tie_rank(level: int, k: int, seed: int) -> np.ndarray:
    """A seeded order of the k nodes of a level, for equal unit costs (Vo et al. spread the remainder
    at random; a fixed seed keeps it reproducible)."""
    return seeded_hash([f"{level}/{i}" for i in range(k)], seed).argsort(kind="stable")


def allocate_tree(totals: list[LevelTotals], target: int, s: AllocationSettings) -> list[np.ndarray]:
    """Units allocated to every node of every level (coarsest first); the leaves' sum is
    min(target, max_repeat * available)."""
    quotas: list[np.ndarray] = []
    for level, t in enumerate(totals):
        k = len(t.units)
        ranks = np.empty(k, dtype=np.int64)
        ranks[_tie_rank(level, k, s.seed)] = np.arange(k)
        caps = t.units * s.max_repeat
        weights = cluster_weights(t.rows, t.spread, s.alpha, s.beta)
        weights[t.rows == 0] = 0.0
        quota = np.zeros(k, dtype=np.int64)
        if level == 0:
            present = np.flatnonzero(t.rows > 0)
            quota[present] = waterfill(caps[present], weights[present], target, ranks[present])
        else:
            parent_quota = quotas[-1]
            present = np.flatnonzero(t.rows > 0)
            order = present[np.argsort(t.parent[present], kind="stable")]
            groups = np.split(order, np.flatnonzero(np.diff(t.parent[order])) + 1) if len(order) else []
            for children in groups:
                p = t.parent[children[0]]
                quota[children] = waterfill(caps[children], weights[children], int(parent_quota[p]), ranks[children])
        quotas.append(quota)
    return quotas


def leaf_order(leaf: np.ndarray, leaf_dist: np.ndarray, hashes: np.ndarray, within: WithinLeaf) -> np.ndarray:
    """Row indices sorted by leaf, then by the within-leaf preference (ties: seeded hash)."""
    if within == "random":
        return np.lexsort((hashes, leaf))
    signed = leaf_dist.astype(np.float64) * (1.0 if within == "closest" else -1.0)
    return np.lexsort((hashes, signed, leaf))


def choose_in_leaves(leaf: np.ndarray, leaf_dist: np.ndarray, units: np.ndarray, hashes: np.ndarray,
                     leaf_quota: np.ndarray, within: WithinLeaf) -> np.ndarray:
    """Repeats per row (0: not sampled). A leaf with quota q of its u units takes every row q // u
    times, then rows in preference order while the remaining quota covers them (by rows, the first
    q % n rows; by tokens, the longest prefix that fits, plus the next row when that lands closer)."""
    order = leaf_order(leaf, leaf_dist, hashes, within)
    lf = leaf[order].astype(np.int64)
    u = units[order].astype(np.int64)
    k = len(leaf_quota)
    total = _bincount_int(lf, u, k)
    q = leaf_quota.astype(np.int64)
    full = np.where(total > 0, q // np.maximum(total, 1), 0)
    rest = q - full * total
    csum = np.cumsum(u)
    starts = np.r_[0, np.flatnonzero(np.diff(lf)) + 1] if len(lf) else np.zeros(0, dtype=np.int64)
    before = np.zeros(len(lf), dtype=np.int64)
    if len(lf):
        group_base = np.repeat(csum[starts] - u[starts], np.diff(np.r_[starts, len(lf)]))
        before = csum - u - group_base          # units of the leaf ahead of this row
    after = before + u
    r = rest[lf]
    take = (after <= r) | ((before < r) & (after - r < r - before))
    repeats = np.empty(len(lf), dtype=np.int64)
    repeats[order] = full[lf] + take.astype(np.int64)
    return repeats


# --- the same totals as an aggregate over batches (exact: integer sums) --------------------------------
def totals_partial(paths: np.ndarray, dists: np.ndarray, units: np.ndarray) -> dict[str, np.ndarray]:
    """One entry per (level, node) present in this batch: rows, units, fixed-point sum of squared
    distance, parent id."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("level", "node", "rows", "units", "sq", "parent")}
    for level in range(paths.shape[1]):
        ids = paths[:, level].astype(np.int64)
        nodes, inverse = np.unique(ids, return_inverse=True)
        k = len(nodes)
        first = np.zeros(k, dtype=np.int64)
        first[inverse[::-1]] = np.arange(len(ids))[::-1]
        out["level"].append(np.full(k, level, dtype=np.int64))
        out["node"].append(nodes)
        out["rows"].append(np.bincount(inverse, minlength=k).astype(np.int64))
        out["units"].append(_bincount_int(inverse, units.astype(np.int64), k))
        out["sq"].append(_bincount_int(inverse, _fixed(dists[:, level].astype(np.float64) ** 2), k))
        out["parent"].append(paths[first, level - 1].astype(np.int64) if level else np.full(k, -1, dtype=np.int64))
    return {name: np.concatenate(v) if v else np.zeros(0, dtype=np.int64) for name, v in out.items()}


def combine_totals(parts: dict[str, np.ndarray], depth: int) -> list[LevelTotals]:
    """Sum the partials of every batch (any order) into per-level totals."""
    out = []
    for level in range(depth):
        sel = parts["level"] == level
        nodes = parts["node"][sel]
        k = int(nodes.max()) + 1 if len(nodes) else 0
        rows, units, sq = (np.zeros(k, dtype=np.int64) for _ in range(3))
        np.add.at(rows, nodes, parts["rows"][sel])
        np.add.at(units, nodes, parts["units"][sel])
        np.add.at(sq, nodes, parts["sq"][sel])
        parent = np.full(k, -1, dtype=np.int64)
        parent[nodes] = parts["parent"][sel]
        out.append(LevelTotals(units=units, rows=rows, spread=np.sqrt(sq / FIXED_SCALE / np.maximum(rows, 1)),
                               parent=parent))
    return out
