"""Forming global steps from packs that are alike in both costs (pack.balance.plan, steps 1-2).

Costs are compared in log space (the balance metric is a ratio) and grouped by fixed-size
microaggregation (MDAV) in chunks along a Hilbert curve: alike packs balance whatever the rank
assignment, and with one micro-batch per rank this is the only lever.
"""
from __future__ import annotations

import numpy as np


def normalize(costs: np.ndarray) -> np.ndarray:
    """Divide each column by its mean (a column of zeros stays zero)."""
    mean = costs.mean(axis=0) if costs.shape[0] else np.zeros(costs.shape[1])
    safe = np.where(mean > 0, mean, 1.0)
    return costs / safe


def log_coordinates(x: np.ndarray, floor: float = 0.02) -> np.ndarray:
    """Coordinates in which distance means *relative* difference (the balance metric is a ratio).

    ``log1p(x / floor)`` on mean-normalized costs: values far below ``floor`` × the mean (a text-only
    pack's ViT cost, a tiny image) all look alike, because differences there cost no time.
    """
    return np.log1p(np.maximum(x, 0.0) / floor)


def hilbert_order(u: np.ndarray, bits: int = 16) -> np.ndarray:
    """Stable permutation of 2-D points along a Hilbert curve (neighbours on the curve are near)."""
    n = u.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    lo, span = u.min(axis=0), np.ptp(u, axis=0)
    q = ((u - lo) / np.where(span > 0, span, 1.0) * ((1 << bits) - 1)).astype(np.int64)
    x, y = q[:, 0].copy(), q[:, 1].copy()
    d = np.zeros(n, dtype=np.int64)
    s = 1 << (bits - 1)
    while s > 0:
        rx = (x & s) > 0
        ry = (y & s) > 0
        d += s * s * ((3 * rx.astype(np.int64)) ^ ry.astype(np.int64))
        flip = ~ry & rx
        x = np.where(flip, s - 1 - x, x)
        y = np.where(flip, s - 1 - y, y)
        swap = ~ry
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        s >>= 1
    return np.lexsort((np.arange(n), d))


def group_steps(x: np.ndarray, group: int, chunk_steps: int = 256) -> np.ndarray:
    """Partition rows into steps of exactly ``group`` rows that are alike in every cost column.

    Fixed-size microaggregation (MDAV): repeatedly take the remaining point farthest from the
    remaining centroid and group it with its ``group - 1`` nearest points, in log coordinates. To stay
    near-linear on millions of packs, points are walked along a Hilbert curve in chunks of
    ``chunk_steps`` steps (each chunk is a compact region) and MDAV runs per chunk. MDAV's last groups
    in a chunk are its worst (the points nobody wanted); they are not committed but carried into the
    next chunk, where neighbours along the curve may match them. Returns (steps, group) row indices.
    """
    n = x.shape[0]
    if n % group:
        raise ValueError(f"{n} packs do not fill steps of {group}")
    if n == 0:
        return np.zeros((0, group), dtype=np.int64)
    u = log_coordinates(x)
    order = hilbert_order(u)
    per_chunk = chunk_steps * group
    carry_groups = max(1, chunk_steps // 8)
    out: list[np.ndarray] = []
    carried = np.zeros(0, dtype=np.int64)
    for start in range(0, n, per_chunk):
        rows = np.concatenate([carried, order[start:start + per_chunk]])
        grouped = rows[_mdav(u[rows], group)].reshape(-1, group)
        last = start + per_chunk >= n
        keep = grouped.shape[0] if last else max(0, grouped.shape[0] - carry_groups)
        out.append(grouped[:keep])
        carried = grouped[keep:].reshape(-1)
    return np.concatenate(out)


def _mdav(u: np.ndarray, group: int) -> np.ndarray:
    """Row order such that consecutive blocks of ``group`` are MDAV groups (deterministic)."""
    n = u.shape[0]
    remaining = np.arange(n)
    out = []
    while remaining.size > group:
        pts = u[remaining]
        centroid = pts.mean(axis=0)
        far = int(np.argmax(np.square(pts - centroid).sum(axis=1)))
        dist = np.square(pts - pts[far]).sum(axis=1)
        cand = np.argpartition(dist, group - 1)[:group]
        near = cand[np.lexsort((cand, dist[cand]))]
        out.append(remaining[near])
        mask = np.ones(remaining.size, dtype=bool)
        mask[near] = False
        remaining = remaining[mask]
    out.append(remaining)
    return np.concatenate(out)
