"""The steps of running one chain (pipelines.engine.fusion): its per-batch pass, the closing whole-dataset
step, and the per-stage summaries streamed from the written rows."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from curate import base as S
from curate.base import inline as E
from curate.base import records as R
from pipelines.engine.executors import Executor, data_files, write_table
from pipelines.engine.fusion import Member, rows_of
from pipelines.engine.progress import BYTES


def map_phase(stages: list[S.Stage], executor: Executor, files: list[str], pass1: Path,
               upstream_kept: int | None) -> None:
    """The chain's per-batch steps into `pass1` (an empty, typed part when nothing comes in), shown
    as a progress phase: rows done of `upstream_kept`, or for a source stage of an estimate from the
    source bytes read so far."""
    pass1.mkdir()
    if upstream_kept is None or upstream_kept:
        head, progress = stages[0], executor.progress
        name = "read" if head.reads_sources else stages[-1].batch_phase
        counter = executor.new_counter(pass1.parent / f".progress-{name}") if progress.enabled else None
        source_bytes = _source_bytes(files) if head.reads_sources and progress.enabled else None
        with progress.phase(name, upstream_kept, counter, source_bytes) as phase:
            executor.map_stages(stages, files, pass1, counter)
            phase.finish(count_rows(data_files(pass1)) if upstream_kept is None else upstream_kept)
        return
    schema = pq.read_schema(files[0]) if files else R.BASE_SCHEMA
    if E.DROPPED_AT in schema.names:
        schema = schema.remove(schema.get_field_index(E.DROPPED_AT))
    schema = E.chain_schema(stages, schema) if len(stages) > 1 else stages[0].output_schema(schema)
    write_table(schema.empty_table(), pass1 / "part-00000.parquet")

def _source_bytes(task_files: list[str]) -> int | None:
    """The bytes a source stage's tasks read in all (pipelines.engine.progress.with_task_bytes)."""
    ds = pads.dataset(task_files, format="parquet")
    if BYTES not in ds.schema.names:
        return None
    return int(pc.sum(ds.to_table(columns=[BYTES]).column(0)).as_py() or 0) or None


def global_step(stage: S.Stage, executor: Executor, files: list[str], out_data: Path, direct: bool,
                 upstream_kept: int | None) -> int:
    """The owner's whole-dataset step over `files` (its per-batch output, or with `direct` its
    upstream's rows, of which only the kept ones are its input); returns how many repeat rows it
    added."""
    if not stage.has_global_step():
        return 0
    out_data.mkdir()
    schema = pq.read_schema(files[0]) if files else R.BASE_SCHEMA
    if direct:
        if E.DROPPED_AT in schema.names:
            schema = schema.remove(schema.get_field_index(E.DROPPED_AT))
        schema = stage.output_schema(schema)
    kept = upstream_kept if direct else count_rows(files, kept_only=True)
    if kept:
        stage.ensure_setup()
        decisions = stage.global_step(executor.global_data(stage, files, kept))
        return executor.apply_decisions(stage, files, decisions, schema, out_data, only_kept=direct)
    if direct:
        write_table(schema.empty_table(), out_data / "part-00000.parquet")
    else:
        for f in files:
            os.replace(f, out_data / Path(f).name)
    return 0

def stage_summary(m: Member, files: list[str], owner: bool, executor: Executor) -> dict[str, Any]:
    """The stage's report numbers from its kept rows: ``summary_partial`` per batch where the rows
    are (Ray: on the workers), merged there by ``summary_merge`` (Executor.summary_parts), so that
    the driver holds a few merged partials, never a row per sample."""
    if not m.stage.summary_columns or not files:
        return {}
    ds, flt = rows_of(files, m.index, owner, kept=True)
    cols = [c for c in (*m.stage.summary_columns, "key", R.ORDINAL) if c in ds.schema.names]
    empty = m.stage.summary_partial(pa.schema([ds.schema.field(c) for c in cols]).empty_table())
    parts = executor.summary_parts(m.stage, files, cols, flt)
    return m.stage.summarize(pa.concat_tables([empty, parts], promote_options="default") if parts.num_rows else empty)


def count_rows(files: list[str], kept_only: bool = False) -> int:
    if not files:
        return 0
    ds = pads.dataset(files, format="parquet")
    return ds.count_rows(filter=pc.field(R.STATUS) == R.KEPT) if kept_only else ds.count_rows()
