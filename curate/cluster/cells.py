"""Per-cluster partial sums pre-combined by a shuffle, so the driver gets one row per cluster.

The ``cluster`` statistics and the ``cluster_sample`` totals are sums over rows per (level, cluster)
cell. Each batch's partial has one row per cell present in that batch, so handing every batch's
partial to the driver grows with the number of batches (rows / batch size x cells per batch: 17M
rows of 768 int64 sums for 1B rows at the default levels). Instead the partial rows carry a cell
key, a ``shuffle_reduce`` by that key sums each cell's rows (exact integer sums: any grouping gives
the same totals), and the driver's ``aggregate`` sees at most one row per cell: the number of
clusters, which the recipe bounds, never the number of rows.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pyarrow as pa

from curate.cluster import columns as C

CELL = "_cell"
CELL_PARTITIONS = 16
BatchFn = Callable[[pa.Table], pa.Table]


def with_cell(partial: BatchFn, level: str, node: str) -> BatchFn:
    """The partial, its rows keyed by cell (level << 40 | node: clusters per level stay far below 2^40)."""
    def keyed(batch: pa.Table) -> pa.Table:
        part = partial(batch)
        lv = np.asarray(part.column(level).to_numpy(zero_copy_only=False), dtype=np.int64)
        nd = np.asarray(part.column(node).to_numpy(zero_copy_only=False), dtype=np.int64)
        return part.append_column(CELL, pa.array((lv << 40) | nd, pa.int64()))
    return keyed


def _starts(group: pa.Table) -> np.ndarray:
    cells = np.asarray(group.column(CELL).to_numpy(zero_copy_only=False), dtype=np.int64)
    return np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]])


def sum_cells(sums: tuple[str, ...], vector: str | None = None, keys: tuple[str, str, int] | None = None) -> BatchFn:
    """Reduce (rows sorted by cell): one row per cell; `sums` and the list column `vector` added up,
    the other columns from the cell's first row; `keys` = (hash column, key column, n) keeps the n
    smallest (hash, key) pairs of the cell's lists."""
    def reduce(group: pa.Table) -> pa.Table:
        starts = _starts(group)
        out = group.take(pa.array(starts, pa.int64()))
        cols: dict[str, Any] = {}
        for name in sums:
            values = np.asarray(group.column(name).to_numpy(zero_copy_only=False), dtype=np.int64)
            cols[name] = pa.array(np.add.reduceat(values, starts), group.schema.field(name).type)
        if vector is not None:
            total = np.add.reduceat(C.matrix(group.column(vector), np.int64), starts, axis=0)
            cols[vector] = pa.array(total.tolist(), group.schema.field(vector).type)
        if keys is not None:
            hash_col, key_col, n = keys
            hashes, names = group.column(hash_col).to_pylist(), group.column(key_col).to_pylist()
            bounds = np.r_[starts, group.num_rows]
            merged = [sorted(pair for i in range(a, b) for pair in zip(hashes[i], names[i]))[:n]
                      for a, b in zip(bounds[:-1], bounds[1:])]
            cols[hash_col] = pa.array([[h for h, _ in m] for m in merged], group.schema.field(hash_col).type)
            cols[key_col] = pa.array([[k for _, k in m] for m in merged], group.schema.field(key_col).type)
        for name, values in cols.items():
            out = out.set_column(out.schema.get_field_index(name), group.schema.field(name), values)
        return out
    return reduce


def summed_per_cell(data: Any, partial: BatchFn, level: str, node: str, reduce: BatchFn,
                    combine: Callable[[pa.Table], Any]) -> Any:
    """``combine`` over one row per cell: partials keyed, summed per cell by a shuffle, then aggregated."""
    cells = data.map_batches(with_cell(partial, level, node)).shuffle_reduce(CELL, reduce, CELL_PARTITIONS)
    return cells.aggregate(lambda t: t.drop_columns([CELL]), combine)
