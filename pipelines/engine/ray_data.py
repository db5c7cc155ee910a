"""The Ray executor: the one place that turns stages into Ray Data operations.

``ray.init()`` starts a local Ray unless ``RAY_ADDRESS`` points at a cluster. Ray Data does the
scheduling — there is no home-made scheduler: ``map_batches`` with tasks for cheap stages and an
actor pool for model stages (``setup()`` once per actor); whole-dataset steps get a ``RayData``
handle whose aggregate / shuffle-reduce run on the cluster, and their decisions are routed to the
file holding each row (``pipelines.engine.ray_files``) and applied there, one task per file, so the driver
never holds per-sample data. Consecutive per-row stages are chained into one streaming pass
(``map_stages``).

Workers only see the configured source and output URIs: every path handed to them is absolute.

A worker process or node that dies is Ray's to survive, and nothing here turns that off: Ray Data's
defaults retry its tasks (``max_retries=-1``) and restart pool actors (``max_restarts=-1``,
``max_task_retries=-1``), lost blocks are rebuilt from their lineage, and every file a task writes
lands under a fresh staging name (``ray_files.write_in_order``) or under its own fixed name, which a
retry rewrites whole (``ray_files.apply_file``). A run that loses a worker mid-stage, or a node
mid-run, writes the same bytes (tests/test_ray_faults.py, tests/test_ray_cluster.py).
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.base import Stage
from curate.base import inline as E
from curate.base import records as R
from curate.base.diskspace import find_out_of_space
from curate.base.global_data import COMBINE_FAN_IN, concat, partition_of, sort_for_reduce
from pipelines.engine import shuffles
from pipelines.engine.heap import HeapTrimmer
from pipelines.engine.links import DROPPED_AT, apply_alone, apply_link, chain_schema, schema_without_dropped_at, without_dropped_at
from pipelines.engine.progress import DISABLED, FileCounter, Progress, RowCounter, entered_rows, shuffle_phase, task_bytes
from pipelines.engine.ray_files import FILE, MAP_TASK_ROWS, ROWS_PER_FILE, apply_file, read_files, route, write_in_order
from pipelines.engine.tables import count_rows, data_files, global_columns, write_table

T = TypeVar("T")
PART = "_part"
MAX_SOURCE_BLOCKS = 256


def source_tasks_per_batch(tasks: int, batch_size: int, cpus: int) -> int:
    """Source tasks (files or file parts) per map call: the stage's batch_size (small one-sample tars
    are grouped so 10,000 of them do not become 10,000 Ray tasks and files), but never so many that
    fewer than two batches per CPU remain — five 250k-row parquet files are five tasks, not one."""
    return max(1, min(batch_size, tasks // (2 * max(1, cpus))))


class RayData:
    """GlobalData on a Ray Dataset (see curate.base.global_data for the contract). Operations are lazy:
    the shuffles a handle has pending show as one progress phase when an operation runs them."""

    def __init__(self, ds: Any, rows: int | None = None, progress: Progress = DISABLED,
                 pending: tuple[str, ...] = ()):
        self.ds = ds
        self.rows = rows   # known by the runner for a step's input: count() without a pass over it
        self.progress = progress
        self.pending = pending

    def _next(self, ds: Any, pending: tuple[str, ...] = ()) -> "RayData":
        return RayData(ds, None, self.progress, tuple(dict.fromkeys(self.pending + pending)))

    def _phase(self, what: str) -> Any:
        return self.progress.phase(", ".join(self.pending) or what)

    def map_batches(self, fn: Callable[[pa.Table], pa.Table]) -> "RayData":
        return self._next(self.ds.map_batches(fn, batch_format="pyarrow", zero_copy_batch=True))

    def aggregate(self, partial: Callable[[pa.Table], pa.Table], combine: Callable[[pa.Table], T],
                  merge: Callable[[pa.Table], pa.Table] | None = None) -> T:
        """One partial per block (map_batches' default batch is the whole block); with `merge`, the
        partials are combined on the workers in a tree — runs of COMBINE_FAN_IN adjacent blocks
        joined by Ray Data's repartition (no shuffle) and merged, level by level — until at most
        COMBINE_FAN_IN reach the driver, whatever the number of blocks."""
        import ray
        parts = self.ds.map_batches(partial, batch_format="pyarrow")
        with self._phase("aggregate"):
            if merge is not None:
                parts = parts.materialize()
                while parts.num_blocks() > COMBINE_FAN_IN:
                    parts = parts.repartition(-(-parts.num_blocks() // COMBINE_FAN_IN)) \
                        .map_batches(merge, batch_format="pyarrow").materialize()
            return combine(concat(ray.get(parts.to_arrow_refs())))

    def shuffle_reduce(self, key: str, fn: Callable[[pa.Table], pa.Table], partitions: int,
                       block_rows: int | None = None) -> "RayData":
        """Ray Data's sort shuffle: it makes as many output blocks as input blocks, whatever
        ``num_partitions`` says, so ``partitions`` bounds the distinct keys of the sort and the reduce
        calls with rows; each input block is cut into a piece per reduce call. Past
        ``shuffles.SORT_PIECES_BUDGET`` pieces, Ray's hash shuffle instead (pipelines.engine.shuffles).
        ``block_rows`` gathers the input into blocks of that many rows first (see GlobalData)."""
        def add_part(batch: pa.Table) -> pa.Table:
            return batch.append_column(PART, pa.array(partition_of(batch.column(key), partitions).astype("int64")))

        def reduce(group: pa.Table) -> pa.Table:
            return fn(sort_for_reduce(group.drop_columns([PART]), key))

        blocks = shuffles.estimated_blocks(self.ds, block_rows)
        ds = self.ds.map_batches(add_part, batch_format="pyarrow", **({"batch_size": block_rows} if block_rows else {}))
        return self._next(shuffles.group_map(ds, PART, partitions, reduce, blocks, batch_format="pyarrow"),
                          (shuffle_phase(key),))

    def union(self, other: "RayData") -> "RayData":
        return self._next(shuffles.union(self.ds, other.ds), other.pending)

    def count(self) -> int:
        if self.rows is not None:
            return self.rows
        with self._phase("count"):
            return self.ds.count()

    def gather(self) -> pa.Table:
        import ray
        with self._phase("gather"):
            return concat(ray.get(self.ds.to_arrow_refs()))

    def materialize(self) -> "RayData":
        with self._phase("materialize"):
            return RayData(self.ds.materialize(), None, self.progress)


_WORKER_STAGES: dict[str, Stage] = {}


def _worker_stage(token: str, stage_cls: type[Stage], config: Any, context: Any) -> Stage:
    """One stage instance per worker process, so task stages also pay setup() once per worker."""
    stage = _WORKER_STAGES.get(token)
    if stage is None:
        stage = _WORKER_STAGES[token] = stage_cls(config=config, context=context)
    return stage


def _apply(stage: Stage, batch: pa.Table, link: tuple[int, bool] | None, counter: RowCounter | None) -> pa.Table:
    """A stage alone (``link`` None), or one link of a fused chain: (stage index, carries dropped rows).
    `counter` (the pass's last stage only): gets the batch's rows that entered the pass."""
    if stage.reads_sources:
        out = stage.read_tasks(batch)
        if counter is not None:
            counter.add(out.num_rows, task_bytes(batch))
        return out
    out = apply_alone(stage, batch) if link is None else apply_link(stage, batch, *link)
    if counter is not None:
        counter.add(entered_rows(batch, carries_dropped=bool(link and link[1])))
    return out


def _apply_task(batch: pa.Table, token: str, stage_cls: type[Stage], config: Any, context: Any,
                link: tuple[int, bool] | None = None, counter: RowCounter | None = None) -> pa.Table:
    return _apply(_worker_stage(token, stage_cls, config, context), batch, link, counter)


class _StageActor:
    """Actor-pool worker for model stages: the model is loaded once in the constructor (setup())."""

    def __init__(self, stage_cls: type[Stage], config: Any, context: Any, link: tuple[int, bool] | None = None,
                 counter: RowCounter | None = None):
        self.stage = stage_cls(config=config, context=context)
        self.stage.ensure_setup()
        self.link = link
        self.counter = counter

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _apply(self.stage, batch, self.link, self.counter)


def _summary_partial(batch: pa.Table, rows: Any, columns: list[str], token: str, stage_cls: type[Stage], config: Any,
                     context: Any) -> pa.Table:
    stage = _worker_stage(token, stage_cls, config, context)
    return stage.summary_partial((batch.filter(rows) if rows is not None else batch).select(columns))


def _summary_merge(parts: pa.Table, token: str, stage_cls: type[Stage], config: Any, context: Any) -> pa.Table:
    return _worker_stage(token, stage_cls, config, context).summary_merge(parts)


def _kept_columns(batch: pa.Table, columns: list[str] | None) -> pa.Table:
    kept = without_dropped_at(E.only_kept(batch))
    return kept if columns is None else kept.select([c for c in columns if c in kept.column_names])


def _not_out_of_space(record: logging.LogRecord) -> bool:
    """Drop Ray's own log of a task that failed for a full disk: the runner reports it in one line
    (curate.base.diskspace), and a worker traceback would only bury that line. Ray logs some of
    these lines without the exception, from inside its ``except`` block: sys.exc_info() has it."""
    exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
    return not ((exc is not None and find_out_of_space(exc, "") is not None) or "OutOfSpace" in record.getMessage())


def _quiet_out_of_space() -> None:
    """The filter on the handlers Ray Data logs through (a logger's own filter misses records its
    children propagate to it)."""
    for name in ("", "ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if _not_out_of_space not in handler.filters:
                handler.addFilter(_not_out_of_space)


class RayExecutor:
    """Ray Data: local `ray.init()` by default, an existing cluster when RAY_ADDRESS is set."""
    name = "ray"
    progress: Progress = DISABLED

    def __init__(self, num_cpus: int | None = None, verbose: bool = False):
        import ray
        from ray.data import DataContext
        from ray.data.context import ShuffleStrategy
        self.ray = ray
        self._started = False
        # Model actors are restarted after a crash only on a cluster, where a lost node is what a
        # restart recovers from. Ray Data hands every actor its constructor arguments through the
        # object store, and Ray's core worker logs an error line for each actor started that way
        # with restarts on; on one machine a crashed actor fails the pass instead, and the run
        # resumes at that stage.
        self._restart_actors = bool(os.environ.get("RAY_ADDRESS"))
        if not verbose:
            for name in ("ray", "ray.data", "ray.data._internal"):
                logging.getLogger(name).setLevel(logging.ERROR)
        if not ray.is_initialized():
            # Without RAY_ADDRESS always start our own local Ray ("local"): a bare ray.init() would attach
            # to whatever cluster `ray start` last left on this machine.
            address = os.environ.get("RAY_ADDRESS") or "local"
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose,
                                      "configure_logging": True,
                                      "logging_level": "INFO" if verbose else "ERROR"}
            if address == "local":
                kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
            ray.init(address=address, **kwargs)
            self._started = True
        ctx = DataContext.get_current()
        ctx.execution_options.preserve_order = True  # same input order -> same output order
        # Sort-based shuffles for groupby: the default hash shuffle starts 200 aggregator partitions
        # per shuffle, whose fixed cost dominated every whole-dataset step here (4-5x slower on 2 cores).
        ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        # No per-operator resource reservation for passes of tasks (map_stages turns it back on for a
        # pass with an actor pool). Reservation splits the CPUs between a plan's operators up front:
        # on 2 CPUs the read operator held one that it rarely used, so a fused map ran on ~1.3 cores
        # and every whole-dataset step waited on it (a 1M-row run: 70 s with it, 55 s without, and 9%
        # less CPU). The object-store limit and backpressure stay on either way.
        ctx.op_resource_reservation_enabled = False
        ctx.enable_progress_bars = verbose
        ctx.print_on_execution_start = verbose
        self._trimmer = HeapTrimmer().start()
        if not verbose:
            _quiet_out_of_space()

    def _write(self, ds: Any, out: Path, schema: pa.Schema | None, per_block: bool = False) -> None:
        write_in_order(self.ray, ds, out, schema, per_block)
        if not data_files(out) and schema is not None:
            out.mkdir(parents=True, exist_ok=True)
            write_table(schema.empty_table(), out / "part-empty.parquet")

    def _read(self, files: list[str], columns: list[str] | None = None, task_rows: int = ROWS_PER_FILE) -> Any:
        """Per-row passes read in small tasks (balance); global steps per file: every block
        more is one more map task of each shuffle (a sort shuffle's cost grows with blocks x partitions)."""
        return read_files(self.ray, files, columns, task_rows=task_rows)

    def new_counter(self, directory: Path) -> FileCounter:
        """A counter for one pass: files its workers write under `directory` (in the stage's
        temporary directory, on the filesystem the workers write the stage's rows to)."""
        path = directory.with_name(f"{directory.name}-{uuid.uuid4().hex[:12]}").resolve()
        path.mkdir(parents=True)
        return FileCounter(path)

    def map_stages(self, stages: list[Stage], files: list[str], out: Path, counter: RowCounter | None = None) -> None:
        """One streaming Ray Data pass: read, each stage's map_batches in turn (tasks or an actor pool,
        each with its own batch size and resources), write. Nothing between the stages touches disk."""
        head = stages[0]
        ds = self._read(files, task_rows=MAP_TASK_ROWS)
        if any(stage.resources.kind == "actor" for stage in stages):
            # An actor pool (a model stage) keeps its reserved share, so the tasks ahead of it cannot
            # take every CPU while its actors wait to start. The read made its own copy of the global
            # DataContext, which the datasets derived from it share: the setting stays with this pass.
            ds.context.op_resource_reservation_enabled = True
        source_batch = None
        if head.reads_sources:
            tasks = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
            source_batch = source_tasks_per_batch(tasks, head.resources.batch_size,
                                                  int(self.ray.cluster_resources().get("CPU", 1)))
            ds = ds.repartition(max(1, min(MAX_SOURCE_BLOCKS, -(-tasks // source_batch))))
            schema = R.BASE_SCHEMA
        else:
            # upstream's chain bookkeeping, dropped by every link
            schema = schema_without_dropped_at(pq.read_schema(files[0]))
        for position, stage in enumerate(stages):
            link = None if len(stages) == 1 else (stage.context.stage_index, position > 0)
            last = counter if position == len(stages) - 1 else None
            ds = self._map(ds, stage, link, source_batch if stage.reads_sources else None, last)
            if not stage.reads_sources:
                schema = stage.output_schema(schema) if link is None else chain_schema([stage], schema)
        self._write(ds, out, schema, per_block=head.reads_sources)

    def map_stage(self, stage: Stage, files: list[str], out: Path) -> None:
        self.map_stages([stage], files, out)

    def _map(self, ds: Any, stage: Stage, link: tuple[int, bool] | None, batch_size: int | None = None,
             counter: RowCounter | None = None) -> Any:
        import ray.data
        res = stage.resources
        common: dict[str, Any] = {"batch_size": batch_size or res.batch_size, "batch_format": "pyarrow",
                                  "num_cpus": res.cpus}
        if res.gpus:
            common["num_gpus"] = res.gpus
        if res.npus:
            common["resources"] = {"NPU": res.npus}
        if res.kind == "actor":
            size = res.concurrency or max(1, int(self.ray.available_resources().get("GPU" if res.gpus else "CPU", 1)
                                                 // max(res.gpus or res.cpus, 1)))
            restarts = {} if self._restart_actors else {"max_restarts": 0}
            with warnings.catch_warnings():
                # Ray 2.60 has no named parameter for max_restarts yet and flags every extra remote
                # argument as deprecated (to be removed in 2.64); this one is deliberate (see __init__).
                warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
                return ds.map_batches(_StageActor, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size),
                                      fn_constructor_kwargs={"stage_cls": type(stage), "config": stage.config,
                                                             "context": stage.context, "link": link, "counter": counter},
                                      **restarts, **common)
        token = f"{stage.context.recipe_hash}:{stage.context.stage_index}:{stage.name}"
        return ds.map_batches(_apply_task, fn_kwargs={"token": token, "stage_cls": type(stage), "config": stage.config,
                                                      "context": stage.context, "link": link, "counter": counter},
                              compute=ray.data.TaskPoolStrategy(size=res.concurrency), **common)

    def global_data(self, stage: Stage, files: list[str], rows: int | None = None) -> RayData:
        columns = global_columns(stage, pq.read_schema(files[0]))
        ds = self._read(files, columns).map_batches(_kept_columns, batch_format="pyarrow",
                                                    fn_kwargs={"columns": None if columns is None else
                                                               [c for c in columns if c != R.STATUS]})
        return RayData(ds, rows, self.progress)

    def summary_parts(self, stage: Stage, files: list[str], columns: list[str], rows: Any) -> pa.Table:
        """The stage's ``summary_partial`` of the rows of `files` that the filter expression `rows`
        selects (only `columns`), per block on the workers, merged there in a tree (RayData.aggregate)
        by ``summary_merge``. The workers build their own instance of the stage (no setup: summaries
        need no model), so no loaded model travels with the task."""
        wanted = list(dict.fromkeys(columns + [c for c in (R.STATUS, DROPPED_AT) if c in pq.read_schema(files[0]).names]))
        token = f"{stage.context.recipe_hash}:{stage.context.stage_index}:{stage.name}:summary"
        made = {"token": token, "stage_cls": type(stage), "config": stage.config, "context": stage.context}
        return RayData(self._read(files, wanted)).aggregate(
            functools.partial(_summary_partial, rows=rows, columns=columns, **made), lambda parts: parts,
            functools.partial(_summary_merge, **made))

    def apply_decisions(self, stage: Stage, files: list[str], decisions: Any, schema: pa.Schema, out: Path,
                        only_kept: bool = False) -> int:
        """Route each decision to the file holding its row (a narrow shuffle of decisions only, by
        file); one task per file then reads it, applies its decisions and writes it. The wide rows
        are read once and written once, never shuffled or sorted (routing: pipelines.engine.ray_files)."""
        import ray.data
        right = decisions.ds if isinstance(decisions, RayData) else ray.data.from_arrow(decisions)
        pending = decisions.pending if isinstance(decisions, RayData) else ()
        with self.progress.phase(", ".join(pending + ("route decisions",))):   # runs the step's pending shuffles
            tagged = route(self.ray, right, files).materialize()
        # One sentinel row per file, so that a file without decisions (no kept rows) is written too.
        right_schema = tagged.schema().base_schema
        sentinels = pa.table({name: pa.nulls(len(files), typ) if name != FILE else pa.array(range(len(files)), pa.int64())
                              for name, typ in zip(right_schema.names, right_schema.types)})
        token = f"{stage.context.recipe_hash}:{stage.context.stage_index}:{stage.name}:decisions"
        out.mkdir(parents=True, exist_ok=True)
        with_sentinels = tagged.union(ray.data.from_arrow(sentinels))
        counter = self.new_counter(out.parent / ".progress-apply") if self.progress.enabled else None
        done = shuffles.group_map(
            with_sentinels, FILE, min(len(files), 256), apply_file, tagged.num_blocks() + 1, batch_format="pyarrow",
            fn_kwargs={"files": [str(Path(f).resolve()) for f in files], "out": str(out.resolve()), "schema": schema,
                       "only_kept": only_kept, "token": token, "stage_cls": type(stage), "config": stage.config,
                       "context": stage.context, "worker_stage": _worker_stage, "counter": counter})
        expected = count_rows(files, kept_only=only_kept) if self.progress.enabled else None
        with self.progress.phase("apply", expected, counter) as phase:
            written = concat(self.ray.get(done.to_arrow_refs()))
            phase.finish(int(pc.sum(written.column("rows")).as_py() or 0))
        if sorted(written.column("file").to_pylist()) != list(range(len(files))):
            raise E.AccountingError(f"stage {stage.name!r}: not every file of the global step was written once")
        return int(pc.sum(written.column("repeats")).as_py() or 0)

    def close(self) -> None:
        self._trimmer.stop()
        if self._started:
            self.ray.shutdown()
