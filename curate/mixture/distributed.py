"""The mixture's passes as GlobalData operations: every partial is a small Arrow table, so the plan is
made from aggregates alone and no process holds the rows (curate.base.global_data).

Pass 1 (aggregate): per group, sizes in both units and the weight histogram over seeded rank bins.
Pass 2 (aggregate): only the rows inside each group's boundary bin (about 1/4096 of a group).
Apply (map): copies per row from the plan; the report's sums are one more aggregate.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa

from curate.mixture import plan as P

Columns = Callable[[pa.Table], tuple[np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None"]]


def stats_table(part: dict[str, P.GroupStats]) -> pa.Table:
    groups = sorted(part)
    return pa.table({"group": pa.array(groups, pa.string()),
                     "samples": pa.array([part[g].samples for g in groups], pa.int64()),
                     "tokens": pa.array([part[g].tokens for g in groups], pa.int64()),
                     "weight": pa.array([part[g].weight for g in groups], pa.float64()),
                     "hist": pa.array([part[g].hist.tolist() for g in groups], pa.list_(pa.float64()))})


def stats_from_table(t: pa.Table) -> dict[str, P.GroupStats]:
    out: dict[str, P.GroupStats] = {}
    if t.num_rows == 0:
        return out
    for g, s, tok, w, h in zip(*(t.column(c).to_pylist() for c in ("group", "samples", "tokens", "weight", "hist"))):
        out.setdefault(g, P.GroupStats()).add(P.GroupStats(int(s), int(tok), float(w), np.asarray(h, np.float64)))
    return out


def boundary_table(part: dict[str, tuple[np.ndarray, np.ndarray]]) -> pa.Table:
    groups, ranks, weights = [], [], []
    for g in sorted(part):
        r, w = part[g]
        groups += [g] * r.size
        ranks.append(r.astype(np.uint64))
        weights.append(np.asarray(w, np.float64))
    return pa.table({"group": pa.array(groups, pa.string()),
                     "rank": pa.array(np.concatenate(ranks) if ranks else np.zeros(0, np.uint64)),
                     "weight": pa.array(np.concatenate(weights) if weights else np.zeros(0))})


def boundary_from_table(t: pa.Table) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if t.num_rows == 0:
        return {}
    groups = np.asarray(t.column("group").to_pylist(), dtype=object)
    ranks = t.column("rank").to_numpy()
    weights = t.column("weight").to_numpy()
    return {str(g): (ranks[groups == g], weights[groups == g]) for g in np.unique(groups)}


SUM_FIELDS = ("available_samples", "available_tokens", "kept_samples", "kept_tokens", "repeated_samples",
              "repeated_tokens", "output_samples", "output_tokens")


def sums_table(part: dict[str, dict[str, float]]) -> pa.Table:
    groups = sorted(part)
    return pa.table({"group": pa.array(groups, pa.string()),
                     **{f: pa.array([float(part[g][f]) for g in groups], pa.float64()) for f in SUM_FIELDS}})


def sums_from_table(t: pa.Table) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    if t.num_rows == 0:
        return out
    for i, g in enumerate(t.column("group").to_pylist()):
        row = out.setdefault(g, {f: 0 for f in SUM_FIELDS})
        for f in SUM_FIELDS:
            row[f] += int(t.column(f)[i].as_py())
    return out
