"""Packing plans: which pack (bin) every sample goes to.

Modules: ``counts`` (the shared machinery: validation, the set of available lengths, expanding
bulk bin entries to items), ``ffd`` (exact first-fit-decreasing), ``plan`` (the default planner with
bin completion), ``constrained`` (FFD under per-pack image budgets), ``stats`` (fill numbers).

Why this is fast in pure Python + numpy: lengths are integers no larger than the capacity, and a
million samples have only hundreds to tens of thousands of *distinct* lengths. Both planners work on
the counts of each length, not on items:

* First-fit-decreasing is the same as filling bins one after the other, each time scanning the
  remaining items largest-first and taking every item that still fits (an item goes to the first
  bin it fits in either way). With counts, filling one bin is a handful of steps — "largest length
  <= room that is still available, take room // length copies" — and a bin that came out a certain
  way comes out the same way again as long as the counts it relied on last, so it is repeated in
  bulk. Items of equal length go to bins in index order, so the result is exactly FFD's (tests check
  it against a naive O(n * bins) FFD).
* ``plan_packs`` fills bins the same way but finishes each one exactly when it can: it stops the
  largest-first phase before the room drops below what two items can fill, never leaves a gap
  smaller than the smallest available item, and closes the bin with one or two items whose lengths
  sum to exactly the room (bin completion). On caption-like data this removes most of FFD's padding.
  It is compared with FFD and the smaller plan wins, so it never uses more bins.

Constraints (images per pack, image tokens per pack) make items differ by more than length; the
constrained FFD works on distinct (length, image tokens, images) types with a min-segment-tree to
find the first type that fits all budgets.

Cost, with n items and capacity L: a stable sort (radix for lengths below 2**16), then at most one
step per (distinct bin, length in it) — never more than n steps — each a near-constant-time
predecessor query on the set of lengths still available (path-compressed union-find over 0..L):
O(n log n + L) overall, ~0.05-0.2 s for 1M items. The planner adds, per distinct bin, at most one
vectorised pair scan over the lengths.
"""
from __future__ import annotations

from pack.packing.counts import OverlongError
from pack.packing.ffd import first_fit_decreasing
from pack.packing.plan import plan_packs
from pack.packing.stats import PackStats, lower_bound, pack_stats

__all__ = ["OverlongError", "PackStats", "first_fit_decreasing", "lower_bound", "pack_stats", "plan_packs"]
