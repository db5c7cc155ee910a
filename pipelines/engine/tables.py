"""Stage data on disk: how the engine writes and counts the parquet files every stage's rows live in.

A stage directory's ``data/`` holds ``part-*.parquet`` files; both executors, fusion and the runner
read and write them through these few functions, so the file format (compression, row groups,
statistics) is decided in one place.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.base import Stage
from curate.base import records as R
from curate.base.diskspace import writing

# No dictionary pages: most columns (keys, texts, paths, JSON) are nearly all distinct, where pyarrow's
# dictionary attempt is wasted work; zstd on plain pages writes a 100k-row stage part 2.6x faster and
# 17% smaller, and still squeezes the few repetitive columns (status, source, category).
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "use_dictionary": False}
# Rows per row group of the files a stage writes. A row group is the unit a Ray read task takes
# (pipelines.engine.ray_files.read_files), so a 250k-row part is read by ~15 tasks, not one.
ROW_GROUP_ROWS = 16_384


def data_files(directory: str | Path) -> list[str]:
    d = Path(directory)
    return sorted(str(p) for p in d.glob("*.parquet")) if d.is_dir() else []


def statistics_columns(schema: pa.Schema) -> list[str]:
    """Columns whose row groups carry min/max in the footer: what readers prune or route by (_ordinal
    ranges, _status filters, numbers). Not texts, keys, paths or nested columns: min/max over every
    caption was a third of a stage file's write time (0.145 -> 0.101 CPU-s per 100k rows)."""
    return [f.name for f in schema if f.name == R.STATUS or not (
        pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_binary(f.type)
        or pa.types.is_large_binary(f.type) or pa.types.is_nested(f.type))]


def write_table(table: pa.Table, path: str | Path) -> None:
    with writing(path):   # a full disk: OutOfSpace naming the file
        pq.write_table(table, str(path), row_group_size=ROW_GROUP_ROWS,
                       write_statistics=statistics_columns(table.schema), **PARQUET_OPTIONS)


def count_rows(files: list[str], kept_only: bool = False) -> int:
    """Rows of `files` (`kept_only`: their kept rows), from the footers or the status column."""
    if not files:
        return 0
    if kept_only:
        return sum(kept_rows(f) for f in files)
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def kept_rows(path: str) -> int:
    """The kept rows of one file, a row group at a time: from the footer's ``_status`` statistics where
    a group is all one status, else from that group's ``_status`` column alone, read on this thread.
    Why not a dataset scan with a filter: the driver counts every chain's rows several times, and a
    scan reads several files ahead on Arrow's threads, whose allocator keeps the pages it used (at
    5M rows, +17-21 MB of the driver per count, measured for issue 31); this holds one row group."""
    parquet = pq.ParquetFile(path)
    meta = parquet.metadata
    leaf = next((c for c in range(meta.num_columns) if meta.schema.column(c).path == R.STATUS), None)
    if leaf is None:
        raise ValueError(f"{path}: no {R.STATUS} column to count kept rows by")
    kept = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        if not group.num_rows:
            continue
        stats = group.column(leaf).statistics
        if stats is not None and stats.has_min_max and stats.has_null_count and stats.null_count == 0:
            if stats.min == stats.max == R.KEPT:
                kept += group.num_rows
                continue
            if not stats.min <= R.KEPT <= stats.max:
                continue
        status = parquet.read_row_group(g, columns=[R.STATUS], use_threads=False).column(0)
        kept += int(pc.sum(pc.equal(status, R.KEPT)).as_py() or 0)
    return kept


def global_columns(stage: Stage, schema: pa.Schema) -> list[str] | None:
    """Columns a global step reads: key, _ordinal, _status and the stage's global_columns (None: all)."""
    cols = stage.global_columns or ()
    if tuple(cols) == ("*",):
        return None
    return ["key", R.ORDINAL, R.STATUS] + [c for c in cols if c in schema.names and c not in ("key", R.ORDINAL)]
