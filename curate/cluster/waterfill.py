"""Water-filling: split an integer target over clusters by weight, each under its own cap.

Vo et al. 2024 (ssl-data-curation) sample a cluster hierarchy top-down with *balanced* allocation:
a common per-cluster cap ``x`` is found by search so that ``sum(min(x, size)) == target``; small
clusters are taken whole and the large ones share the rest equally. MindVL asks for more samples
from high-variance clusters. Both are one rule here: cluster ``c`` has weight
``w_c = size_c**alpha * spread_c**beta`` and receives ``min(cap_c, floor(level * w_c))`` units, the
level chosen so that the allocations sum to the target. ``alpha = beta = 0`` gives every cluster
weight 1: exactly Vo et al.'s balanced water level. ``alpha = 1, beta = 0`` is proportional
(uniform-random-like) sampling; ``beta > 0`` favours spread-out clusters.

Integer units are handed out by a *divisor method*: the k-th unit of cluster c costs ``k / w_c``;
the allocation for target T is the T cheapest units (cap permitting), ties broken by a seeded rank
per cluster. That makes the arithmetic exact and *monotone*: raising the target never takes a unit
away from any cluster (largest-remainder rounding would not guarantee that).
"""
from __future__ import annotations

import heapq

import numpy as np

# A cluster whose spread is 0 (one point, or exact copies) would get weight 0 under beta > 0 and never
# be sampled; its spread is floored at this fraction of the median positive spread instead.
SPREAD_FLOOR_FRACTION = 0.01


def cluster_weights(sizes: np.ndarray, spreads: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """``size**alpha * spread**beta`` (float64), with spreads floored (see SPREAD_FLOOR_FRACTION)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    spreads = np.asarray(spreads, dtype=np.float64)
    weights = np.ones(len(sizes), dtype=np.float64)
    if alpha:
        weights *= np.power(np.maximum(sizes, 1.0), alpha)
    if beta:
        positive = spreads[spreads > 0]
        floor = SPREAD_FLOOR_FRACTION * float(np.median(positive)) if positive.size else 1.0
        weights *= np.power(np.maximum(spreads, floor), beta)
    return weights


def waterfill(caps: np.ndarray, weights: np.ndarray, target: int, tie_rank: np.ndarray | None = None) -> np.ndarray:
    """Integer allocation per cluster: sums to ``min(target, sum(caps))``, never above a cap.

    caps: units available per cluster (>= 0); weights: > 0 (a cluster with weight <= 0 only gets
    units once every positive-weight cluster is full); tie_rank: order among equal unit costs
    (lower first), e.g. a seeded permutation — default the cluster index.
    """
    caps = np.asarray(caps, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    if caps.shape != weights.shape:
        raise ValueError(f"caps {caps.shape} and weights {weights.shape} differ")
    if (caps < 0).any():
        raise ValueError("caps must be >= 0")
    target = int(target)
    if target < 0:
        raise ValueError(f"target must be >= 0, got {target}")
    total = int(caps.sum())
    if target >= total:
        return caps.copy()
    rank = np.arange(len(caps)) if tie_rank is None else np.asarray(tie_rank)
    positive = weights > 0
    alloc = np.zeros(len(caps), dtype=np.int64)
    pos_cap = int(caps[positive].sum())
    if target >= pos_cap:       # every positive-weight cluster full; the rest shared evenly
        alloc[positive] = caps[positive]
        rest = np.flatnonzero(~positive)
        alloc[rest] = waterfill(caps[rest], np.ones(len(rest)), target - pos_cap, rank[rest])
        return alloc
    idx = np.flatnonzero(positive)
    alloc[idx] = _divisor_allocation(caps[idx], weights[idx], target, rank[idx])
    return alloc


def _units_below(level: float, caps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.minimum(caps, np.floor(level * weights)).astype(np.int64)


def _divisor_allocation(caps: np.ndarray, weights: np.ndarray, target: int, rank: np.ndarray) -> np.ndarray:
    """The ``target`` cheapest units (unit k of cluster c costs k / w_c); all weights > 0, target < sum(caps)."""
    lo, hi = 0.0, float(np.max((caps + 1) / weights))
    for _ in range(200):          # bisection on the water level: units(lo) <= target < units(hi)
        mid = (lo + hi) / 2
        if mid <= lo or mid >= hi:
            break
        if int(_units_below(mid, caps, weights).sum()) <= target:
            lo = mid
        else:
            hi = mid
    alloc = _units_below(lo, caps, weights)
    # the few units left (fewer than the clusters whose next unit costs about `lo`): cheapest first
    heap = [((alloc[c] + 1) / weights[c], rank[c], c) for c in np.flatnonzero(alloc < caps)]
    heapq.heapify(heap)
    for _ in range(target - int(alloc.sum())):
        _, r, c = heapq.heappop(heap)
        alloc[c] += 1
        if alloc[c] < caps[c]:
            heapq.heappush(heap, ((alloc[c] + 1) / weights[c], r, c))
    return alloc
