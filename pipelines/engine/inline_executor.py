"""The inline executor: every stage of a run in this process (notebooks, debugging, small runs, and
``executor="auto"`` below a size where Ray's fixed cost per stage dominates)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pyarrow.compute as pc

from curate.base import Stage
from curate.base import inline as E
from curate.base import records as R
from curate.base.global_data import COMBINE_FAN_IN, InlineData, as_table, concat
from pipelines.engine.heap import release_freed_memory
from pipelines.engine.links import apply_alone, apply_link, chain_schema, without_dropped_at
from pipelines.engine.links import apply_decisions as link_decisions
from pipelines.engine.progress import DISABLED, LocalCounter, Progress, RowCounter, entered_rows, shuffle_phase, task_bytes
from pipelines.engine.tables import count_rows, global_columns, write_table

# Inline runs coalesce small input files into parts of at least this many rows, so a glob over
# thousands of one-sample tars does not become thousands of parquet files in every stage.
MIN_ROWS_PER_PART = 50_000


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

    def shuffle_reduce(self, key: str, fn: Any, partitions: int, block_rows: int | None = None) -> "PhasedInlineData":
        with self.progress.phase(shuffle_phase(key)):
            return self._same(super().shuffle_reduce(key, fn, partitions, block_rows))

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
            table = without_dropped_at(pa.concat_tables([pq.read_table(f) for f in group], promote_options="default"))
            if head.reads_sources:
                size = head.resources.batch_size
                parts = [_counted_read(head, table.slice(j, size), counter) for j in range(0, table.num_rows, size)]
                table = pa.concat_tables([R.BASE_SCHEMA.empty_table(), *parts])
            elif len(stages) == 1:
                size = head.resources.batch_size
                parts = [_counted(apply_alone, head, table.slice(j, size), counter)
                         for j in range(0, table.num_rows, size)]
                table = pa.concat_tables([head.output_schema(table.schema).empty_table(), *parts])
            else:
                for position, stage in enumerate(stages):
                    schema = chain_schema([stage], table.schema)
                    size = stage.resources.batch_size
                    last = counter if position == len(stages) - 1 else None
                    parts = [_counted(apply_link, stage, table.slice(j, size), last, stage.context.stage_index,
                                      position > 0) for j in range(0, table.num_rows, size)]
                    table = pa.concat_tables([schema.empty_table(), *parts])
            write_table(table, out / f"part-{i:05d}.parquet")

    def map_stage(self, stage: Stage, files: list[str], out: Path) -> None:
        self.map_stages([stage], files, out)

    def global_data(self, stage: Stage, files: list[str], rows: int | None = None) -> InlineData:
        ds = pads.dataset(files, format="parquet")
        table = ds.to_table(columns=global_columns(stage, ds.schema), filter=pc.field(R.STATUS) == R.KEPT)
        return PhasedInlineData([E.global_input(stage, without_dropped_at(table))], self.progress)

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
        with self.progress.phase("apply", inputs.num_rows if only_kept else count_rows(files), counter) as phase:
            for i, f in enumerate(files):
                rows = without_dropped_at(E.only_kept(pq.read_table(f))) if only_kept else pq.read_table(f)
                write_table(link_decisions(rows, table, schema), out / f"part-{i:05d}.parquet")
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
