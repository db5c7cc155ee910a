"""Which copy survives, and the per-row decisions and report numbers of a dedup stage.

The survivor of a duplicate group is the member with the best quality value (``survivor_by``: a
numeric column such as ``clip_score``, ``resolution`` = total image pixels from the header sizes,
or ``text_length``); ties go to the smallest content hash, then the smallest key. Nothing depends
on row order or partitioning ("whichever came first" is what NeMo effectively does, and its kept
copy changes with the partitioning). Members are numbered in (content hash, key) order by the
caller, so "smallest position" is exactly that tie-break.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from curate import records as R

QUALITY_RESOLUTION = "resolution"
QUALITY_TEXT_LENGTH = "text_length"


QUALITY_COLUMN = "dup_quality"


def is_derived(survivor_by: str) -> bool:
    return survivor_by in (QUALITY_RESOLUTION, QUALITY_TEXT_LENGTH)


def quality_columns(survivor_by: str) -> tuple[str, ...]:
    """The one column the global step reads for `survivor_by`: the per-row value computed in
    process_batch for derived measures (so image refs and texts never travel to the global step),
    or the named numeric column itself."""
    return (QUALITY_COLUMN,) if is_derived(survivor_by) else (survivor_by,)


def derived_quality(batch: pa.Table, survivor_by: str) -> pa.Array:
    """Per-row value of a derived measure: total image pixels from header sizes, or text characters."""
    if survivor_by == QUALITY_RESOLUTION:
        images = batch.column("images").to_pylist() if "images" in batch.column_names else [None] * batch.num_rows
        values = [float(sum((im.get("width") or 0) * (im.get("height") or 0) for im in (ims or []))) for ims in images]
    else:
        values = [float(len(t)) for t in R.text_of(batch)]
    return pa.array(values, type=pa.float64())


def quality_values(table: pa.Table, survivor_by: str) -> np.ndarray:
    """One float per row of the global step's input (higher is better before `prefer`); missing -> NaN."""
    name = QUALITY_COLUMN if is_derived(survivor_by) else survivor_by
    if name not in table.column_names:
        raise ValueError(f"survivor_by={survivor_by!r}: no such column (run the stage that adds it first)")
    col = table.column(name)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise ValueError(f"survivor_by={survivor_by!r} must name a numeric column, it is {col.type}")
    return np.asarray(col.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)


@dataclass
class Groups:
    """Per member (position order): its group's survivor position and the group size."""
    survivor: np.ndarray
    size: np.ndarray


def choose_survivors(labels: np.ndarray, quality: np.ndarray, prefer: str = "highest") -> Groups:
    """Survivor per component: best quality, then smallest position (= content hash, key)."""
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.shape[0]
    q = np.asarray(quality, dtype=np.float64)
    score = q if prefer == "highest" else -q
    score = np.where(np.isnan(score), -np.inf, score)
    pos = np.arange(n, dtype=np.int64)
    order = np.lexsort((pos, -score, labels))
    first = np.ones(n, dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    best_of_label = np.empty(int(labels.max()) + 1 if n else 0, dtype=np.int64)
    best_of_label[labels[order][first]] = order[first]
    sizes = np.bincount(labels, minlength=best_of_label.shape[0])
    return Groups(best_of_label[labels], sizes[labels])


def decisions(ordinals: np.ndarray, keys: Sequence[str], groups: Groups, reason: str,
              details: Sequence[str | None]) -> pa.Table:
    """The decide() answer: survivors and singletons kept, other members rejected naming the survivor."""
    n = len(keys)
    keys_arr = np.asarray(keys, dtype=object)
    dropped = groups.survivor != np.arange(n)
    return pa.table({
        R.ORDINAL: pa.array(np.asarray(ordinals, dtype=np.int64)),
        R.STATUS: pa.array(np.where(dropped, R.REJECTED, R.KEPT).tolist(), type=pa.string()),
        R.REASON: pa.array([reason if d else None for d in dropped], type=pa.string()),
        R.DETAIL: pa.array([details[i] if dropped[i] else None for i in range(n)], type=pa.string()),
        "dup_group": pa.array(keys_arr[groups.survivor].tolist() if n else [], type=pa.string()),
        "dup_group_size": pa.array(groups.size.astype(np.int32)),
    })


def summary(stage: str, groups: Groups, sources: Sequence[str], extra: dict[str, Any]) -> dict[str, Any]:
    """Report numbers: groups found, their size histogram, rows removed in all and per source."""
    n = groups.size.shape[0]
    is_survivor = groups.survivor == np.arange(n)
    multi = is_survivor & (groups.size > 1)
    hist = Counter(int(s) for s in groups.size[multi])
    removed = Counter(src for src, keep in zip(sources, is_survivor) if not keep)
    return {"stage": stage, "rows": n, "groups": int(np.count_nonzero(multi)),
            "rows_in_groups": int(groups.size[multi].sum()), "removed": int(np.count_nonzero(~is_survivor)),
            "group_sizes": {str(k): hist[k] for k in sorted(hist)},
            "removed_by_source": dict(sorted(removed.items())), **extra}
