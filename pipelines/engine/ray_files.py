"""Where a stage's rows live on disk under Ray, and how a global step's decisions find them.

Writing: Ray's own ``write_parquet`` hands its blocks to ``pyarrow.dataset.write_dataset`` with
threads on, which does not keep row order inside a file (a 5M-row run had 4096-row chunks of one
source file shuffled, and files over interleaving ``_ordinal`` ranges). ``write_in_order`` writes
every bundle of ROWS_PER_FILE rows itself, in its order, as part of the stage's own (fused) tasks,
and names the files in dataset order, so a stage's files normally hold its rows in input order —
``_ordinal`` order for original rows.

Routing: a decision goes to the file holding its row (decisions first gathered into blocks of
DECISION_BLOCK_ROWS, so the shuffle by file has few pieces) by a binary search over the files' first
non-negative ``_ordinal`` (from the parquet footers). Two cases need a lookup instead — a narrow
shuffle on the row's ``_ordinal`` of the decisions against (``_ordinal``, file) rows read from the
files: repeat rows that the mixture appended carry negative, hash-derived ordinals that no range
locates (only those are looked up), and when Ray handed blocks over out of order the files' ranges
interleave and every decision is looked up — correct either way, one shuffle slower in the second.

Reading: ``read_files`` is a Ray Data datasource with one read task per run of whole row groups
(the writers' row groups are tables.ROW_GROUP_ROWS rows): runs of at most MAP_TASK_ROWS rows for a
per-row pass, so every core gets work, and a file per task for a global step, since every block
is one more map task of each shuffle. Blocks come out in file order. Ray's own ``read_parquet`` is
not used: its DataSourceV2 reader hands blocks over as footers complete (out of file order even
with preserve_order) and starts a pool of footer-reading actors for every read, each a fresh
worker process that imports Ray Data — on 2 cores a quarter of a 1M-row run's CPU went to those.
Nothing here holds per-sample data on the driver.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.base import Stage
from curate.base import inline as E
from curate.base import records as R
from curate.base.global_data import concat, partition_of
from pipelines.engine import shuffles
from pipelines.engine.links import apply_decisions as link_decisions
from pipelines.engine.links import without_dropped_at
from pipelines.engine.tables import write_table

FILE = "_file"          # which input file of the global step a decision belongs to
LOOKUP = "_lookup"      # marks the lookup rows (an _ordinal and its file) in the routing shuffle
TARGET = "_target"      # the _ordinal a decision is about, the key of the routing shuffle
PART = "_part"          # its hash partition
MAP_TASK_ROWS = 16_384   # rows per read task of a per-row pass: enough tasks to keep every core busy
ROWS_PER_FILE = 100_000  # a file is one task of the next global step's apply: its rows bound that task's memory
# Decisions per block while they are routed (narrow rows: ~30-60 MB). The apply's groupby by file is
# a sort shuffle of decision blocks x files pieces, each an object the driver owns while it runs
# (~20-35 KB of its memory apiece): decisions in the blocks of the rows they came from made ~3,500
# pieces at 5M rows (+240 MB on the driver), a block per DECISION_BLOCK_ROWS ~36.
DECISION_BLOCK_ROWS = 1_000_000
STAGING = ".blocks"


def _read_unit(path: str, number: int, first: int, count: int, columns: list[str] | None,
               with_file: bool) -> list[pa.Table]:
    """One read unit's rows; `with_file`: plus FILE (`number`) on every row."""
    parquet = pq.ParquetFile(path)
    table = parquet.read_row_groups(range(first, first + count), columns=columns) if count else \
        parquet.schema_arrow.empty_table().select(columns or parquet.schema_arrow.names)
    if with_file:
        table = table.append_column(FILE, pa.array(np.full(table.num_rows, number, dtype=np.int64)))
    return [table]


def read_units(files: list[str], numbers: list[int], task_rows: int) -> dict[str, list]:
    """Columns path, file number, first row group, row groups, rows, bytes: runs of consecutive row
    groups of one file of at most `task_rows` rows (a larger row group is a run alone), in file order;
    a file without row groups is one empty run, so that its schema still reaches the reader."""
    units: list[tuple[str, int, int, int, int, int]] = []
    for path, number in zip(files, numbers):
        meta, resolved = pq.ParquetFile(path).metadata, str(Path(path).resolve())
        first, rows, size = 0, 0, 0
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            if g > first and rows + group.num_rows > task_rows:
                units.append((resolved, number, first, g - first, rows, size))
                first, rows, size = g, 0, 0
            rows, size = rows + group.num_rows, size + group.total_byte_size
        units.append((resolved, number, first, meta.num_row_groups - first, rows, size))
    names = ("path", "number", "first", "groups", "rows", "bytes")
    return {name: [u[i] for u in units] for i, name in enumerate(names)}


def read_files(ray: Any, files: list[str], columns: list[str] | None = None, numbers: list[int] | None = None,
               task_rows: int = ROWS_PER_FILE) -> Any:
    """A Ray Dataset of the rows of `files` in file order, one read task per run of row groups of at
    most `task_rows` rows (module docstring); `columns`: only those; `numbers`: plus FILE on every
    row, numbers[i] for the rows of files[i]."""
    import ray.data
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    units = read_units(files, list(range(len(files))) if numbers is None else numbers, task_rows)

    class RowGroupRuns(Datasource):
        """The runs above as read tasks, with their row counts and sizes from the footers."""

        def estimate_inmemory_data_size(self) -> int:
            return sum(units["bytes"])

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[Any]:
            return [ReadTask(functools.partial(_read_unit, path, number, first, count, columns, numbers is not None),
                             BlockMetadata(num_rows=rows, size_bytes=size, input_files=[path], exec_stats=None))
                    for path, number, first, count, rows, size in zip(*units.values())]

    # As many blocks as runs: left to itself Ray splits each task's output to reach ~200 blocks, and
    # every block is one more map task of each later shuffle (a 1M-row mixture took 5x as long).
    return ray.data.read_datasource(RowGroupRuns(), override_num_blocks=max(1, len(units["path"])))


def _write_bundle(batch: pa.Table, staging: str, schema: pa.Schema | None) -> pa.Table:
    """One bundle as one file under a unique name; returns its name. A retried task writes a second
    file, which write_in_order never renames and removes with the staging directory."""
    if batch.num_rows == 0:
        return pa.table({"name": pa.array([], pa.string())})
    if schema is not None and not batch.schema.equals(schema):
        batch = batch.select(schema.names).cast(schema)   # Ray may type an all-null column as null
    name = f"{uuid.uuid4().hex}.parquet"
    tmp = Path(staging) / f".{name}.tmp"
    write_table(batch, tmp)
    os.replace(tmp, Path(staging) / name)
    return pa.table({"name": [name]})


def write_in_order(ray: Any, ds: Any, out: Path, schema: pa.Schema | None, per_block: bool = False) -> None:
    """Write `ds` under `out` as part-00000.parquet, ... in dataset order; the driver sees one file
    name per ROWS_PER_FILE rows. `per_block`: a file per block instead (a source stage: a block is
    one batch of source parts, already bounded, and bundling blocks would make Ray's fused operator
    hand several batches' worth of parts to one task). `out` is inside the run's fresh temporary
    stage directory, so the staging directory cannot exist yet (mkdir fails loudly if it does)."""
    staging = out / STAGING
    staging.mkdir(parents=True)
    written = concat(ray.get(ds.map_batches(
        _write_bundle, batch_size=None if per_block else ROWS_PER_FILE, batch_format="pyarrow",
        fn_kwargs={"staging": str(staging.resolve()), "schema": schema}).to_arrow_refs()))
    for i, name in enumerate(written.column("name").to_pylist() if written.num_rows else []):
        os.replace(staging / name, out / f"part-{i:05d}.parquet")
    shutil.rmtree(staging)   # only a retried task's orphaned file can be left in it


def _non_negative_range(meta: pq.FileMetaData, path: str) -> tuple[tuple[int, int] | None, bool]:
    """((min, max) of the file's non-negative _ordinals, or None without any), whether it holds
    negative ones (repeats). Footer statistics when they suffice, else the column."""
    col = next(c for c in range(meta.num_columns) if meta.schema.column(c).path == R.ORDINAL)   # a leaf
    stats = [meta.row_group(g).column(col).statistics for g in range(meta.num_row_groups)
             if meta.row_group(g).num_rows]
    if not stats:
        return None, False
    if all(st is not None and st.has_min_max for st in stats) and min(st.min for st in stats) >= 0:
        return (min(st.min for st in stats), max(st.max for st in stats)), False
    ords = pq.read_table(path, columns=[R.ORDINAL]).column(0)
    originals = pc.filter(ords, pc.greater_equal(ords, 0))
    has_repeats = len(originals) < len(ords)
    if len(originals) == 0:
        return None, has_repeats
    return (pc.min(originals).as_py(), pc.max(originals).as_py()), has_repeats


class FileIndex:
    """The files of a global step's input: first non-negative _ordinal of each, and which hold repeats.
    `by_range` is False when the files' ranges interleave: then every decision is routed by lookup."""

    def __init__(self, files: list[str]):
        ranges, self.with_repeats = [], []
        for i, f in enumerate(files):
            span, repeats = _non_negative_range(pq.ParquetFile(f).metadata, f)
            if repeats:
                self.with_repeats.append(i)
            if span is not None:
                ranges.append((*span, i))
        ranges.sort()
        self.overlap = next((f"files {files[a]} and {files[b]} hold overlapping _ordinal ranges"
                             for (_, hi, a), (lo, _, b) in zip(ranges, ranges[1:]) if lo <= hi), None)
        self.by_range = self.overlap is None
        self.starts = [r[0] for r in ranges] if self.by_range else []
        self.owners = [r[2] for r in ranges] if self.by_range else []


def _targets(batch: pa.Table) -> np.ndarray:
    """The row each decision is about: its own _ordinal, or for a repeat being added the row it copies."""
    target = batch.column(R.ORDINAL)
    if E.REPEAT_SOURCE in batch.column_names:
        target = pc.coalesce(batch.column(E.REPEAT_SOURCE), target)
    return np.asarray(target.to_numpy(zero_copy_only=False), dtype=np.int64)


def tag_file(batch: pa.Table, starts: list[int], owners: list[int]) -> pa.Table:
    """Each decision with the index of the file holding its row; -1 where the ranges cannot tell (a
    decision about an existing repeat row, negative _ordinal; or every row when there are no ranges)."""
    target = _targets(batch)
    if not starts:
        return batch.append_column(FILE, pa.array(np.full(len(target), -1, dtype=np.int64)))
    pos = np.searchsorted(np.asarray(starts, dtype=np.int64), target, side="right") - 1
    if (pos[target >= 0] < 0).any():
        raise E.AccountingError("a decision names an _ordinal before every row of the stage")
    owner = np.where(target >= 0, np.asarray(owners, dtype=np.int64)[np.maximum(pos, 0)], -1)
    return batch.append_column(FILE, pa.array(owner, pa.int64()))


def _located(batch: pa.Table, known: bool) -> pa.Table:
    """The decisions whose file the ordinal ranges gave (`known`), or the others, marked for lookup."""
    found = pc.greater_equal(batch.column(FILE), 0)
    if known:
        return batch.filter(found)
    batch = batch.filter(pc.invert(found))
    return batch.append_column(TARGET, pa.array(_targets(batch), pa.int64())) \
        .append_column(LOOKUP, pa.array(np.zeros(batch.num_rows, dtype=bool)))


def _lookup_rows(batch: pa.Table, decision_schema: pa.Schema, only_repeats: bool) -> pa.Table:
    """Lookup rows (an _ordinal held by a file, that file), shaped like the decisions marked for lookup."""
    ords, where = batch.column(R.ORDINAL), batch.column(FILE)
    if only_repeats:
        here = pc.less(ords, 0)
        ords, where = pc.filter(ords, here), pc.filter(where, here)
    n = len(ords)
    cols = {name: pa.nulls(n, typ) for name, typ in zip(decision_schema.names, decision_schema.types)}
    cols[FILE] = where
    cols[TARGET] = ords.cast(pa.int64())
    cols[LOOKUP] = pa.array(np.ones(n, dtype=bool))
    return pa.table(cols)


def _add_part(batch: pa.Table, partitions: int) -> pa.Table:
    return batch.append_column(PART, pa.array(partition_of(batch.column(TARGET), partitions).astype(np.int64)))


def _resolve(group: pa.Table) -> pa.Table:
    """One hash partition of lookup rows and decisions: each decision with the file its lookup row
    names, matched in one vectorised step (a groupby per _ordinal would call Python per row)."""
    is_lookup = group.column(LOOKUP)
    lookups, decisions = group.filter(is_lookup), group.filter(pc.invert(is_lookup))
    decisions = decisions.drop_columns([LOOKUP, PART])
    if decisions.num_rows == 0:
        return decisions.drop_columns([TARGET])
    held = lookups.column(TARGET)
    if len(pc.unique(held)) != len(held):
        raise E.AccountingError("an _ordinal is held by more than one file of the stage")
    pos = pc.index_in(decisions.column(TARGET), value_set=held)
    if pos.null_count:
        raise E.AccountingError("a decision names an _ordinal that no file of the stage holds")
    files = lookups.column(FILE).take(pos)
    return decisions.set_column(decisions.schema.get_field_index(FILE), FILE, files).drop_columns([TARGET])


def route(ray: Any, decisions: Any, files: list[str]) -> Any:
    """The decisions dataset with FILE set on every row (see the module docstring)."""
    index = FileIndex(files)
    tagged = decisions.map_batches(tag_file, batch_format="pyarrow", batch_size=DECISION_BLOCK_ROWS,
                                   fn_kwargs={"starts": index.starts, "owners": index.owners})
    if index.by_range and not index.with_repeats:
        return tagged
    if not index.by_range:   # Ray handed the writer blocks out of order: correct, one more shuffle
        logging.getLogger("mmcurate").warning("%s; decisions routed by lookup", index.overlap)
    looked_up = index.with_repeats if index.by_range else list(range(len(files)))
    tagged = tagged.materialize()
    schema = tagged.schema().base_schema
    located = tagged.map_batches(_located, batch_format="pyarrow", fn_kwargs={"known": True})
    unknown = tagged.map_batches(_located, batch_format="pyarrow", fn_kwargs={"known": False})
    lookup = read_files(ray, [files[i] for i in looked_up], [R.ORDINAL], numbers=looked_up) \
        .map_batches(_lookup_rows, batch_format="pyarrow",
                     fn_kwargs={"decision_schema": schema, "only_repeats": index.by_range})
    partitions = min(256, max(1, len(looked_up)))
    blocks = tagged.num_blocks() + (shuffles.estimated_blocks(lookup) or len(looked_up))
    parted = shuffles.union(unknown, lookup) \
        .map_batches(_add_part, batch_format="pyarrow", fn_kwargs={"partitions": partitions})
    resolved = shuffles.group_map(parted, PART, partitions, _resolve, blocks, batch_format="pyarrow")
    return shuffles.union(located, resolved)


def apply_file(group: pa.Table, files: list[str], out: str, schema: pa.Schema, only_kept: bool, token: str,
               stage_cls: type[Stage], config: Any, context: Any, worker_stage: Any, counter: Any = None) -> pa.Table:
    """One input file with its decisions applied, written under the same part number as the inline
    executor's; returns (file, repeats, rows). Rows without a decision: validate_decisions raises.
    `counter` (progress): gets the file's rows once written."""
    index = group.column(FILE)[0].as_py()
    decisions = group.filter(pc.is_valid(group.column(R.ORDINAL))).drop_columns([FILE])   # not the sentinel
    table = pq.read_table(files[index])
    if only_kept:   # the upstream's rows read in place: its dropped rows are no input of this stage
        table = without_dropped_at(E.only_kept(table))
    stage = worker_stage(token, stage_cls, config, context)
    E.validate_decisions(stage, E.global_input(stage, without_dropped_at(table)), decisions)
    write_table(link_decisions(table, decisions, schema), Path(out) / f"part-{index:05d}.parquet")
    if counter is not None:
        counter.add(table.num_rows)
    return pa.table({"file": [index], "repeats": [E.count_repeats(decisions)], "rows": [table.num_rows]})
