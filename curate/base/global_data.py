"""The operations a whole-dataset step is written against, so that it never needs the data in one process.

Dedup, mixture, packing, clustering and shard writing need to look across every row. Doing that by
pulling every row into the driver caps the tool at one machine's memory (DataTrove's single-process
union-find and NeMo's OOMs are the known failures). Instead a stage's ``global_step(data)`` composes
four operations on a ``GlobalData`` handle, which each executor implements — Ray Data on a cluster
(``pipelines.engine.ray_data``), plain tables in this process for notebooks and inline runs (below):

* ``map_batches(fn)``: a per-batch function, table in, table out.
* ``aggregate(partial, combine, merge=None)``: ``partial`` reduces each batch to a small table;
  ``combine`` gets the partials concatenated *in no guaranteed order* (it must not depend on the
  order) and returns a small Python value to the driver — totals per group, histograms, per-pack
  statistics. With ``merge`` (concatenated partials -> one partial, associative and order-free) the
  partials are merged where they were made, in a tree, and the driver gets O(COMBINE_FAN_IN) of them
  instead of one per block.
* ``shuffle_reduce(key, fn, partitions, block_rows=None)``: rows with equal ``key`` meet in one call
  of ``fn``. A call gets one or more whole key groups sorted by ``key`` then ``_ordinal``; what ``fn``
  returns for a group must depend on that group alone, so results do not depend on how rows were
  partitioned. ``block_rows``: the rows enter the shuffle in blocks of about that many (Ray: its map
  tasks); a sort shuffle makes blocks x partitions pieces, each an object the driver owns while it
  runs, so a step with few partitions over many small blocks gathers them first.
* ``union(other)``: the rows of both handles (same schema), e.g. per-row records and the small
  per-key results computed from them, so that a following ``shuffle_reduce`` joins them by key.
* ``gather()``: every row in one table, for steps whose input is known to be small (documented at
  each use; the default ``Stage.global_step`` uses it for ``decide()``).
* ``materialize()``: run what is pending now (e.g. a step that writes files before the driver reads
  their results), keeping the result distributed.

Determinism: every operation's result is a function of the rows, never of their arrival order or
of the number of workers; a stage keeps that promise by sorting or hashing by ``_ordinal``/key.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import records as R

T = TypeVar("T")
# Partials a tree-combining aggregate merges per call, and the most that reach the driver.
COMBINE_FAN_IN = 16
BatchFn = Callable[[pa.Table], pa.Table]


class GlobalData(Protocol):
    def map_batches(self, fn: BatchFn) -> "GlobalData": ...
    def aggregate(self, partial: BatchFn, combine: Callable[[pa.Table], T], merge: BatchFn | None = None) -> T: ...
    def shuffle_reduce(self, key: str, fn: BatchFn, partitions: int, block_rows: int | None = None) -> "GlobalData": ...
    def union(self, other: "GlobalData") -> "GlobalData": ...
    def count(self) -> int: ...
    def gather(self) -> pa.Table: ...
    def materialize(self) -> "GlobalData": ...


def stable_hash64(values: pa.Array | pa.ChunkedArray | list[str], salt: int = 0) -> np.ndarray:
    """blake2b(salt, value) as uint64 for each string: the same on every machine, run and Python
    (unlike ``hash()``), so partitions and seeded selections never depend on the process."""
    key = int(salt).to_bytes(16, "little", signed=True)
    items = values.to_pylist() if not isinstance(values, list) else values
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8, key=key).digest(), "little")
                        for v in items), dtype=np.uint64, count=len(items))


def sort_for_reduce(table: pa.Table, key: str) -> pa.Table:
    """The order every shuffle_reduce call sees: by key, then by _ordinal when present."""
    keys = [(key, "ascending")] + ([(R.ORDINAL, "ascending")] if R.ORDINAL in table.column_names and key != R.ORDINAL else [])
    return table.take(pc.sort_indices(table, sort_keys=keys))


def partition_of(column: pa.ChunkedArray | pa.Array, partitions: int) -> np.ndarray:
    """Partition index per row for a shuffle: integers by value, anything else by a stable hash."""
    if pa.types.is_integer(column.type):
        vals = np.asarray(pc.fill_null(column, 0).to_numpy(zero_copy_only=False)).astype(np.uint64, copy=False)
        mixed = vals * np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing spreads consecutive ids
        return (mixed >> np.uint64(32)) % np.uint64(max(partitions, 1))
    return stable_hash64(column) % np.uint64(max(partitions, 1))


def concat(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t is not None]
    if not tables:
        return pa.table({})
    non_empty = [t for t in tables if t.num_rows] or tables[:1]
    return pa.concat_tables(non_empty, promote_options="default")


class InlineData:
    """GlobalData as a list of tables in this process: notebooks, tests and inline runs.

    It follows the same contract as the Ray implementation (including shuffle groups that hold
    several keys), so a stage that passes its inline tests behaves the same on a cluster."""

    def __init__(self, tables: list[pa.Table]):
        self.tables = [t for t in tables if t is not None]

    def map_batches(self, fn: BatchFn) -> "InlineData":
        return InlineData([fn(t) for t in self.tables if t.num_rows])

    def aggregate(self, partial: BatchFn, combine: Callable[[pa.Table], T], merge: BatchFn | None = None) -> T:
        parts = [partial(t) for t in self.tables if t.num_rows]
        if merge is not None:   # the tree of the Ray executor, in this process: runs of COMBINE_FAN_IN
            while len(parts) > COMBINE_FAN_IN:
                parts = [merge(concat(parts[i:i + COMBINE_FAN_IN])) for i in range(0, len(parts), COMBINE_FAN_IN)]
        return combine(concat(parts))

    def shuffle_reduce(self, key: str, fn: BatchFn, partitions: int, block_rows: int | None = None) -> "InlineData":
        table = concat(self.tables)
        if table.num_rows == 0:
            return InlineData([])
        part = partition_of(table.column(key), partitions)
        out = []
        for p in np.unique(part):
            group = table.filter(pa.array(part == p))
            out.append(fn(sort_for_reduce(group, key)))
        return InlineData(out)

    def union(self, other: "InlineData") -> "InlineData":
        return InlineData(self.tables + other.tables)

    def count(self) -> int:
        return sum(t.num_rows for t in self.tables)

    def gather(self) -> pa.Table:
        return concat(self.tables)

    def materialize(self) -> "InlineData":
        return self


def as_table(decisions: Any) -> pa.Table:
    """Decisions from a global step as one table (inline executor / notebooks)."""
    if isinstance(decisions, pa.Table):
        return decisions
    return decisions.gather()


@dataclass
class StepResult:
    """What a whole-dataset step returns when it has numbers for report.json: its decisions (a
    GlobalData or a table) and those numbers. A step computes them on the driver from its
    aggregates (GlobalData.aggregate: partials on the workers, merged there), so they reach the
    report as a return value, never as state left on a stage object that only one process sees.
    A step without numbers returns its decisions alone."""
    decisions: Any
    report: dict[str, Any] = field(default_factory=dict)


def step_result(returned: Any) -> StepResult:
    """A global step's return value as a StepResult (decisions alone: no numbers)."""
    return returned if isinstance(returned, StepResult) else StepResult(returned)


def ensure_data(decisions: Any) -> Any:
    """A global step may return a plain table (small steps); wrap it so callers see one type."""
    return InlineData([decisions]) if isinstance(decisions, pa.Table) else decisions
