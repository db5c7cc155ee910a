"""The mixture as a distributed algorithm: partial aggregates -> a small plan -> a per-row decision.

Every sample gets a seeded hash rank (blake2b of the key, keyed by the recipe seed), so which samples
are kept or repeated depends on the keys and the seed only — never on row order or partitioning.
For each leaf group ``g`` with available weight ``W_g`` (samples or tokens) and budget ``B_g`` the
plan is a repeat factor ``f_g = B_g / W_g`` (capped at ``max_repeat``): every row gets
``floor(f_g)`` copies, plus one more when its rank is below a threshold that selects a weight of
``(f_g - floor(f_g)) * W_g``. Down-sampling is the case ``floor(f_g) = 0``.

The threshold is found without holding rows: pass 1 aggregates, per group, a histogram of weight
over ``HIST_BINS`` rank bins (``partial_stats`` per batch, ``combine_stats`` on the driver); the bin
where the cumulative weight crosses the target is then refined exactly by pass 2, which collects only
the (rank, weight) pairs inside that one bin per group (``partial_boundary`` / ``combine_boundary``),
about ``W_g / HIST_BINS`` rows. ``apply_plan`` is then a per-row map. The result is row-exact: the
selected weight is the closest achievable to the target, independent of how batches were cut.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from curate.mixture.targets import UNLISTED, Targets

HIST_BITS = 12
HIST_BINS = 1 << HIST_BITS          # 4096 rank bins per group: 32 KiB of float64 per group
_SHIFT = np.uint64(64 - HIST_BITS)
RANK_SPACE = 1 << 64


def seeded_rank(keys: list[str], seed: int) -> np.ndarray:
    """A permutation key per sample: blake2b(seed, key) as uint64 — stable across runs and machines."""
    salt = seed.to_bytes(8, "little", signed=True)
    return np.array([int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8, key=salt).digest(), "little")
                     for k in keys], dtype=np.uint64)


@dataclass
class GroupStats:
    """Pass-1 aggregate of one group: sizes in both units and the weight histogram over rank bins."""
    samples: int = 0
    tokens: int = 0
    weight: float = 0.0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, dtype=np.float64))

    def add(self, other: "GroupStats") -> None:
        self.samples += other.samples
        self.tokens += other.tokens
        self.weight += other.weight
        self.hist += other.hist


def partial_stats(labels: np.ndarray, ranks: np.ndarray, weights: np.ndarray,
                  tokens: np.ndarray | None) -> dict[str, GroupStats]:
    """Pass 1 on one batch. `weights` are in the mixture's unit; `tokens` (or None) for the report.
    One bincount over (group, bin) pairs: O(rows), whatever the number of groups."""
    names, codes = np.unique(labels, return_inverse=True)
    bins = (ranks >> _SHIFT).astype(np.int64)
    k = names.size
    hist = np.bincount(codes * HIST_BINS + bins, weights=weights, minlength=k * HIST_BINS).reshape(k, HIST_BINS)
    samples = np.bincount(codes, minlength=k)
    tok = np.bincount(codes, weights=tokens, minlength=k) if tokens is not None else np.zeros(k)
    return {str(g): GroupStats(samples=int(samples[i]), tokens=int(tok[i]), weight=float(hist[i].sum()),
                               hist=hist[i].astype(np.float64)) for i, g in enumerate(names)}


def combine_stats(parts: list[dict[str, GroupStats]]) -> dict[str, GroupStats]:
    total: dict[str, GroupStats] = {}
    for part in parts:
        for g, st in part.items():
            total.setdefault(g, GroupStats()).add(st)
    return total


@dataclass(frozen=True)
class GroupPlan:
    """What happens to one group: `full` copies of every row, one more below `threshold` (uint64 rank)."""
    full: int
    threshold: int
    available: float
    target: float          # weight the recipe asks for (share x total)
    planned: float         # weight the plan gives (capped by max_repeat)
    cap: float
    short: bool            # the cap keeps this group below its share

    def copies(self, ranks: np.ndarray) -> np.ndarray:
        extra = (ranks < np.uint64(self.threshold)) if self.threshold < RANK_SPACE else np.ones(ranks.size, bool)
        return self.full + extra.astype(np.int64)


@dataclass(frozen=True)
class Budget:
    """Pass-1 result: per group the full copies and the weight still to select by rank."""
    total: float
    full: dict[str, int]
    remainder: dict[str, float]
    targets: dict[str, float]
    planned: dict[str, float]
    short: dict[str, bool]


def budget(targets: Targets, stats: dict[str, GroupStats], total: float | None) -> Budget:
    """Split the target total over the leaf groups; cap each by its max_repeat."""
    avail = {g: (stats[g].weight if g in stats else 0.0) for g in targets.shares}
    if total is None:
        # The largest total every (non-empty) group reaches within its cap: today's behaviour at cap 1.
        feasible = [avail[g] * targets.max_repeat[g] / r for g, r in targets.shares.items() if avail[g] > 0]
        total = min(feasible) if feasible else 0.0
    full, rem, tgt, planned, short = {}, {}, {}, {}, {}
    for g, share in targets.shares.items():
        tgt[g] = share * total
        cap_weight = avail[g] * targets.max_repeat[g]
        short[g] = tgt[g] > cap_weight * (1 + 1e-9) or (tgt[g] > 0 and avail[g] == 0)
        planned[g] = min(tgt[g], cap_weight)
        factor = planned[g] / avail[g] if avail[g] > 0 else 0.0
        full[g] = int(math.floor(factor + 1e-12))
        rem[g] = max(0.0, planned[g] - full[g] * avail[g])
    return Budget(float(total), full, rem, tgt, planned, short)


def boundary_bins(b: Budget, stats: dict[str, GroupStats]) -> tuple[dict[str, int], dict[str, float]]:
    """Per group needing a partial copy: the rank bin where the remainder is crossed, and the weight
    of all bins before it. Groups whose remainder lands on a bin edge need no pass 2."""
    bins, before = {}, {}
    for g, rem in b.remainder.items():
        if rem <= 0 or g not in stats:
            continue
        cum = np.cumsum(stats[g].hist)
        k = int(np.searchsorted(cum, rem, side="left"))
        k = min(k, HIST_BINS - 1)
        bins[g], before[g] = k, float(cum[k - 1]) if k else 0.0
    return bins, before


def partial_boundary(labels: np.ndarray, ranks: np.ndarray, weights: np.ndarray,
                     bins: dict[str, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pass 2 on one batch: (rank, weight) of the rows inside each group's boundary bin."""
    rank_bins = (ranks >> _SHIFT).astype(np.int64)
    out = {}
    for g, k in bins.items():
        m = (labels == g) & (rank_bins == k)
        if m.any():
            out[g] = (ranks[m], weights[m])
    return out


def combine_boundary(parts: list[dict[str, tuple[np.ndarray, np.ndarray]]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out: dict[str, tuple[list, list]] = {}
    for part in parts:
        for g, (r, w) in part.items():
            out.setdefault(g, ([], []))
            out[g][0].append(r)
            out[g][1].append(w)
    return {g: (np.concatenate(r), np.concatenate(w)) for g, (r, w) in out.items()}


def finish_plan(b: Budget, targets: Targets, stats: dict[str, GroupStats], bins: dict[str, int],
                before: dict[str, float], boundary: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, GroupPlan]:
    """Exact thresholds: inside the boundary bin, the rank prefix whose weight is closest to the
    remainder (ties: the smaller selection)."""
    plans = {}
    for g in targets.shares:
        threshold = 0
        if g in bins:
            threshold = bins[g] << (64 - HIST_BITS)
            ranks, weights = boundary.get(g, (np.zeros(0, np.uint64), np.zeros(0)))
            order = np.argsort(ranks, kind="stable")
            ranks, weights = ranks[order], weights[order]
            cum = before[g] + np.r_[0.0, np.cumsum(weights)]
            best = int(np.argmin(np.abs(cum - b.remainder[g])))
            if best > 0:
                threshold = int(ranks[best - 1]) + 1
        avail = stats[g].weight if g in stats else 0.0
        plans[g] = GroupPlan(full=b.full[g], threshold=threshold, available=avail, target=b.targets[g],
                             planned=b.planned[g], cap=targets.max_repeat[g], short=b.short[g])
    return plans


def apply_plan(plans: dict[str, GroupPlan], labels: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Per-row map: how many times each row appears in the output (0: dropped; unlisted rows: 0)."""
    names, codes = np.unique(labels, return_inverse=True)
    full = np.array([plans[g].full if g in plans else 0 for g in names], dtype=np.int64)
    thr = [plans[g].threshold if g in plans else 0 for g in names]
    always = np.array([t >= RANK_SPACE for t in thr], dtype=bool)
    thresholds = np.array([min(t, RANK_SPACE - 1) for t in thr], dtype=np.uint64)
    extra = (ranks < thresholds[codes]) | always[codes]
    return np.where(labels == UNLISTED, 0, full[codes] + extra.astype(np.int64))


def plan_mixture(targets: Targets, labels: np.ndarray, ranks: np.ndarray, weights: np.ndarray,
                 tokens: np.ndarray | None, total: float | None, batch_rows: int = 65536
                 ) -> tuple[dict[str, GroupPlan], dict[str, GroupStats], Budget]:
    """Both passes over in-memory columns cut into `batch_rows` slices (the shape the distributed
    runner will call them in); the plan does not depend on `batch_rows`."""
    cuts = [slice(i, i + batch_rows) for i in range(0, labels.size, batch_rows)] or [slice(0, 0)]
    stats = combine_stats([partial_stats(labels[s], ranks[s], weights[s], None if tokens is None else tokens[s])
                           for s in cuts])
    b = budget(targets, stats, total)
    bins, before = boundary_bins(b, stats)
    boundary = combine_boundary([partial_boundary(labels[s], ranks[s], weights[s], bins) for s in cuts])
    return finish_plan(b, targets, stats, bins, before, boundary), stats, b


def repeat_ordinal(ordinal: int, n: int) -> int:
    """The `_ordinal` of the n-th repeat of a row: negative (ingest ordinals are >= 0, so no clash with
    an original), derived from (ordinal, n) alone so any worker computes it without coordination.
    A clash between two repeats (probability ~ R^2 / 2^63) is caught by the runner's check."""
    h = hashlib.blake2b(f"{ordinal}#r{n}".encode(), digest_size=8).digest()
    return -1 - (int.from_bytes(h, "little") & ((1 << 62) - 1))


def repeat_key(key: str, n: int) -> str:
    return f"{key}#r{n}"
