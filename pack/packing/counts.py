"""Shared machinery of the count-based planners: input validation, the set of lengths that still
have items (``AvailableLengths``) and the expansion of bulk bin entries into a bin per item."""
from __future__ import annotations

import numpy as np


class OverlongError(ValueError):
    """Some items are longer than the capacity (or exceed a per-pack budget on their own)."""



def validate_lengths(lengths: Any, capacity: int) -> np.ndarray:
    if int(capacity) != capacity or capacity <= 0:
        raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise ValueError("lengths must be one-dimensional")
    if arr.size and arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.floor(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"lengths must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"lengths must be >= 0; got {int(arr.min())}")
    over = arr > capacity
    if over.any():
        raise OverlongError(f"{int(over.sum())} items are longer than the capacity {capacity} "
                            f"(longest: {int(arr.max())})")
    return arr


def sorted_order(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Indices by length descending, ties by index (a stable radix sort when lengths fit 16 bits)."""
    key = capacity - lengths
    if capacity < (1 << 16):
        key = key.astype(np.uint16)
    return np.argsort(key, kind="stable")


def expand_entries(lengths: np.ndarray, capacity: int, ev: list[int], eb: list[int], et: list[int],
            em: list[int]) -> np.ndarray:
    """Turn bulk entries (value v: bins b..b+t-1 take m items each) into a bin per item.

    Items of one length are handed out in index order to the entries of that length in bin order.
    Zero-length items go to bin 0.
    """
    n = lengths.size
    out = np.zeros(n, dtype=np.int64)
    if not ev:
        return out
    v = np.asarray(ev, dtype=np.int64)
    b = np.asarray(eb, dtype=np.int64)
    t = np.asarray(et, dtype=np.int64)
    m = np.asarray(em, dtype=np.int64)
    o = np.lexsort((b, -v))
    v, b, t, m = v[o], b[o], t[o], m[o]
    sizes = t * m
    total = int(sizes.sum())
    order = sorted_order(lengths, capacity)
    entry = np.repeat(np.arange(v.size), sizes)
    start = np.cumsum(sizes) - sizes
    within = np.arange(total) - start[entry]
    out[order[:total]] = b[entry] + within // m[entry]
    return out



class AvailableLengths:
    """The lengths that still have items: largest <= x, smallest >= x, and removal, each in near
    constant amortised time (two path-compressed union-find forests over 0..capacity+1).

    A sorted list with bisect would cost O(D) per removal — quadratic when there are hundreds of
    thousands of distinct lengths (long contexts).
    """
    __slots__ = ("up", "down", "lo", "hi", "top")

    def __init__(self, present: np.ndarray):
        top = present.size                      # capacity + 1: the "none" answer of succ
        idx = np.arange(top + 1)
        p = np.zeros(top + 1, dtype=bool)
        p[:top] = present
        p[0] = False
        self.up = np.maximum.accumulate(np.where(p, idx, 0)).tolist()                   # 0: none
        self.down = np.minimum.accumulate(np.where(p, idx, top)[::-1])[::-1].tolist()   # top: none
        self.top = top
        self.lo = self.down[1] if top > 1 else top
        self.hi = self.up[top - 1]

    def __bool__(self) -> bool:
        return self.lo < self.top

    def pred(self, x: int) -> int:
        """Largest available length <= x (0: none)."""
        up = self.up
        if x >= self.top:
            x = self.top - 1
        elif x <= 0:
            return 0
        r = up[x]
        if up[r] == r:
            return r
        while up[r] != r:
            r = up[r]
        while up[x] != r:
            up[x], x = r, up[x]
        return r

    def succ(self, x: int) -> int:
        """Smallest available length >= x (self.top: none)."""
        down = self.down
        if x >= self.top:
            return self.top
        if x < 1:
            x = 1
        r = down[x]
        if down[r] == r:
            return r
        while down[r] != r:
            r = down[r]
        while down[x] != r:
            down[x], x = r, down[x]
        return r

    def remove(self, v: int) -> None:
        self.up[v] = v - 1
        self.down[v] = v + 1
        if v == self.lo:
            self.lo = self.succ(v + 1)
        if v == self.hi:
            self.hi = self.pred(v - 1)



def num_bins(bins: np.ndarray) -> int:
    return int(bins.max()) + 1 if bins.size else 0
