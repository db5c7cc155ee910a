"""The mixture's report: per level, target vs achieved share, available, kept and repeated — by
samples and by tokens (tokens only when ``num_tokens`` exists at the mixture).

Targets are stated in the mixture's unit; achieved shares are given in both units because a mixture
by samples can be far off by tokens (a caption is ~100 tokens, a document page thousands) and users
asked to see both. ``error_pp`` is achieved minus target in percentage points, in the mixture's unit.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from curate.mixture.plan import Budget, GroupPlan
from curate.mixture.targets import UNLISTED, Targets

def group_sums(labels: np.ndarray, copies: np.ndarray, tokens: np.ndarray | None) -> dict[str, dict[str, float]]:
    """Per leaf label: available/kept/repeated/output in samples and tokens (a per-batch partial; sums combine)."""
    out: dict[str, dict[str, float]] = {}
    tok = tokens if tokens is not None else np.zeros(labels.size, dtype=np.int64)
    for g in np.unique(labels):
        m = labels == g
        c, t = copies[m], tok[m]
        kept = c > 0
        rep = np.maximum(c - 1, 0)
        out[str(g)] = {"available_samples": int(m.sum()), "available_tokens": int(t.sum()),
                       "kept_samples": int(kept.sum()), "kept_tokens": int(t[kept].sum()),
                       "repeated_samples": int(rep.sum()), "repeated_tokens": int((rep * t).sum()),
                       "output_samples": int(c.sum()), "output_tokens": int((c * t).sum())}
    return out


def _roll_up(sums: dict[str, dict[str, float]], parent: dict[str, str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for leaf, row in sums.items():
        if leaf == UNLISTED:
            continue
        acc = out.setdefault(parent[leaf], {k: 0 for k in row})
        for k, v in row.items():
            acc[k] += v
    return out


def _level(name: str, rows: dict[str, dict[str, float]], shares: dict[str, float], unit: str,
           has_tokens: bool, plans: dict[str, GroupPlan] | None) -> dict[str, Any]:
    out_s = sum(r["output_samples"] for r in rows.values()) or 1
    out_t = sum(r["output_tokens"] for r in rows.values()) or 1
    groups = []
    for g, share in shares.items():
        r = rows.get(g, {k: 0 for k in ("available_samples", "available_tokens", "kept_samples", "kept_tokens",
                                         "repeated_samples", "repeated_tokens", "output_samples", "output_tokens")})
        achieved_s = r["output_samples"] / out_s
        achieved_t = r["output_tokens"] / out_t if has_tokens else None
        achieved = achieved_s if unit == "samples" else achieved_t
        entry = {"group": g, "target": round(share, 6), "achieved_samples": round(achieved_s, 6),
                 "achieved_tokens": None if achieved_t is None else round(achieved_t, 6),
                 "error_pp": None if achieved is None else round(100 * (achieved - share), 3),
                 **{k: int(v) for k, v in r.items()}}
        if not has_tokens:
            entry.update({k: None for k in entry if k.endswith("_tokens") and k != "achieved_tokens"})
        if plans is not None and g in plans:
            p = plans[g]
            entry.update({"repeat_factor": round(p.planned / p.available, 4) if p.available else None,
                          "max_repeat": p.cap, "short": p.short})
        groups.append(entry)
    return {"level": name, "groups": groups}


def mixture_report(targets: Targets, unit: str, plans: dict[str, GroupPlan], b: Budget,
                   sums: dict[str, dict[str, float]], has_tokens: bool) -> dict[str, Any]:
    level1_name = "source" if targets.by == "source" else "category"
    levels = [_level(level1_name, _roll_up(sums, targets.parent), targets.level1, unit, has_tokens,
                     plans if not targets.two_level else None)]
    if targets.two_level:
        levels.append(_level("source", {g: r for g, r in sums.items() if g != UNLISTED}, targets.shares, unit,
                             has_tokens, plans))
    unit_key = "output_samples" if unit == "samples" else "output_tokens"
    shortfall = [{"group": g, "target": round(p.target, 3), "achievable": round(p.planned, 3),
                  "available": round(p.available, 3), "max_repeat": p.cap}
                 for g, p in plans.items() if p.short]
    level1 = levels[0]["groups"]
    return {
        "by": targets.by, "unit": unit, "two_level": targets.two_level,
        "total_target": round(b.total, 3),
        "total_achieved": int(sum(r[unit_key] for g, r in sums.items() if g != UNLISTED)) if (
            unit == "samples" or has_tokens) else None,
        "target": {e["group"]: e["target"] for e in level1},
        "achieved": {e["group"]: round(e["achieved_samples"] if unit == "samples" else e["achieved_tokens"], 4)
                     for e in level1},
        "max_abs_error_pp": max((abs(e["error_pp"]) for lv in levels for e in lv["groups"]
                                 if e["error_pp"] is not None), default=0.0),
        "unlisted": {k: int(v) for k, v in sums.get(UNLISTED, {}).items() if k.startswith("available")},
        "shortfall": shortfall,
        "levels": levels,
    }
