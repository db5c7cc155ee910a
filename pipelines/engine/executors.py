"""Executors: who runs a stage. Ray Data on a laptop or a cluster (``pipelines.engine.ray_data``), or inline.

Every stage goes through the same three calls, whatever it is (ingest, a filter, the mixture, the
shard writer): ``map_stages`` (the per-batch step, or reading files for a source stage; several
consecutive per-row stages as one fused pass — see ``curate.base.inline.apply_link``),
``global_data`` (a ``GlobalData`` handle on the kept rows for a whole-dataset step) and
``apply_decisions`` (the global step's answer joined back by ``_ordinal``). The runner does
everything else (resume, accounting, reports), so the executors produce the same rows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from curate.base import Stage
from curate.base import inline as E
from curate.base import records as R
from curate.base.diskspace import writing
from curate.base.global_data import COMBINE_FAN_IN, InlineData, as_table, concat
from pipelines.engine.heap import release_freed_memory
from pipelines.engine.progress import DISABLED, LocalCounter, Progress, RowCounter, entered_rows, shuffle_phase, task_bytes

# No dictionary pages: most columns (keys, texts, paths, JSON) are nearly all distinct, where pyarrow's
# dictionary attempt is wasted work; zstd on plain pages writes a 100k-row stage part 2.6x faster and
# 17% smaller, and still squeezes the few repetitive columns (status, source, category).
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "use_dictionary": False}
# Rows per row group of the files a stage writes. A row group is the unit a Ray read task takes
# (pipelines.engine.ray_files.read_files), so a 250k-row part is read by ~15 tasks, not one.
ROW_GROUP_ROWS = 16_384

# Inline runs coalesce small input files into parts of at least this many rows, so a glob over
# thousands of one-sample tars does not become thousands of parquet files in every stage.
MIN_ROWS_PER_PART = 50_000


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


def global_columns(stage: Stage, schema: pa.Schema) -> list[str] | None:
    """Columns a global step reads: key, _ordinal, _status and the stage's global_columns (None: all)."""
    cols = stage.global_columns or ()
    if tuple(cols) == ("*",):
        return None
    return ["key", R.ORDINAL, R.STATUS] + [c for c in cols if c in schema.names and c not in ("key", R.ORDINAL)]


class Executor(Protocol):
    name: str
    progress: Progress   # where global steps show their phases (the runner sets it)

    def new_counter(self, directory: Path) -> RowCounter:
        """A counter the workers of one pass add their batches' rows to (pipelines.engine.progress); it may
        keep files under `directory` (a fresh path inside the stage's temporary directory)."""
    def map_stages(self, stages: list[Stage], files: list[str], out: Path, counter: RowCounter | None = None) -> None:
        """Write ``stages``' per-batch steps applied in turn to `files` (one pass; a fused chain when
        there are several: rows dropped inside it carry ``_dropped_at``). `counter`: gets the rows
        that entered the pass (a source stage: the rows read and the source bytes), per batch."""
    def global_data(self, stage: Stage, files: list[str], rows: int | None = None) -> Any:
        """The kept rows of `files` as a GlobalData; `rows`: their number when the caller knows it."""
    def summary_parts(self, stage: Stage, files: list[str], columns: list[str], rows: Any) -> pa.Table:
        """``stage.summary_partial`` of the rows of `files` selected by the filter expression `rows`
        (only `columns`), per batch where the rows are, merged there by ``summary_merge``
        (GlobalData.aggregate's tree): what ``stage.summarize`` reads."""
    def apply_decisions(self, stage: Stage, files: list[str], decisions: Any, schema: pa.Schema, out: Path,
                        only_kept: bool = False) -> int:
        """Write the rows (`only_kept`: only the kept rows of `files`) with their decisions applied;
        return how many repeat rows were added."""
    def close(self) -> None: ...


def _coalesced(files: list[str]) -> list[list[str]]:
    """Consecutive files grouped until each group holds at least MIN_ROWS_PER_PART rows."""
    groups: list[list[str]] = []
    rows = MIN_ROWS_PER_PART
    for f in files:
        if rows >= MIN_ROWS_PER_PART:
            groups.append([])
            rows = 0
        groups[-1].append(f)
        rows += pq.ParquetFile(f).metadata.num_rows
    return groups


class PhasedInlineData(InlineData):
    """InlineData whose shuffles show as progress phases (inline, a shuffle runs when it is called)."""

    def __init__(self, tables: list[pa.Table], progress: Progress = DISABLED):
        super().__init__(tables)
        self.progress = progress

    def _same(self, data: InlineData) -> "PhasedInlineData":
        return PhasedInlineData(data.tables, self.progress)

    def map_batches(self, fn: Any) -> "PhasedInlineData":
        return self._same(super().map_batches(fn))

    def shuffle_reduce(self, key: str, fn: Any, partitions: int) -> "PhasedInlineData":
        with self.progress.phase(shuffle_phase(key)):
            return self._same(super().shuffle_reduce(key, fn, partitions))

    def union(self, other: InlineData) -> "PhasedInlineData":
        return self._same(super().union(other))


class InlineExecutor:
    """Everything in this process: notebooks, debugging, small runs."""
    name = "inline"
    progress: Progress = DISABLED

    def new_counter(self, directory: Path | None = None) -> LocalCounter:
        return LocalCounter()   # in this process: nothing on disk

    def map_stages(self, stages: list[Stage], files: list[str], out: Path, counter: RowCounter | None = None) -> None:
        """Part by part (>= MIN_ROWS_PER_PART rows), each stage in turn over the part in its own batch
        size: memory is one part, whatever the dataset size and the chain length."""
        counter = counter or LocalCounter()
        head = stages[0]
        for i, group in enumerate(_coalesced(files)):
            # upstream's _dropped_at (a fused chain's bookkeeping) is no input of this pass
            table = E.without_dropped_at(pa.concat_tables([pq.read_table(f) for f in group], promote_options="default"))
            if head.reads_sources:
                size = head.resources.batch_size
                parts = [_counted_read(head, table.slice(j, size), counter) for j in range(0, table.num_rows, size)]
                table = pa.concat_tables([R.BASE_SCHEMA.empty_table(), *parts])
            elif len(stages) == 1:
                size = head.resources.batch_size
                parts = [_counted(E.apply_batch, head, table.slice(j, size), counter)
                         for j in range(0, table.num_rows, size)]
                table = pa.concat_tables([head.output_schema(table.schema).empty_table(), *parts])
            else:
                for position, stage in enumerate(stages):
                    schema = E.chain_schema([stage], table.schema)
                    size = stage.resources.batch_size
                    last = counter if position == len(stages) - 1 else None
                    parts = [_counted(E.apply_link, stage, table.slice(j, size), last, stage.context.stage_index,
                                      position > 0) for j in range(0, table.num_rows, size)]
                    table = pa.concat_tables([schema.empty_table(), *parts])
            write_table(table, out / f"part-{i:05d}.parquet")

    def map_stage(self, stage: Stage, files: list[str], out: Path) -> None:
        self.map_stages([stage], files, out)

    def global_data(self, stage: Stage, files: list[str], rows: int | None = None) -> InlineData:
        ds = pads.dataset(files, format="parquet")
        table = ds.to_table(columns=global_columns(stage, ds.schema), filter=pc.field(R.STATUS) == R.KEPT)
        return PhasedInlineData([E.global_input(stage, E.without_dropped_at(table))], self.progress)

    def summary_parts(self, stage: Stage, files: list[str], columns: list[str], rows: Any) -> pa.Table:
        """Streamed batch by batch in this process; every COMBINE_FAN_IN partials are merged into
        one as they come, so only O(COMBINE_FAN_IN) partials are held at a time."""
        parts: list[pa.Table] = []
        for batch in pads.dataset(files, format="parquet").to_batches(columns=columns, filter=rows):
            parts.append(stage.summary_partial(pa.Table.from_batches([batch])))
            if len(parts) >= COMBINE_FAN_IN:
                parts = [stage.summary_merge(concat(parts))]
            release_freed_memory()
        return concat(parts)

    def apply_decisions(self, stage: Stage, files: list[str], decisions: Any, schema: pa.Schema, out: Path,
                        only_kept: bool = False) -> int:
        table = as_table(decisions)
        inputs = self.global_data(stage, files).gather()
        E.validate_decisions(stage, inputs, table)
        counter = LocalCounter()
        with self.progress.phase("apply", inputs.num_rows if only_kept else rows_in(files), counter) as phase:
            for i, f in enumerate(files):
                rows = E.without_dropped_at(E.only_kept(pq.read_table(f))) if only_kept else pq.read_table(f)
                write_table(E.apply_decisions(rows, table, schema), out / f"part-{i:05d}.parquet")
                counter.add(rows.num_rows)
            phase.finish(counter.rows)
        return E.count_repeats(table)

    def close(self) -> None:
        pass


def _counted_read(stage: Stage, tasks: pa.Table, counter: RowCounter) -> pa.Table:
    rows = stage.read_tasks(tasks)
    counter.add(rows.num_rows, task_bytes(tasks))
    return rows


def _counted(apply: Any, stage: Stage, batch: pa.Table, counter: RowCounter | None, *link: Any) -> pa.Table:
    """`apply` on a batch; then the batch's rows that entered the pass, to `counter` (the last stage's)."""
    out = apply(stage, batch, *link)
    if counter is not None:
        counter.add(entered_rows(batch, carries_dropped=bool(link and link[1])))
    return out


def rows_in(files: list[str], kept_only: bool = False) -> int:
    """Rows of `files` (`kept_only`: their kept rows), from the footers or the status column."""
    if kept_only:
        return pads.dataset(files, format="parquet").count_rows(filter=pc.field(R.STATUS) == R.KEPT) if files else 0
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def make_executor(name: str) -> Executor:
    if name == "ray":
        from pipelines.engine.ray_data import RayExecutor
        return RayExecutor()
    if name == "inline":
        return InlineExecutor()
    raise ValueError(f"unknown executor {name!r} (ray, inline)")
