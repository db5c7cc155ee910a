"""Constraints: images per pack and image tokens per pack, and exact FFD under them."""
from __future__ import annotations

from bisect import bisect_right
from typing import Any

import numpy as np

from pack.packing.counts import OverlongError, num_bins


def budget_columns(arr: np.ndarray, num_images: Any, image_tokens: Any, max_images: int | None,
                 max_image_tokens: int | None) -> tuple[np.ndarray, np.ndarray, int, int] | None:
    if max_images is None and max_image_tokens is None:
        return None
    n = arr.size
    big = 1 << 62

    def column(values: Any, name: str) -> np.ndarray:
        if values is None:
            raise ValueError(f"{name} is required with its per-pack budget")
        col = np.asarray(values)
        if col.shape != (n,):
            raise ValueError(f"{name} must have one entry per item ({n}), got shape {col.shape}")
        col = col.astype(np.int64)
        if n and col.min() < 0:
            raise ValueError(f"{name} must be >= 0")
        return col

    imgs = column(num_images, "num_images") if max_images is not None else np.zeros(n, dtype=np.int64)
    toks = column(image_tokens, "image_tokens") if max_image_tokens is not None else np.zeros(n, dtype=np.int64)
    ma = int(max_images) if max_images is not None else big
    mt = int(max_image_tokens) if max_image_tokens is not None else big
    if ma < 0 or mt < 0:
        raise ValueError("per-pack budgets must be >= 0")
    bad = (imgs > ma) | (toks > mt)
    if bad.any():
        raise OverlongError(f"{int(bad.sum())} items exceed a per-pack budget on their own "
                            f"(most images: {int(imgs.max())}, most image tokens: {int(toks.max())})")
    return imgs, toks, ma, mt


def respects_budgets(bins: np.ndarray, imgs: np.ndarray, toks: np.ndarray, ma: int, mt: int) -> bool:
    if bins.size == 0:
        return True
    nb = num_bins(bins)
    return bool(np.bincount(bins, weights=imgs, minlength=nb).max() <= ma and
                np.bincount(bins, weights=toks, minlength=nb).max() <= mt)


def budget_lower_bound(arr: np.ndarray, capacity: int, imgs: np.ndarray, toks: np.ndarray, ma: int, mt: int) -> int:
    lb = -(-int(arr.sum()) // capacity)
    if ma > 0:
        lb = max(lb, -(-int(imgs.sum()) // ma))
    if mt > 0:
        lb = max(lb, -(-int(toks.sum()) // mt))
    return lb


class _ItemTypes:
    """Distinct (length, image tokens, images) item types, sorted descending, with their counts.

    `order` is the item order (length, image tokens, images descending, ties by index) in which
    items are handed out; types are contiguous runs of it."""

    def __init__(self, arr: np.ndarray, imgs: np.ndarray, toks: np.ndarray):
        n = arr.size
        self.order = np.lexsort((np.arange(n), -imgs, -toks, -arr))
        keys = np.stack([arr[self.order], toks[self.order], imgs[self.order]], axis=1)
        change = np.ones(n, dtype=bool)
        change[1:] = np.any(keys[1:] != keys[:-1], axis=1)
        first = np.flatnonzero(change)
        self.counts: list[int] = np.diff(np.append(first, n)).tolist()
        self.length: list[int] = keys[first, 0].tolist()
        self.tokens: list[int] = keys[first, 1].tolist()
        self.images: list[int] = keys[first, 2].tolist()
        self.neg_length = [-x for x in self.length]          # ascending, for bisect


class _FitTree:
    """Segment tree of per-node minima of images and image tokens over the remaining types:
    "first remaining type at or after position s whose images and image tokens fit" in O(log T)
    (pruning on both minima, exact at the leaves)."""

    INF = 1 << 62

    def __init__(self, images: list[int], tokens: list[int]):
        self.T = len(images)
        size = 1
        while size < self.T:
            size <<= 1
        self.size = size
        self.mn_i = [self.INF] * (2 * size)
        self.mn_t = [self.INF] * (2 * size)
        self.mn_i[size:size + self.T] = images
        self.mn_t[size:size + self.T] = tokens
        for j in range(size - 1, 0, -1):
            self._pull(j)

    def _pull(self, i: int) -> None:
        mn_i, mn_t = self.mn_i, self.mn_t
        a, b = mn_i[2 * i], mn_i[2 * i + 1]
        mn_i[i] = a if a < b else b
        a, b = mn_t[2 * i], mn_t[2 * i + 1]
        mn_t[i] = a if a < b else b

    def remove(self, j: int) -> None:
        i = self.size + j
        self.mn_i[i] = self.INF
        self.mn_t[i] = self.INF
        i >>= 1
        while i:
            self._pull(i)
            i >>= 1

    def first_fit(self, s: int, ra: int, rt: int) -> int:
        if s >= self.T:
            return -1
        mn_i, mn_t, size = self.mn_i, self.mn_t, self.size
        i = s + size
        while True:
            if mn_i[i] <= ra and mn_t[i] <= rt:
                if i >= size:
                    return i - size
                i <<= 1
                continue
            while i & 1:
                i >>= 1
            if i == 0:
                return -1
            i += 1


def _fill_one_bin(types: _ItemTypes, tree: _FitTree, capacity: int, ma: int, mt: int
                  ) -> tuple[list[tuple[int, int]], int]:
    """One FFD bin as (type, copies) pairs, and how many times it repeats unchanged: as long as
    every type it took copies of still has that many items left."""
    tl, tt, ti, counts = types.length, types.tokens, types.images, types.counts
    r, ra, rt = capacity, ma, mt
    s = 0
    taken: list[tuple[int, int]] = []
    t = 1 << 62
    while True:
        s = max(s, bisect_right(types.neg_length, -r - 1) if r < capacity else 0)
        j = tree.first_fit(s, ra, rt)
        if j < 0:
            break
        L, It, Ii, c = tl[j], tt[j], ti[j], counts[j]
        m = c
        if L:
            m = min(m, r // L)
        if It:
            m = min(m, rt // It)
        if Ii:
            m = min(m, ra // Ii)
        if m >= c:
            m = c
            t = 1
        else:
            t = min(t, c // m)
        taken.append((j, m))
        r -= m * L
        rt -= m * It
        ra -= m * Ii
        s = j + 1
    return taken, t


def ffd_constrained(arr: np.ndarray, capacity: int, imgs: np.ndarray, toks: np.ndarray,
                    ma: int, mt: int) -> np.ndarray:
    """Exact FFD under three budgets (length, images, image tokens), bin by bin over item types.

    Types are distinct (length, image tokens, images), sorted descending; each bin is filled by
    ``_fill_one_bin`` and repeated in bulk while its counts last.
    """
    n = arr.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    types = _ItemTypes(arr, imgs, toks)
    tree = _FitTree(types.images, types.tokens)
    remaining = tree.T
    bins_of_type: list[list[tuple[int, int, int]]] = [[] for _ in range(tree.T)]   # (first bin, reps, per bin)
    nbins = 0
    while remaining:
        taken, t = _fill_one_bin(types, tree, capacity, ma, mt)
        for j, m in taken:
            types.counts[j] -= t * m
            bins_of_type[j].append((nbins, t, m))
            if types.counts[j] == 0:
                tree.remove(j)
                remaining -= 1
        nbins += t
    return _hand_out(types.order, bins_of_type)


def _hand_out(order: np.ndarray, bins_of_type: list[list[tuple[int, int, int]]]) -> np.ndarray:
    """Items of each type, in sorted order, go to that type's bins in bin order."""
    out = np.empty(order.size, dtype=np.int64)
    pos_bins = np.empty(order.size, dtype=np.int64)
    ptr = 0
    for entries in bins_of_type:
        for b0, reps, m in entries:
            k = reps * m
            pos_bins[ptr:ptr + k] = b0 + np.arange(k) // m
            ptr += k
    out[order] = pos_bins
    return out
