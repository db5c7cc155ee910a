"""Packing speed and quality at 1M samples: ours beside the packers of popular trainers, one table.

Peers (their packing algorithm, reimplemented where the package cannot be installed here):
* LLaMA-Factory ``greedy_knapsack`` (src/llamafactory/data/processor/processor_utils.py): sorted
  Python list, bisect for the largest fitting length, ``list.pop``. Exact FFD bins. Reimplemented
  line for line (LLaMA-Factory is not a dependency); run at full size.
* TRL ``_pack_bfd`` (trl 1.16, trl/data_utils.py): best-fit-decreasing with a segment tree over
  remaining space. Reimplemented line for line (trl needs datasets/accelerate, not installed); run on
  a subsample and extrapolated linearly (it is O(n log L)).
* ``binpacking.to_constant_volume`` (PyPI, installed; least-loaded-fit decreasing, O(n * bins)) and a
  textbook O(n * bins) FFD (the shape of NeMo's and Open-Qwen2VL's Algorithm 1): subsample,
  extrapolated quadratically (both scan every open bin for every item).
* "chunked 1000": FFD run separately on consecutive chunks of 1000 samples (LLaMA-Factory's and TRL's
  default map batch size) — how many more packs chunking costs than one global plan.
"""
from __future__ import annotations

import bisect
import time
from collections import defaultdict, deque

import numpy as np

from distributions import DISTRIBUTIONS
from pack.packing import first_fit_decreasing, lower_bound, plan_packs
from tests.packing_oracle import naive_first_fit_decreasing
from run import format_table, quick

N = 100_000 if quick() else 1_000_000
TRL_SUBSAMPLE = 20_000 if quick() else 200_000
QUADRATIC_SUBSAMPLE = 3_000 if quick() else 12_000


# --- peers ----------------------------------------------------------------------------------------

def llamafactory_greedy_knapsack(numbers: list[int], capacity: int) -> list[list[int]]:
    """LLaMA-Factory's greedy_knapsack, reimplemented line for line."""
    numbers.sort()
    knapsacks = []
    while numbers:
        current_knapsack = []
        remaining_capacity = capacity
        while True:
            index = bisect.bisect(numbers, remaining_capacity)
            index = -1 if index == 0 else index - 1
            if index == -1:
                break
            remaining_capacity -= numbers[index]
            current_knapsack.append(numbers.pop(index))
        knapsacks.append(current_knapsack)
    return knapsacks


class _TrlSegmentTree:
    """TRL's _SegmentTree: max over [1, maxval], finds the smallest remaining space >= a length."""

    def __init__(self, maxval: int):
        self.maxval = maxval
        self.tree_size = 1 << (maxval - 1).bit_length()
        self.tree = [0] * (2 * self.tree_size)

    def add(self, val: int) -> None:
        i = self.tree_size + val - 1
        self.tree[i] = val
        while i > 1:
            i >>= 1
            left, right = self.tree[i << 1], self.tree[(i << 1) + 1]
            self.tree[i] = left if left >= right else right

    def remove(self, val: int) -> None:
        i = self.tree_size + val - 1
        self.tree[i] = 0
        while i > 1:
            i >>= 1
            left, right = self.tree[i << 1], self.tree[(i << 1) + 1]
            self.tree[i] = left if left >= right else right

    def search(self, val: int) -> int:
        i = 1
        while i < self.tree_size:
            i = i << 1 if self.tree[i << 1] >= val else (i << 1) + 1
        return self.tree[i]


def trl_bfd(lengths: np.ndarray, seq_length: int) -> list[dict]:
    """TRL's _pack_bfd binning loop (sort with Arrow as TRL does, then best fit)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    ids = np.arange(len(lengths))
    st = pc.make_struct(pa.array(lengths), pa.array(ids))
    st = st.sort("descending", by=0)
    tree = _TrlSegmentTree(seq_length)
    tree.add(seq_length)
    space_to_bin: dict[int, deque] = defaultdict(deque)
    bins: list[dict] = []
    for length, idx in zip(st.field(0).to_numpy(), st.field(1).to_numpy()):
        space = tree.search(length)
        if space < seq_length:
            b = space_to_bin[space].popleft()
        else:
            b = {"ids": [], "length": 0}
            bins.append(b)
        b["ids"].append(idx)
        b["length"] += length
        if space < seq_length and not space_to_bin[space]:
            tree.remove(space)
        space = space - length
        space_to_bin[space].append(b)
        if space > 0:
            tree.add(space)
    return bins


def binpacking_peer(lengths: np.ndarray, capacity: int) -> int:
    import binpacking
    return len(binpacking.to_constant_volume(lengths.tolist(), capacity))


# --- measurement ------------------------------------------------------------------------------

def timed(fn, *args, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, out


def human(seconds: float) -> str:
    if seconds < 120:
        return f"~{seconds:.1f} s"
    if seconds < 7200:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


def nbins(bins: np.ndarray) -> int:
    return int(bins.max()) + 1


def main() -> None:
    rows = []
    checks = []
    for d in DISTRIBUTIONS:
        x = d.make(N, 0)
        L = d.capacity
        total = int(x.sum())
        lb = lower_bound(x, L)

        def fill(packs: int, tokens: int = total) -> str:
            return f"{100 * tokens / (packs * L):.2f}%"

        t_ffd, ffd = timed(first_fit_decreasing, x, L, repeat=3)
        t_plan, plan = timed(plan_packs, x, L, repeat=3)
        f_bins, p_bins = nbins(ffd), nbins(plan)
        assert np.bincount(plan, weights=x).max() <= L and np.bincount(ffd, weights=x).max() <= L
        rows.append([d.name, L, "mmcurate first_fit_decreasing (exact FFD)", f"{N:,}", f"{t_ffd:.3f}", f"{f_bins:,}",
                     fill(f_bins), "0", f"lower bound {lb:,}"])
        rows.append([d.name, L, "mmcurate plan_packs (default)", f"{N:,}", f"{t_plan:.3f}", f"{p_bins:,}",
                     fill(p_bins), f"{p_bins - f_bins:+,}", f"{p_bins - lb:+,} over lower bound"])
        checks.append((d.name, t_ffd, t_plan, p_bins <= f_bins, 100 * total / (p_bins * L)))

        t_lf, ks = timed(llamafactory_greedy_knapsack, x.tolist(), L)
        rows.append([d.name, L, "LLaMA-Factory greedy_knapsack (reimpl.)", f"{N:,}", f"{t_lf:.3f}", f"{len(ks):,}",
                     fill(len(ks)), f"{len(ks) - f_bins:+,}", f"ours {t_lf / t_plan:.0f}x faster"])

        sub = x[:TRL_SUBSAMPLE]
        t_trl, tb = timed(trl_bfd, sub, L)
        sub_ffd = nbins(first_fit_decreasing(sub, L))
        est = t_trl * N / sub.size
        rows.append([d.name, L, "TRL _pack_bfd (reimpl.)", f"{sub.size:,}", human(est), f"{len(tb):,}",
                     fill(len(tb), int(sub.sum())), f"{len(tb) - sub_ffd:+,}",
                     f"{t_trl:.2f}s measured, x{N // sub.size} linear"])

        q = x[:QUADRATIC_SUBSAMPLE]
        q_ffd = nbins(first_fit_decreasing(q, L))
        t_bp, bp = timed(binpacking_peer, q, L)
        scale = (N / q.size) ** 2
        rows.append([d.name, L, "binpacking.to_constant_volume", f"{q.size:,}", human(t_bp * scale),
                     f"{bp:,}", fill(bp, int(q.sum())), f"{bp - q_ffd:+,}", f"{t_bp:.2f}s measured, n^2 scaling"])
        t_nv, nv = timed(naive_first_fit_decreasing, q, L)
        assert np.array_equal(nv, first_fit_decreasing(q, L))
        rows.append([d.name, L, "textbook FFD O(n*bins) (NeMo/Open-Qwen2VL shape)", f"{q.size:,}",
                     human(t_nv * scale), f"{nbins(nv):,}", fill(nbins(nv), int(q.sum())), "+0",
                     f"{t_nv:.2f}s measured, n^2 scaling"])

        chunk = 1000
        t0 = time.perf_counter()
        chunked = sum(nbins(first_fit_decreasing(x[i:i + chunk], L)) for i in range(0, N, chunk))
        t_ch = time.perf_counter() - t0
        rows.append([d.name, L, "FFD in chunks of 1000 (LF/TRL default)", f"{N:,}", f"{t_ch:.3f}", f"{chunked:,}",
                     fill(chunked), f"{chunked - f_bins:+,}", f"{100 * (chunked / f_bins - 1):+.2f}% packs vs global"])

    print(format_table(["distribution", "L", "packer", "n measured", f"seconds for {N:,}", "packs", "fill",
                        "packs vs FFD", "note"], rows))
    print()
    print(partition_cost_table())
    print()
    print(f"targets: {N:,} packed in < 0.5 s per distribution on one core, packs <= FFD, fill >= 99.5% on caption-like;"
          " '~' marks a time extrapolated from the measured subsample")
    for name, t_ffd, t_plan, not_worse, fill_pct in checks:
        ok = t_plan < 0.5 and not_worse and (name != "caption-like" or fill_pct >= 99.5)
        print(f"  {name:<14} FFD {t_ffd:.3f}s  plan {t_plan:.3f}s  plan<=FFD {not_worse}  fill {fill_pct:.2f}%  "
              f"{'MET' if ok else 'MISSED'}")


def partition_cost_table(n: int = 5 * N, partition_rows: int = N) -> str:
    """The fill the pack stage gives up by packing hash partitions of `partition_rows` samples apart
    (how it scales past one machine) instead of one global plan over all `n` samples. The scale
    issue's target: within 0.05 percentage points."""
    rows = []
    for d in DISTRIBUTIONS:
        x = d.make(n, 1)
        L = d.capacity
        parts = max(1, -(-n // partition_rows))
        part = np.random.default_rng(7).integers(0, parts, n)   # a seeded hash partition, as the stage's
        t0 = time.perf_counter()
        global_packs = nbins(plan_packs(x, L))
        t_global = time.perf_counter() - t0
        t0 = time.perf_counter()
        split_packs = sum(nbins(plan_packs(x[part == k], L)) for k in range(parts))
        t_split = time.perf_counter() - t0
        total = float(x.sum())
        g, sp = 100 * total / (global_packs * L), 100 * total / (split_packs * L)
        rows.append([d.name, f"{n:,}", parts, f"{global_packs:,}", f"{split_packs:,}", f"{g:.3f}%", f"{sp:.3f}%",
                     f"{g - sp:.4f}", f"{t_global:.2f} / {t_split:.2f}", "MET" if g - sp <= 0.05 else "MISSED"])
    return format_table(["distribution", "samples", "partitions", "packs (global)", "packs (partitioned)",
                         "fill global", "fill partitioned", "fill lost (pp)", "seconds global / partitioned",
                         "<= 0.05 pp"], rows)


if __name__ == "__main__":
    main()
