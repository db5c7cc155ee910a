"""Packing plans: which pack (bin) every sample goes to.

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

from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


class OverlongError(ValueError):
    """Some items are longer than the capacity (or exceed a per-pack budget on their own)."""


@dataclass(frozen=True)
class PackStats:
    """Fill numbers of a plan: the report of the `pack` stage uses these."""
    items: int
    packs: int
    capacity: int
    tokens: int
    lower_bound: int          # ceil(tokens / capacity): no plan can use fewer packs

    @property
    def fill(self) -> float:
        return self.tokens / (self.packs * self.capacity) if self.packs else 1.0

    @property
    def padding(self) -> float:
        return 1.0 - self.fill

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "packs": self.packs, "capacity": self.capacity, "tokens": self.tokens,
                "lower_bound": self.lower_bound, "fill": round(self.fill, 6), "padding": round(self.padding, 6),
                "packs_over_lower_bound": self.packs - self.lower_bound}


def pack_stats(lengths: Any, bins: np.ndarray, capacity: int) -> PackStats:
    lengths = np.asarray(lengths, dtype=np.int64)
    tokens = int(lengths.sum())
    packs = int(bins.max()) + 1 if bins.size else 0
    return PackStats(int(lengths.size), packs, int(capacity), tokens, -(-tokens // capacity) if tokens else 0)


def _validate(lengths: Any, capacity: int) -> np.ndarray:
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


def _sorted_order(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Indices by length descending, ties by index (a stable radix sort when lengths fit 16 bits)."""
    key = capacity - lengths
    if capacity < (1 << 16):
        key = key.astype(np.uint16)
    return np.argsort(key, kind="stable")


def _expand(lengths: np.ndarray, capacity: int, ev: list[int], eb: list[int], et: list[int],
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
    order = _sorted_order(lengths, capacity)
    entry = np.repeat(np.arange(v.size), sizes)
    start = np.cumsum(sizes) - sizes
    within = np.arange(total) - start[entry]
    out[order[:total]] = b[entry] + within // m[entry]
    return out


# =============================================================================================
# First-fit-decreasing
# =============================================================================================

def first_fit_decreasing(lengths: Any, capacity: int, *, num_images: Any = None, image_tokens: Any = None,
                         max_images_per_pack: int | None = None,
                         max_image_tokens_per_pack: int | None = None) -> np.ndarray:
    """Exact FFD: the bin (numbered from 0) of every item, as an int64 array.

    Items are taken by length descending, ties by index; each goes to the first bin it fits in.
    With per-pack budgets (`max_images_per_pack` with `num_images`, `max_image_tokens_per_pack`
    with `image_tokens`) an item must fit every budget, and ties in length are broken by image
    tokens, then images (descending), then index. Raises OverlongError when items do not fit at all.
    """
    arr = _validate(lengths, capacity)
    cons = _constraints(arr, num_images, image_tokens, max_images_per_pack, max_image_tokens_per_pack)
    if cons is not None:
        return _ffd_constrained(arr, capacity, *cons)
    return _ffd_counts(arr, int(capacity))


class _Available:
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


def _ffd_counts(arr: np.ndarray, capacity: int) -> np.ndarray:
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    cnt_np = np.bincount(arr, minlength=capacity + 1)
    cnt = cnt_np.tolist()
    S = _Available(cnt_np > 0)
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
    return _expand(arr, capacity, ev, eb, et, em)


# =============================================================================================
# The default planner: FFD-style filling with exact bin completion
# =============================================================================================

def _plan_counts(arr: np.ndarray, capacity: int) -> np.ndarray:
    """Fill each bin with the largest lengths while the rest can still be closed exactly, then
    close it with items near the average the rest needs (a balanced bin completion).

    With `v` the largest length that fits and `vmin` the smallest left, a remainder `R` can still be
    filled exactly (if lengths are dense) when some k has k*vmin <= R <= k*v, i.e. when
    ceil(R/v)*vmin <= R. The largest-first phase takes as many copies of `v` as keep that true; the
    completion then takes k = ceil(R/v) items, each the largest length <= the average still needed,
    and closes with the most balanced pair a + b == R. Where nothing fits, it falls back to FFD's
    step. Balanced completions use the plentiful middle lengths, so the scarce extremes stay
    available for the bins that need them.

    Every decision depends on the counts only through checks "length v still has >= k items"
    (recorded in `req`) or checks that stay false once false (a length that is gone stays gone), so a
    bin is repeated in bulk while all its recorded checks hold.
    """
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    C = capacity
    cnt_np = np.bincount(arr, minlength=C + 1)
    cnt = cnt_np.tolist()
    avail = cnt_np > 0
    avail[0] = False
    S = _Available(avail)
    pred, succ = S.pred, S.succ
    ev: list[int] = []
    eb: list[int] = []
    et: list[int] = []
    em: list[int] = []
    nbins = 0
    taken: dict[int, int] = {}
    req: dict[int, int] = {}
    taken_get, req_get = taken.get, req.get

    def need(v: int, k: int) -> None:
        tot = k + taken_get(v, 0)
        if req_get(v, 0) < tot:
            req[v] = tot

    def take(v: int, m: int) -> None:
        c = cnt[v] - m
        cnt[v] = c
        taken[v] = taken_get(v, 0) + m
        if c == 0:
            S.remove(v)
            avail[v] = False

    def pair(r: int, vmin: int) -> bool:
        """Take the most balanced a + b == r (a >= b): the smallest available a >= r/2 whose
        partner is available. Walks up to 32 available a's upwards, then up to 32 available b's
        downwards (either walk's first hit is the answer), then one vectorised scan."""
        lo, hi = (r + 1) // 2, min(S.hi, r - vmin)
        if lo > hi:
            return False
        a = -1
        x = succ(lo)
        for _ in range(32):
            if x > hi:
                return False
            y = r - x
            if cnt[y] and (x != y or cnt[x] >= 2):
                a = x
                break
            x = succ(x + 1)
        if a < 0:
            y = pred(r - lo)
            for _ in range(32):
                if y < r - hi:
                    return False
                x = r - y
                if cnt[x] and (x != y or cnt[x] >= 2):
                    a = x
                    break
                y = pred(y - 1)
        if a < 0:
            ok = avail[lo:hi + 1] & avail[r - hi:r - lo + 1][::-1]
            if lo + lo == r and cnt[lo] < 2:
                ok[0] = False
            j = int(ok.argmax())
            if not ok[j]:
                return False
            a = lo + j
        b = r - a
        need(a, 2 if a == b else 1)
        if a != b:
            need(b, 1)
        take(a, 1)
        take(b, 1)
        return True

    while S:
        taken.clear()
        req.clear()
        r = C
        while r > 0 and S:
            vmin = S.lo
            if r < vmin:
                break
            k = taken_get(vmin, 0) + 1            # need(vmin, 1), inlined: this loop is the hot path
            if req_get(vmin, 0) < k:
                req[vmin] = k
            v = pred(r)
            k = taken_get(v, 0) + 1               # need(v, 1)
            if req_get(v, 0) < k:
                req[v] = k
            if v == r:
                take(v, 1)
                break
            c = cnt[v]
            m = min(c, r // v)
            while m > 0:                          # most copies of v that leave a closable rest
                R = r - m * v
                if R == 0 or (R >= vmin and -(-R // v) * vmin <= R):
                    break
                m -= 1
            if r == C and not m:
                m = 1                             # v leaves less than vmin in any bin: no exact fill exists
            if m:
                need(v, m)
                take(v, m)
                r -= m * v
                continue
            # balanced completion of r with k = ceil(r / v) items
            k = -(-r // v)
            done = False
            if k * vmin <= r:
                while k > 2:
                    a = pred(min(-(-r // k), r - (k - 1) * vmin))
                    if a == 0:
                        break
                    need(a, 1)
                    take(a, 1)
                    r -= a
                    k -= 1
                    if not S or r < S.lo:
                        break
                if k == 2 and S and r >= 2 * S.lo:
                    vmin = S.lo
                    need(vmin, 1)
                    done = pair(r, vmin)
                    if done:
                        r = 0
            if not done and r > 0 and S:        # FFD step: the largest length that fits
                v = pred(r)
                if v == 0:
                    break
                need(v, 1)
                take(v, 1)
                r -= v

        t = min((cnt[v] + mv - req[v]) // mv for v, mv in taken.items()) + 1
        if t > 1:
            for v, mv in taken.items():
                c = cnt[v] - (t - 1) * mv
                cnt[v] = c
                if c == 0:
                    S.remove(v)
                    avail[v] = False
        for v, mv in taken.items():
            ev.append(v)
            eb.append(nbins)
            et.append(t)
            em.append(mv)
        nbins += t
    return _expand(arr, C, ev, eb, et, em)


def plan_packs(lengths: Any, capacity: int, *, num_images: Any = None, image_tokens: Any = None,
               max_images_per_pack: int | None = None, max_image_tokens_per_pack: int | None = None,
               algorithm: str = "plan") -> np.ndarray:
    """The default planner: a bin per item (int64, from 0), never more bins than FFD.

    `algorithm="ffd"` returns exact FFD. With per-pack budgets the bin-completion plan is used only
    when it respects them and is no worse than the constrained FFD.
    """
    if algorithm not in ("plan", "ffd"):
        raise ValueError(f"algorithm must be 'plan' or 'ffd', got {algorithm!r}")
    arr = _validate(lengths, capacity)
    capacity = int(capacity)
    cons = _constraints(arr, num_images, image_tokens, max_images_per_pack, max_image_tokens_per_pack)
    if algorithm == "ffd":
        return _ffd_constrained(arr, capacity, *cons) if cons is not None else _ffd_counts(arr, capacity)
    plan = _plan_counts(arr, capacity)
    if cons is None:
        if _nbins(plan) <= lower_bound(arr, capacity):
            return plan                       # optimal: FFD cannot do better
        ffd = _ffd_counts(arr, capacity)
        return plan if _nbins(plan) <= _nbins(ffd) else ffd
    plan_ok = _respects(plan, *cons)
    if plan_ok and _nbins(plan) <= _lower_bound(arr, capacity, *cons):
        return plan
    ffd = _ffd_constrained(arr, capacity, *cons)
    return plan if plan_ok and _nbins(plan) <= _nbins(ffd) else ffd


def _nbins(bins: np.ndarray) -> int:
    return int(bins.max()) + 1 if bins.size else 0


# =============================================================================================
# Constraints: images per pack, image tokens per pack
# =============================================================================================

def _constraints(arr: np.ndarray, num_images: Any, image_tokens: Any, max_images: int | None,
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


def _respects(bins: np.ndarray, imgs: np.ndarray, toks: np.ndarray, ma: int, mt: int) -> bool:
    if bins.size == 0:
        return True
    nb = _nbins(bins)
    return bool(np.bincount(bins, weights=imgs, minlength=nb).max() <= ma and
                np.bincount(bins, weights=toks, minlength=nb).max() <= mt)


def _lower_bound(arr: np.ndarray, capacity: int, imgs: np.ndarray, toks: np.ndarray, ma: int, mt: int) -> int:
    lb = -(-int(arr.sum()) // capacity)
    if ma > 0:
        lb = max(lb, -(-int(imgs.sum()) // ma))
    if mt > 0:
        lb = max(lb, -(-int(toks.sum()) // mt))
    return lb


def _ffd_constrained(arr: np.ndarray, capacity: int, imgs: np.ndarray, toks: np.ndarray,
                     ma: int, mt: int) -> np.ndarray:
    """Exact FFD under three budgets (length, images, image tokens), bin by bin over item types.

    Types are distinct (length, image tokens, images), sorted descending. Filling a bin repeatedly
    asks "first remaining type at or after position s whose images and image tokens fit"; a
    segment tree of per-node minima answers it (pruning on both minima, exact at the leaves).
    """
    n = arr.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(n), -imgs, -toks, -arr))
    keys = np.stack([arr[order], toks[order], imgs[order]], axis=1)
    change = np.ones(n, dtype=bool)
    change[1:] = np.any(keys[1:] != keys[:-1], axis=1)
    first = np.flatnonzero(change)
    type_of_sorted = np.cumsum(change) - 1
    counts = np.diff(np.append(first, n)).tolist()
    tl = keys[first, 0].tolist()
    tt = keys[first, 1].tolist()
    ti = keys[first, 2].tolist()
    T = len(tl)
    neg_len = [-x for x in tl]                  # ascending, for bisect
    INF = 1 << 62
    size = 1
    while size < T:
        size <<= 1
    mn_i = [INF] * (2 * size)
    mn_t = [INF] * (2 * size)
    for j in range(T):
        mn_i[size + j] = ti[j]
        mn_t[size + j] = tt[j]
    for j in range(size - 1, 0, -1):
        a, b = mn_i[2 * j], mn_i[2 * j + 1]
        mn_i[j] = a if a < b else b
        a, b = mn_t[2 * j], mn_t[2 * j + 1]
        mn_t[j] = a if a < b else b

    def remove(j: int) -> None:
        i = size + j
        mn_i[i] = INF
        mn_t[i] = INF
        i >>= 1
        while i:
            a, b = mn_i[2 * i], mn_i[2 * i + 1]
            mn_i[i] = a if a < b else b
            a, b = mn_t[2 * i], mn_t[2 * i + 1]
            mn_t[i] = a if a < b else b
            i >>= 1

    def first_fit(s: int, ra: int, rt: int) -> int:
        if s >= T:
            return -1
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

    remaining = T
    bins_of_type: list[list[tuple[int, int, int]]] = [[] for _ in range(T)]   # (first bin, reps, per bin)
    nbins = 0
    while remaining:
        r, ra, rt = capacity, ma, mt
        s = 0
        taken: list[tuple[int, int]] = []
        t = 1 << 62
        while True:
            s = max(s, bisect_right(neg_len, -r - 1) if r < capacity else 0)
            j = first_fit(s, ra, rt)
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
        for j, m in taken:
            counts[j] -= t * m
            bins_of_type[j].append((nbins, t, m))
            if counts[j] == 0:
                remove(j)
                remaining -= 1
        nbins += t

    # hand out items of each type, in sorted order, to that type's bins in bin order
    out = np.empty(n, dtype=np.int64)
    pos_bins = np.empty(n, dtype=np.int64)
    ptr = 0
    for j in range(T):
        for b0, reps, m in bins_of_type[j]:
            k = reps * m
            pos_bins[ptr:ptr + k] = b0 + np.arange(k) // m
            ptr += k
    out[order] = pos_bins
    del type_of_sorted
    return out


# =============================================================================================
# References (tests and benchmarks)
# =============================================================================================

def naive_first_fit_decreasing(lengths: Sequence[int], capacity: int, num_images: Sequence[int] | None = None,
                               image_tokens: Sequence[int] | None = None, max_images_per_pack: int | None = None,
                               max_image_tokens_per_pack: int | None = None) -> np.ndarray:
    """Textbook O(n * bins) FFD (the shape of Open-Qwen2VL's Algorithm 1 and NeMo's packer); the
    oracle the fast versions are tested against, and a benchmark peer."""
    arr = np.asarray(lengths, dtype=np.int64)
    n = arr.size
    imgs = np.zeros(n, np.int64) if num_images is None else np.asarray(num_images, np.int64)
    toks = np.zeros(n, np.int64) if image_tokens is None else np.asarray(image_tokens, np.int64)
    ma = max_images_per_pack if max_images_per_pack is not None else 1 << 62
    mt = max_image_tokens_per_pack if max_image_tokens_per_pack is not None else 1 << 62
    if max_images_per_pack is None and max_image_tokens_per_pack is None:
        order = sorted(range(n), key=lambda i: (-arr[i], i))
    else:
        order = sorted(range(n), key=lambda i: (-arr[i], -toks[i], -imgs[i], i))
    room: list[list[int]] = []
    out = np.zeros(n, dtype=np.int64)
    for i in order:
        L, a, t = int(arr[i]), int(imgs[i]), int(toks[i])
        for b, (r, ra, rt) in enumerate(room):
            if L <= r and a <= ra and t <= rt:
                room[b] = [r - L, ra - a, rt - t]
                out[i] = b
                break
        else:
            room.append([capacity - L, ma - a, mt - t])
            out[i] = len(room) - 1
    return out


def lower_bound(lengths: Any, capacity: int) -> int:
    """ceil(sum / capacity): no plan uses fewer bins."""
    total = int(np.asarray(lengths, dtype=np.int64).sum())
    return -(-total // capacity) if total else 0
