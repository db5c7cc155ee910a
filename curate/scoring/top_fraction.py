"""Keep the top fraction of each source by a score column: the whole-dataset step that clip_score and
mllm_score share, written on GlobalData so that no process holds every row.

A shuffle by source brings each source's (score, _ordinal) pairs to one worker, which finds the
cutoff — the lowest kept score and, for ties, the highest kept _ordinal (``keep_top_fraction``'s
order: score descending, then _ordinal ascending). The driver gets one row per source; a per-row map
then keeps a row when it is unscored (NaN), above the cutoff, or tied at it with an ordinal no later
than the boundary's — exactly the rows ``keep_top_fraction`` keeps, whatever the partitioning.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from curate.base import records as R

# Shuffle partitions for the per-source step (a call gets whole sources, so this only spreads work).
SOURCE_PARTITIONS = 16

Describe = Callable[[float, float, str, int], str]


def keep_top_fraction(scores: np.ndarray, ordinals: np.ndarray, fraction: float) -> tuple[np.ndarray, float | None]:
    """Boolean mask of the ceil(fraction * n) highest scores (ties: lower _ordinal first), and the
    lowest kept score. NaN scores (unscored rows) are always kept and not counted."""
    keep = np.ones(len(scores), dtype=bool)
    valid = np.flatnonzero(~np.isnan(scores))
    if valid.size == 0:
        return keep, None
    n_keep = max(1, math.ceil(fraction * valid.size - 1e-9))
    order = valid[np.lexsort((ordinals[valid], -scores[valid]))]
    keep[order[n_keep:]] = False
    return keep, float(scores[order[n_keep - 1]])


def _values(batch: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(batch.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)
    ords = np.asarray(batch.column(R.ORDINAL).to_numpy(zero_copy_only=False), dtype=np.int64)
    return scores, ords


def source_cutoffs(group: pa.Table, column: str, fraction: float) -> pa.Table:
    """One row per source in `group`: cutoff score and boundary ordinal (null: nothing scored)."""
    scores, ords = _values(group, column)
    sources = np.asarray(group.column("source").to_pylist(), dtype=object)
    rows: dict[str, list[Any]] = {"source": [], "cutoff": [], "boundary": [], "scored": []}
    for src in sorted(set(sources.tolist())):
        idx = np.flatnonzero(sources == src)
        keep, cutoff = keep_top_fraction(scores[idx], ords[idx], fraction)
        tied = idx[keep & (scores[idx] == cutoff)] if cutoff is not None else idx[:0]
        rows["source"].append(src)
        rows["cutoff"].append(cutoff)
        rows["boundary"].append(int(ords[tied].max()) if tied.size else None)
        rows["scored"].append(int((~np.isnan(scores[idx])).sum()))
    return pa.table({"source": pa.array(rows["source"], pa.string()), "cutoff": pa.array(rows["cutoff"], pa.float64()),
                     "boundary": pa.array(rows["boundary"], pa.int64()), "scored": pa.array(rows["scored"], pa.int64())})


def apply_cutoffs(batch: pa.Table, column: str, cuts: dict[str, tuple[float | None, int | None, int]],
                  reason: str, describe: Describe) -> pa.Table:
    scores, ords = _values(batch, column)
    sources = batch.column("source").to_pylist()
    status, reasons, details = [], [], []
    for s, o, src in zip(scores, ords, sources):
        cutoff, boundary, scored = cuts.get(src, (None, None, 0))
        kept = (cutoff is None or np.isnan(s) or s > cutoff or (s == cutoff and o <= boundary))
        status.append(R.KEPT if kept else R.REJECTED)
        reasons.append(None if kept else reason)
        details.append(None if kept else describe(float(s), float(cutoff), src, scored))
    return pa.table({R.ORDINAL: pa.array(ords, pa.int64()), R.STATUS: pa.array(status, pa.string()),
                     R.REASON: pa.array(reasons, pa.string()), R.DETAIL: pa.array(details, pa.string())})


def top_fraction_step(data: Any, column: str, fraction: float, reason: str,
                      describe: Describe) -> tuple[Any, dict[str, dict[str, Any]]]:
    """Decisions (GlobalData) and, per source, {"scored", "kept", "cutoff"} for the report."""
    table = data.shuffle_reduce("source", lambda g: source_cutoffs(g, column, fraction), SOURCE_PARTITIONS).gather()
    cuts = {s: (c, b, n) for s, c, b, n in zip(*(table.column(k).to_pylist()
                                                for k in ("source", "cutoff", "boundary", "scored")))}
    summary = {s: {"scored": n, "kept": max(1, math.ceil(fraction * n - 1e-9)) if n else 0,
                   "cutoff": None if c is None else round(c, 6)} for s, (c, _, n) in sorted(cuts.items())}
    return data.map_batches(lambda b: apply_cutoffs(b, column, cuts, reason, describe)), summary
