"""Where a stage's rows live on disk under Ray, and how a global step's decisions find them.

Writing: Ray's own ``write_parquet`` hands its blocks to ``pyarrow.dataset.write_dataset`` with
threads on, which does not keep row order inside a file (a 5M-row run had 4096-row chunks of one
source file shuffled, and files over interleaving ``_ordinal`` ranges). ``write_in_order`` writes
every bundle of ROWS_PER_FILE rows itself, in its order, and names the files in dataset order, so
a stage's files hold its rows in input order — which is ``_ordinal`` order for original rows.

Routing: a decision goes to the file holding its row by a binary search over the files' first
non-negative ``_ordinal`` (from the parquet footers). Repeat rows that the mixture appended carry
negative, hash-derived ordinals that no range can locate; decisions about them are matched to
their file by a narrow shuffle on ``_ordinal`` against those rows' ordinals alone (only when some
file holds repeats). Nothing here holds per-sample data on the driver.
"""
from __future__ import annotations

import os
import posixpath
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
from curate.base.global_data import concat
from pipelines.executors import write_table

FILE = "_file"          # which input file of the global step a decision belongs to
LOOKUP = "_lookup"      # marks the rows of the repeat lookup in the routing shuffle
ROWS_PER_FILE = 100_000  # a file is one task of the next global step's apply: its rows bound that task's memory
STAGING = ".blocks"


def _write_bundle(batch: pa.Table, staging: str, schema: pa.Schema | None) -> pa.Table:
    """One bundle as one file under a unique name; returns (name, rows). A retried task writes a
    second file, which write_in_order never renames and removes with the staging directory."""
    if batch.num_rows == 0:
        return pa.table({"name": pa.array([], pa.string()), "rows": pa.array([], pa.int64())})
    if schema is not None and not batch.schema.equals(schema):
        batch = batch.select(schema.names).cast(schema)   # Ray may type an all-null column as null
    name = f"{uuid.uuid4().hex}.parquet"
    tmp = Path(staging) / f".{name}.tmp"
    write_table(batch, tmp)
    os.replace(tmp, Path(staging) / name)
    return pa.table({"name": [name], "rows": pa.array([batch.num_rows], pa.int64())})


def write_in_order(ray: Any, ds: Any, out: Path, schema: pa.Schema | None) -> int:
    """Write `ds` under `out` as part-00000.parquet, ... in dataset order (preserve_order is on);
    returns the number of rows. The driver sees one (name, rows) pair per file."""
    staging = out / STAGING
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    written = concat(ray.get(ds.map_batches(_write_bundle, batch_size=ROWS_PER_FILE, batch_format="pyarrow",
                                            fn_kwargs={"staging": str(staging.resolve()), "schema": schema})
                             .to_arrow_refs()))
    names = written.column("name").to_pylist() if written.num_rows else []
    for i, name in enumerate(names):
        os.replace(staging / name, out / f"part-{i:05d}.parquet")
    shutil.rmtree(staging)
    return int(pc.sum(written.column("rows")).as_py() or 0) if written.num_rows else 0


def _non_negative_range(meta: pq.FileMetaData, path: str) -> tuple[int, int, bool] | None:
    """(min, max) of the file's non-negative _ordinals and whether it holds negative ones (repeats);
    None for a file without original rows. Footer statistics when they suffice, else the column."""
    col = next(c for c in range(meta.num_columns) if meta.schema.column(c).path == R.ORDINAL)   # a leaf
    stats = [meta.row_group(g).column(col).statistics for g in range(meta.num_row_groups)
             if meta.row_group(g).num_rows]
    if not stats:
        return None
    if all(st is not None and st.has_min_max for st in stats) and min(st.min for st in stats) >= 0:
        return min(st.min for st in stats), max(st.max for st in stats), False
    ords = pq.read_table(path, columns=[R.ORDINAL]).column(0)
    originals = pc.filter(ords, pc.greater_equal(ords, 0))
    has_repeats = len(originals) < len(ords)
    if len(originals) == 0:
        return None if not has_repeats else (-1, -1, True)
    return pc.min(originals).as_py(), pc.max(originals).as_py(), has_repeats


class FileIndex:
    """The files of a global step's input: first non-negative _ordinal of each, and which hold repeats."""

    def __init__(self, files: list[str]):
        ranges, self.with_repeats = [], []
        for i, f in enumerate(files):
            found = _non_negative_range(pq.ParquetFile(f).metadata, f)
            if found is None:
                continue
            lo, hi, repeats = found
            if repeats:
                self.with_repeats.append(i)
            if lo >= 0:
                ranges.append((lo, hi, i))
        ranges.sort()
        for (_, hi, a), (lo, _, b) in zip(ranges, ranges[1:]):
            if lo <= hi:   # our writers keep input order: this is a bug, not bad input
                raise E.AccountingError(f"files {files[a]} and {files[b]} hold overlapping _ordinal ranges")
        self.starts = [r[0] for r in ranges]
        self.owners = [r[2] for r in ranges]


def tag_file(batch: pa.Table, starts: list[int], owners: list[int]) -> pa.Table:
    """Each decision with the index of the file holding its row (a repeat being added: the row it
    copies); -1 for a decision about an existing repeat row (negative _ordinal), found by lookup."""
    target = batch.column(R.ORDINAL)
    if E.REPEAT_SOURCE in batch.column_names:
        target = pc.coalesce(batch.column(E.REPEAT_SOURCE), target)
    target = np.asarray(target.to_numpy(zero_copy_only=False), dtype=np.int64)
    pos = np.searchsorted(np.asarray(starts, dtype=np.int64), target, side="right") - 1
    if (pos[target >= 0] < 0).any():
        raise E.AccountingError("a decision names an _ordinal before every row of the stage")
    owner = np.where(target >= 0, np.asarray(owners or [0], dtype=np.int64)[np.maximum(pos, 0)], -1)
    return batch.append_column(FILE, pa.array(owner, pa.int64()))


def _located(batch: pa.Table, known: bool) -> pa.Table:
    """The decisions whose file the ordinal ranges gave (`known`), or the others."""
    found = pc.greater_equal(batch.column(FILE), 0)
    return batch.filter(found if known else pc.invert(found))


def _repeat_rows(batch: pa.Table, names: dict[str, int], decision_schema: pa.Schema) -> pa.Table:
    """Lookup rows (_ordinal of a repeat row, its file), shaped like tagged decisions."""
    ords = batch.column(R.ORDINAL)
    here = pc.less(ords, 0)
    ords, where = pc.filter(ords, here), pc.filter(batch.column("path"), here)
    n = len(ords)
    cols = {name: pa.nulls(n, typ) for name, typ in zip(decision_schema.names, decision_schema.types)}
    cols[R.ORDINAL] = ords.cast(pa.int64())
    cols[FILE] = pa.array([names[posixpath.basename(p)] for p in where.to_pylist()], pa.int64())
    cols[LOOKUP] = pa.array([True] * n, pa.bool_())
    return pa.table(cols)


def _mark_decision(batch: pa.Table) -> pa.Table:
    return batch.append_column(LOOKUP, pa.array([False] * batch.num_rows, pa.bool_()))


def _resolve_repeats(group: pa.Table) -> pa.Table:
    """One _ordinal's lookup row and decision: the decision with the lookup's file."""
    is_lookup = group.column(LOOKUP).to_numpy(zero_copy_only=False)
    decisions = group.filter(pa.array(~is_lookup))
    if decisions.num_rows == 0:
        return decisions.drop_columns([LOOKUP])
    files = group.filter(pa.array(is_lookup)).column(FILE).to_pylist()
    if len(files) != 1:
        raise E.AccountingError(f"a decision names repeat row {group.column(R.ORDINAL)[0]} held by {len(files)} files")
    return decisions.set_column(decisions.schema.get_field_index(FILE), FILE,
                                pa.array(files * decisions.num_rows, pa.int64())).drop_columns([LOOKUP])


def route(ray: Any, decisions: Any, files: list[str]) -> Any:
    """The decisions dataset with FILE set on every row (see the module docstring)."""
    index = FileIndex(files)
    tagged = decisions.map_batches(tag_file, batch_format="pyarrow",
                                   fn_kwargs={"starts": index.starts, "owners": index.owners})
    if not index.with_repeats:
        return tagged
    import ray.data
    tagged = tagged.materialize()
    schema = tagged.schema().base_schema
    located = tagged.map_batches(_located, batch_format="pyarrow", fn_kwargs={"known": True})
    unknown = tagged.map_batches(_located, batch_format="pyarrow", fn_kwargs={"known": False}) \
        .map_batches(_mark_decision, batch_format="pyarrow")
    names = {Path(files[i]).name: i for i in index.with_repeats}   # distinct: one stage directory
    lookup = ray.data.read_parquet([str(Path(files[i]).resolve()) for i in index.with_repeats],
                                   include_paths=True).select_columns([R.ORDINAL, "path"]) \
        .map_batches(_repeat_rows, batch_format="pyarrow", fn_kwargs={"names": names, "decision_schema": schema})
    resolved = unknown.union(lookup).groupby(R.ORDINAL, num_partitions=min(256, max(1, len(names)))) \
        .map_groups(_resolve_repeats, batch_format="pyarrow")
    return located.union(resolved)


def apply_file(group: pa.Table, files: list[str], out: str, schema: pa.Schema, only_kept: bool, token: str,
               stage_cls: type[Stage], config: Any, context: Any, worker_stage: Any) -> pa.Table:
    """One input file with its decisions applied, written under the same part number as the inline
    executor's; returns (file, repeats). Rows without a decision: validate_decisions raises."""
    index = group.column(FILE)[0].as_py()
    decisions = group.filter(pc.is_valid(group.column(R.ORDINAL))).drop_columns([FILE])   # not the sentinel
    table = pq.read_table(files[index])
    if only_kept:   # the upstream's rows read in place: its dropped rows are no input of this stage
        table = E.without_dropped_at(E.only_kept(table))
    stage = worker_stage(token, stage_cls, config, context)
    E.validate_decisions(stage, E.global_input(stage, E.without_dropped_at(table)), decisions)
    write_table(E.apply_decisions(table, decisions, schema), Path(out) / f"part-{index:05d}.parquet")
    return pa.table({"file": [index], "repeats": [E.count_repeats(decisions)]})
