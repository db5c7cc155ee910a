"""The default planner: FFD-style filling with exact bin completion, never more bins than FFD."""
from __future__ import annotations

from typing import Any

import numpy as np

from pack.packing.constrained import budget_columns, budget_lower_bound, ffd_constrained, respects_budgets
from pack.packing.counts import AvailableLengths, expand_entries, num_bins, validate_lengths
from pack.packing.ffd import ffd_counts
from pack.packing.stats import lower_bound


def plan_counts(arr: np.ndarray, capacity: int) -> np.ndarray:
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
    S = AvailableLengths(avail)
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
    return expand_entries(arr, C, ev, eb, et, em)


def plan_packs(lengths: Any, capacity: int, *, num_images: Any = None, image_tokens: Any = None,
               max_images_per_pack: int | None = None, max_image_tokens_per_pack: int | None = None,
               algorithm: str = "plan") -> np.ndarray:
    """The default planner: a bin per item (int64, from 0), never more bins than FFD.

    `algorithm="ffd"` returns exact FFD. With per-pack budgets the bin-completion plan is used only
    when it respects them and is no worse than the constrained FFD.
    """
    if algorithm not in ("plan", "ffd"):
        raise ValueError(f"algorithm must be 'plan' or 'ffd', got {algorithm!r}")
    arr = validate_lengths(lengths, capacity)
    capacity = int(capacity)
    cons = budget_columns(arr, num_images, image_tokens, max_images_per_pack, max_image_tokens_per_pack)
    if algorithm == "ffd":
        return ffd_constrained(arr, capacity, *cons) if cons is not None else ffd_counts(arr, capacity)
    plan = plan_counts(arr, capacity)
    if cons is None:
        if num_bins(plan) <= lower_bound(arr, capacity):
            return plan                       # optimal: FFD cannot do better
        ffd = ffd_counts(arr, capacity)
        return plan if num_bins(plan) <= num_bins(ffd) else ffd
    plan_ok = respects_budgets(plan, *cons)
    if plan_ok and num_bins(plan) <= budget_lower_bound(arr, capacity, *cons):
        return plan
    ffd = ffd_constrained(arr, capacity, *cons)
    return plan if plan_ok and num_bins(plan) <= num_bins(ffd) else ffd
