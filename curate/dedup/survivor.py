"""Which copy survives: the quality value of each row.

The survivor of a duplicate group is the member with the best quality value (``survivor_by``: a
numeric column such as ``clip_score``, ``resolution`` = total image pixels from the header sizes,
or ``text_length``); ties go to the smallest content hash, then the smallest key. Nothing depends
on row order or partitioning ("whichever came first" is what NeMo effectively does, and its kept
copy changes with the partitioning). The tie-break is applied by the
caller (``global_step.decide_groups``).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curate.base import records as R

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
