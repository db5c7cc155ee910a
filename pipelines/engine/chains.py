"""Running one chain (pipelines.engine.fusion) over its input rows: its per-batch pass, the closing
whole-dataset step, the rejects of each stage and the per-stage summaries streamed from the written
rows. What the runner gets back (``ChainResult``) is counts and summaries; it does resume, markers
and the report with them."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from curate import base as S
from curate.base import inline as E
from curate.base import records as R
from curate.base.global_data import step_result
from pipelines.engine.executor import AUTO_INLINE_ROWS, Executor
from curate.documents.per_image import removal_stage
from pipelines.engine import removed_images
from pipelines.engine.fusion import Member, rows_of, write_rejects
from pipelines.engine.links import chain_schema, schema_without_dropped_at
from pipelines.engine.progress import BYTES, with_task_bytes
from pipelines.engine.tables import count_rows, data_files, write_table


@dataclass
class ChainInput:
    """The rows a chain reads: its upstream's data files, or for a source stage a file of read tasks."""
    files: list[str]
    upstream_kept: int | None   # the upstream's kept rows (the chain's input); None: a source stage
    tasks: pa.Table | None = None

    def size_hint(self) -> int | None:
        """About how many rows come in: the upstream's kept rows, or for a source stage its bytes / 1 KiB."""
        return self.upstream_kept if self.tasks is None else _source_rows_hint(self.tasks)


@dataclass
class ChainResult:
    """What running a chain wrote into the owner's temporary ``data/`` and each stage's rejects."""
    rows_in: int                 # rows that entered the chain's first stage
    repeated: int                # repeat rows the closing global step added
    kept: int                    # rows the owner kept
    tallies: dict[int, dict[str, Any]]        # per stage index: rejected / quarantined by reason
    # per stage index: its numbers for report.json (summarize, then the global step's StepResult.report)
    summaries: dict[int, dict[str, Any]] = field(default_factory=dict)
    # per stage index: images it took out of documents, by reason (pipelines.engine.removed_images)
    removed: dict[int, dict[str, int]] = field(default_factory=dict)


def chain_input(head: Member, upstream_dir: Path | None, with_task_bytes_column: bool) -> ChainInput:
    """A source stage's read tasks written into its temporary directory (with the bytes each reads
    when progress estimates its rows from them), or the upstream stage's data files."""
    if head.stage.reads_sources:
        tasks = head.stage.input_table()
        if with_task_bytes_column:   # a stat per source file: ingest's progress estimates its rows from bytes
            tasks = with_task_bytes(tasks)
        write_table(tasks, head.tmp / "tasks.parquet")
        return ChainInput([str(head.tmp / "tasks.parquet")], None, tasks)
    files = data_files(upstream_dir / "data")
    return ChainInput(files, count_rows(files, kept_only=True))


def run_chain(group: list[Member], source: ChainInput, executor: Executor) -> ChainResult:
    """Run a chain (one stage, or per-row stages fused into one pass, ending with at most one global
    step) into its owner's temporary ``data/`` and every stage's ``rejects.parquet``."""
    owner = group[-1]
    stages = [m.stage for m in group]
    files, upstream_kept = source.files, source.upstream_kept
    # A whole-dataset stage without a per-batch step (pack, shards, mixture alone) reads its
    # upstream's rows in place: a per-batch pass would only copy them.
    direct = (upstream_kept is not None and len(group) == 1 and owner.stage.has_global_step()
              and not owner.stage.has_batch_step())
    pass1 = owner.tmp / ("pass1" if owner.stage.has_global_step() else "data")
    if not direct:
        map_phase(stages, executor, files, pass1, upstream_kept)
        files = data_files(pass1)
    n_in = count_rows(data_files(pass1)) if upstream_kept is None else upstream_kept
    summaries = {m.index: stage_summary(m, files, owner=False, executor=executor) for m in group[:-1]}
    repeated, step_report = global_step(owner.stage, executor, files, owner.tmp / "data", direct, upstream_kept)
    if pass1.name == "pass1" and pass1.exists():
        shutil.rmtree(pass1)
    data = owner.tmp / "data"
    tallies = write_rejects(data, {m.index: m.tmp / "rejects.parquet" for m in group}, owner.index)
    removed = removed_images.write_removed_images(
        data, {m.index: (removal_stage(m.stage), m.tmp / removed_images.FILE_NAME) for m in group})
    written = data_files(data)
    if count_rows(written) != n_in + repeated:
        raise E.AccountingError(f"chain {' + '.join(m.name for m in group)}: {count_rows(written)} rows written "
                                f"for in={n_in} repeated={repeated}")
    summaries[owner.index] = {**stage_summary(owner, written, owner=True, executor=executor), **step_report}
    return ChainResult(n_in, repeated, count_rows(written, kept_only=True), tallies, summaries, removed)


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
    schema = schema_without_dropped_at(pq.read_schema(files[0]) if files else R.BASE_SCHEMA)
    schema = chain_schema(stages, schema) if len(stages) > 1 else stages[0].output_schema(schema)
    write_table(schema.empty_table(), pass1 / "part-00000.parquet")

def _source_bytes(task_files: list[str]) -> int | None:
    """The bytes a source stage's tasks read in all (pipelines.engine.progress.with_task_bytes)."""
    ds = pads.dataset(task_files, format="parquet")
    if BYTES not in ds.schema.names:
        return None
    return int(pc.sum(ds.to_table(columns=[BYTES]).column(0)).as_py() or 0) or None


def global_step(stage: S.Stage, executor: Executor, files: list[str], out_data: Path, direct: bool,
                 upstream_kept: int | None) -> tuple[int, dict[str, Any]]:
    """The owner's whole-dataset step over `files` (its per-batch output, or with `direct` its
    upstream's rows, of which only the kept ones are its input); returns how many repeat rows it
    added and the numbers it returned for the report."""
    if not stage.has_global_step():
        return 0, {}
    out_data.mkdir()
    schema = pq.read_schema(files[0]) if files else R.BASE_SCHEMA
    if direct:
        schema = stage.output_schema(schema_without_dropped_at(schema))
    kept = upstream_kept if direct else count_rows(files, kept_only=True)
    if kept:
        stage.ensure_setup()
        step = step_result(stage.global_step(executor.global_data(stage, files, kept)))
        return executor.apply_decisions(stage, files, step.decisions, schema, out_data, only_kept=direct), step.report
    if direct:
        write_table(schema.empty_table(), out_data / "part-00000.parquet")
    else:
        for f in files:
            os.replace(f, out_data / Path(f).name)
    return 0, {}

def stage_summary(m: Member, files: list[str], owner: bool, executor: Executor) -> dict[str, Any]:
    """The stage's ``summarize`` of its kept rows: ``summary_partial`` per batch where the rows are
    (Ray: on the workers), merged there by ``summary_merge`` (Executor.summary_parts), so that the
    driver holds a few merged partials, never a row per sample. A stage without summary columns
    summarizes an empty table (its numbers come from elsewhere than its rows, e.g. a reference)."""
    if not m.stage.summary_columns:
        return m.stage.summarize(pa.table({}))
    if not files:
        return {}
    ds, flt = rows_of(files, m.index, owner, kept=True)
    cols = [c for c in (*m.stage.summary_columns, "key", R.ORDINAL) if c in ds.schema.names]
    empty = m.stage.summary_partial(pa.schema([ds.schema.field(c) for c in cols]).empty_table())
    parts = executor.summary_parts(m.stage, files, cols, flt)
    return m.stage.summarize(pa.concat_tables([empty, parts], promote_options="default") if parts.num_rows else empty)


def _source_rows_hint(tasks: pa.Table) -> int:
    """A cheap size estimate for a source stage before reading it: total bytes / 1 KiB per row."""
    total = 0
    for uri in dict.fromkeys(tasks.column("uri").to_pylist()):
        try:
            total += os.stat(uri).st_size
        except OSError:
            return AUTO_INLINE_ROWS  # remote or unreadable: let Ray handle it
    return total // 1024
