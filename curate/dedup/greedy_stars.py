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
leave rows undecided loop over further centres. With at most ``BRUTE_FORCE_ROWS`` rows undecided a
centre is compared with all of them; beyond that (a long chain, a giant component) only with the
undecided rows that share an LSH band key or the content hash with it (``keys``: the same buckets
that built the graph), so a chain of n rows costs about n x bucket size, not n^2. A component stops
once ``max_pairs`` comparisons would be exceeded: its rows still undecided are KEPT
(``unverified``), never removed unverified — the guarantee holds, recall drops on that component
only, and the report counts both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# close(a, b): for index pairs (a[i], b[i]): within the threshold, and the verified value
Closeness = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
# keys(rows) -> (len(rows) x k) uint64: rows sharing any key are candidates for each other
Keys = Callable[[np.ndarray], np.ndarray]
CHUNK = 16_384     # pairs per call of a Closeness (a text pair gathers 2 x 512 bytes of signature)
BRUTE_FORCE_ROWS = 512   # undecided rows up to which a centre is compared with all of them


@dataclass
class Stars:
    """Per row (indices into the rows given to ``greedy_stars``)."""
    centre: np.ndarray          # the kept row it is close to (itself when kept)
    value: np.ndarray           # verified distance/similarity to its centre (NaN for kept rows)
    unverified: np.ndarray      # kept because the component's comparison budget ran out
    component_size: np.ndarray  # rows in its connected component
    capped_components: int      # components that hit the budget


def greedy_stars(component: np.ndarray, order: np.ndarray, close: Closeness, max_pairs: int,
                 keys: Keys | None = None) -> Stars:
    """Star clustering of every component at once; ``order`` sorts the rows by (component, survivor
    rule), best first within a component; ``keys`` (optional) narrows large undecided sets to candidates."""
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
            capped += _cover(pending, centre, value, unverified, close, max_pairs - int(counts[r] - 1), keys)
    return Stars(centre, value, unverified, size, capped)


def _chunked(close: Closeness, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``close`` over CHUNK pairs at a time: the signatures it gathers stay a few MB."""
    ok, val = np.zeros(a.shape[0], dtype=bool), np.full(a.shape[0], np.nan)
    for lo in range(0, a.shape[0], CHUNK):
        ok[lo:lo + CHUNK], val[lo:lo + CHUNK] = close(a[lo:lo + CHUNK], b[lo:lo + CHUNK])
    return ok, val


def _cover(pending: np.ndarray, centre: np.ndarray, value: np.ndarray, unverified: np.ndarray,
           close: Closeness, budget: int, keys: Keys | None) -> int:
    """Greedy centres over one component's undecided rows (in survivor order); 1 if the budget ran out."""
    if keys is not None and pending.shape[0] > BRUTE_FORCE_ROWS:
        return _cover_by_keys(pending, centre, value, unverified, close, budget, keys)
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


def _cover_by_keys(pending: np.ndarray, centre: np.ndarray, value: np.ndarray, unverified: np.ndarray,
                   close: Closeness, budget: int, keys: Keys) -> int:
    """``_cover`` comparing each centre only with the undecided rows that share a key with it."""
    m = pending.shape[0]
    key_matrix = keys(pending)
    width = key_matrix.shape[1]
    flat = key_matrix.ravel()
    by_key = np.argsort(flat, kind="stable")
    sorted_keys, owner = flat[by_key], by_key // width          # owner: position in `pending`
    undecided = np.ones(m, dtype=bool)
    for p in range(m):
        if not undecided[p]:
            continue
        undecided[p] = False                # a centre: kept
        lo = np.searchsorted(sorted_keys, key_matrix[p], side="left")
        hi = np.searchsorted(sorted_keys, key_matrix[p], side="right")
        lengths = hi - lo
        if not lengths.any():
            continue
        at = np.repeat(lo - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(int(lengths.sum()))
        cand = np.unique(owner[at])
        cand = cand[undecided[cand]]
        if cand.shape[0] == 0:
            continue
        if cand.shape[0] > budget:
            unverified[pending[undecided]] = True
            return 1
        budget -= cand.shape[0]
        ok, val = _chunked(close, np.full(cand.shape[0], pending[p]), pending[cand])
        centre[pending[cand[ok]]] = pending[p]
        value[pending[cand[ok]]] = val[ok]
        undecided[cand[ok]] = False
    return 0
