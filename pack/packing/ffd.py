"""Exact first-fit-decreasing over the counts of each length (see the package docstring)."""
from __future__ import annotations

from typing import Any

import numpy as np

from pack.packing.constrained import budget_columns, ffd_constrained
from pack.packing.counts import AvailableLengths, expand_entries, validate_lengths


def first_fit_decreasing(lengths: Any, capacity: int, *, num_images: Any = None, image_tokens: Any = None,
                         max_images_per_pack: int | None = None,
                         max_image_tokens_per_pack: int | None = None) -> np.ndarray:
    """Exact FFD: the bin (numbered from 0) of every item, as an int64 array.

    Items are taken by length descending, ties by index; each goes to the first bin it fits in.
    With per-pack budgets (`max_images_per_pack` with `num_images`, `max_image_tokens_per_pack`
    with `image_tokens`) an item must fit every budget, and ties in length are broken by image
    tokens, then images (descending), then index. Raises OverlongError when items do not fit at all.
    """
    arr = validate_lengths(lengths, capacity)
    cons = budget_columns(arr, num_images, image_tokens, max_images_per_pack, max_image_tokens_per_pack)
    if cons is not None:
        return ffd_constrained(arr, capacity, *cons)
    return ffd_counts(arr, int(capacity))



def ffd_counts(arr: np.ndarray, capacity: int) -> np.ndarray:
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    cnt_np = np.bincount(arr, minlength=capacity + 1)
    cnt = cnt_np.tolist()
    S = AvailableLengths(cnt_np > 0)
    pred = S.pred
    ev: list[int] = []
    eb: list[int] = []
    et: list[int] = []
    em: list[int] = []
    nbins = 0
    C = capacity
    while S:
        r = C
        cap = C
        pat_v: list[int] = []
        pat_m: list[int] = []
        t = 1 << 62
        while True:
            v = pred(r if r < cap else cap)     # largest length that fits, not yet visited in this bin
            if v == 0:
                break
            c = cnt[v]
            m = r // v
            if m >= c:
                m = c
                t = 1
            else:
                q = c // m
                if q < t:
                    t = q
            pat_v.append(v)
            pat_m.append(m)
            r -= m * v
            cap = v - 1
            if r < S.lo:
                break
        # apply t copies of this bin
        for v, m in zip(pat_v, pat_m):
            c = cnt[v] - t * m
            cnt[v] = c
            ev.append(v)
            eb.append(nbins)
            et.append(t)
            em.append(m)
            if c == 0:
                S.remove(v)
        nbins += t
    return expand_entries(arr, capacity, ev, eb, et, em)
