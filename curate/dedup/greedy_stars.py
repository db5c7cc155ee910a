"""Survivors inside connected components: greedy star clustering, so near-duplicate groups never chain.

A connected component of the candidate graph (single linkage) can be a chain A~B~C~...: each item
close to the next, the ends far apart (edits of edits, a meme and its variants). Keeping one item
per component removes items that are nowhere near it. Instead, inside each component:

1. rows are ordered by the survivor rule (best quality, then smallest content hash, then key);
2. the first row not yet decided is KEPT; every undecided row within the threshold of it
   (verified on the signatures: Hamming bits, estimated Jaccard, equal content hash) is removed,
   naming it and the verified distance;
3. repeat on what is left.

Why this rule: it is the survivor rule of the stages unchanged (the best copy still wins) with
one guarantee added — every removed row is within the threshold of a row that is kept — and it
needs no all-pairs matrix: one vectorised comparison of a centre against the undecided rows. On a
tight group (every member close to the best one, the planted case and the common one) it makes
exactly the decision single-survivor components made. It is Hartigan's leader algorithm (1975)
run in survivor order: a row becomes a centre iff no better centre covers it, and a removed row
names the best centre that covers it.

Cost. The first centre of every component is compared with all of its members at once, for all
components together (linear, as choosing one survivor per component was). Only components that
leave rows undecided loop over further centres; each further centre costs the undecided rows it is
compared with, and a component stops once ``max_pairs`` comparisons would be exceeded: its rows
still undecided are KEPT (``unverified``), never removed unverified — the guarantee holds, recall
drops on that component only, and the report counts both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# close(a, b): for index pairs (a[i], b[i]): within the threshold, and the verified value
Closeness = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
CHUNK = 16_384     # pairs per call of a Closeness (a text pair gathers 2 x 512 bytes of signature)


@dataclass
class Stars:
    """Per row (indices into the rows given to ``greedy_stars``)."""
    centre: np.ndarray          # the kept row it is close to (itself when kept)
    value: np.ndarray           # verified distance/similarity to its centre (NaN for kept rows)
    unverified: np.ndarray      # kept because the component's comparison budget ran out
    component_size: np.ndarray  # rows in its connected component
    capped_components: int      # components that hit the budget


def greedy_stars(component: np.ndarray, order: np.ndarray, close: Closeness, max_pairs: int) -> Stars:
    """Star clustering of every component at once; ``order`` sorts the rows by (component, survivor
    rule), best first within a component."""
    n = component.shape[0]
    centre = np.arange(n, dtype=np.int64)
    value = np.full(n, np.nan)
    unverified = np.zeros(n, dtype=bool)
    size = np.ones(n, dtype=np.int64)
    if n == 0:
        return Stars(centre, value, unverified, size, 0)
    comp = component[order]
    first = np.r_[True, comp[1:] != comp[:-1]]
    run = np.cumsum(first) - 1
    top = order[np.flatnonzero(first)][run]            # per sorted position: its component's best row
    counts = np.bincount(run)
    size[order] = counts[run]
    rest = ~first
    members = order[rest]
    ok, val = _chunked(close, top[rest], members)
    centre[members[ok]] = top[rest][ok]
    value[members[ok]] = val[ok]
    # components with rows the best one does not cover: further centres, one component at a time
    left = np.zeros(n, dtype=bool)
    left[np.flatnonzero(rest)[~ok]] = True              # sorted positions still undecided
    capped = 0
    if left.any():
        starts = np.flatnonzero(first)
        ends = np.r_[starts[1:], n]
        for r in np.unique(run[left]):
            pending = order[starts[r]:ends[r]][left[starts[r]:ends[r]]]
            capped += _cover(pending, centre, value, unverified, close, max_pairs - int(counts[r] - 1))
    return Stars(centre, value, unverified, size, capped)


def _chunked(close: Closeness, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``close`` over CHUNK pairs at a time: the signatures it gathers stay a few MB."""
    ok, val = np.zeros(a.shape[0], dtype=bool), np.full(a.shape[0], np.nan)
    for lo in range(0, a.shape[0], CHUNK):
        ok[lo:lo + CHUNK], val[lo:lo + CHUNK] = close(a[lo:lo + CHUNK], b[lo:lo + CHUNK])
    return ok, val


def _cover(pending: np.ndarray, centre: np.ndarray, value: np.ndarray, unverified: np.ndarray,
           close: Closeness, budget: int) -> int:
    """Greedy centres over one component's undecided rows (in survivor order); 1 if the budget ran out."""
    while pending.shape[0]:
        head, others = pending[0], pending[1:]
        if others.shape[0] == 0:
            return 0
        if others.shape[0] > budget:
            unverified[others] = True       # kept: nothing verified them close to a kept row
            return 1
        budget -= others.shape[0]
        ok, val = _chunked(close, np.full(others.shape[0], head), others)
        centre[others[ok]] = head
        value[others[ok]] = val[ok]
        pending = others[~ok]
    return 0
