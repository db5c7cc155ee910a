"""The Ray executor: the one place that turns stages into Ray Data operations.

``ray.init()`` starts a local Ray unless ``RAY_ADDRESS`` points at a cluster. Ray Data does the
scheduling — there is no home-made scheduler: ``map_batches`` with tasks for cheap stages and an
actor pool for model stages (``setup()`` once per actor); whole-dataset steps get a ``RayData``
handle whose aggregate / shuffle-reduce run on the cluster, and their decisions are joined back by
``_ordinal`` with a distributed join, so the driver never holds per-sample data.

Workers only see the configured source and output URIs: every path handed to them is absolute.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.base import Stage
from curate.base import inline as E
from curate.base import records as R
from curate.base.global_data import concat, partition_of, sort_for_reduce
from pipelines.executors import PARQUET_OPTIONS, data_files, global_columns, write_table

T = TypeVar("T")
PART = "_part"
MAX_SOURCE_BLOCKS = 256
DECISION_SUFFIX = "__decision"


class RayData:
    """GlobalData on a Ray Dataset (see curate.base.global_data for the contract)."""

    def __init__(self, ds: Any):
        self.ds = ds

    def map_batches(self, fn: Callable[[pa.Table], pa.Table]) -> "RayData":
        return RayData(self.ds.map_batches(fn, batch_format="pyarrow", zero_copy_batch=True))

    def aggregate(self, partial: Callable[[pa.Table], pa.Table], combine: Callable[[pa.Table], T]) -> T:
        import ray
        parts = self.ds.map_batches(partial, batch_format="pyarrow")
        return combine(concat(ray.get(parts.to_arrow_refs())))

    def shuffle_reduce(self, key: str, fn: Callable[[pa.Table], pa.Table], partitions: int) -> "RayData":
        def add_part(batch: pa.Table) -> pa.Table:
            return batch.append_column(PART, pa.array(partition_of(batch.column(key), partitions).astype("int64")))

        def reduce(group: pa.Table) -> pa.Table:
            return fn(sort_for_reduce(group.drop_columns([PART]), key))

        ds = self.ds.map_batches(add_part, batch_format="pyarrow")
        return RayData(ds.groupby(PART).map_groups(reduce, batch_format="pyarrow"))

    def count(self) -> int:
        return self.ds.count()

    def gather(self) -> pa.Table:
        import ray
        return concat(ray.get(self.ds.to_arrow_refs()))

    def materialize(self) -> "RayData":
        return RayData(self.ds.materialize())


_WORKER_STAGES: dict[str, Stage] = {}


def _worker_stage(token: str, stage_cls: type[Stage], config: Any, context: Any) -> Stage:
    """One stage instance per worker process, so task stages also pay setup() once per worker."""
    stage = _WORKER_STAGES.get(token)
    if stage is None:
        stage = _WORKER_STAGES[token] = stage_cls(config=config, context=context)
    return stage


def _apply(stage: Stage, batch: pa.Table, link: tuple[int, bool] | None) -> pa.Table:
    """A stage alone (``link`` None), or one link of a fused chain: (stage index, carries dropped rows)."""
    if stage.reads_sources:
        return stage.read_tasks(batch)
    return E.apply_batch(stage, batch) if link is None else E.apply_link(stage, batch, *link)


def _apply_task(batch: pa.Table, token: str, stage_cls: type[Stage], config: Any, context: Any,
                link: tuple[int, bool] | None = None) -> pa.Table:
    return _apply(_worker_stage(token, stage_cls, config, context), batch, link)


class _StageActor:
    """Actor-pool worker for model stages: the model is loaded once in the constructor (setup())."""

    def __init__(self, stage_cls: type[Stage], config: Any, context: Any, link: tuple[int, bool] | None = None):
        self.stage = stage_cls(config=config, context=context)
        self.stage.ensure_setup()
        self.link = link

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _apply(self.stage, batch, self.link)


def _kept_columns(batch: pa.Table, columns: list[str] | None) -> pa.Table:
    kept = E.without_dropped_at(E.only_kept(batch))
    return kept if columns is None else kept.select([c for c in columns if c in kept.column_names])


def _suffix_decisions(batch: pa.Table) -> pa.Table:
    return batch.rename_columns([c if c == R.ORDINAL else c + DECISION_SUFFIX for c in batch.column_names])


def _merge_decisions(batch: pa.Table, decision_columns: list[str], schema: pa.Schema, stage_name: str) -> pa.Table:
    """Left rows with their decision (if any) written over status and added columns."""
    renamed = {c: (c + DECISION_SUFFIX if c + DECISION_SUFFIX in batch.column_names else c) for c in decision_columns}
    has = pc.is_valid(batch.column(renamed[R.STATUS]))
    kept_without = pc.and_(pc.equal(batch.column(R.STATUS), R.KEPT), pc.invert(has))
    if pc.any(kept_without).as_py():
        raise E.AccountingError(f"stage {stage_name!r}: the global step gave no decision for some kept rows")
    out = batch
    for c, src in renamed.items():
        if c not in schema.names:
            continue
        typ = schema.field(c).type   # the join may hand columns back as large types: cast both sides
        new = batch.column(src).cast(typ)
        merged = pc.if_else(has, new, batch.column(c).cast(typ)) if src != c and c in batch.column_names else new
        idx = out.schema.get_field_index(c)
        out = out.set_column(idx, schema.field(c), merged) if idx >= 0 else out.append_column(schema.field(c), merged)
    out = out.drop_columns([s for c, s in renamed.items() if s != c])
    dropped_without_reason = pc.and_(pc.not_equal(out.column(R.STATUS), R.KEPT), pc.is_null(out.column(R.REASON)))
    if pc.any(dropped_without_reason).as_py():
        raise E.AccountingError(f"stage {stage_name!r}: the global step dropped rows without a reason")
    return R.conform(out.select(schema.names), schema)


def _only_repeats(batch: pa.Table, want: bool) -> pa.Table:
    is_rep = pc.is_valid(batch.column(E.REPEAT_SOURCE))
    out = batch.filter(is_rep if want else pc.invert(is_rep))
    return out if want else out.drop_columns([c for c in E.REPEAT_COLUMNS if c in out.column_names])


def _repeat_keys(batch: pa.Table) -> pa.Table:
    """Repeat decisions keyed by the row they copy: their new ordinal and key travel as extra columns."""
    return batch.rename_columns([{R.ORDINAL: "_repeat_ordinal", "key": "_repeat_key"}.get(c, c) for c in batch.column_names])


def _as_repeat_rows(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """A copied row with the repeat's own ordinal, key, status and added columns."""
    out = batch
    for c, src in ((R.ORDINAL, "_repeat_ordinal"), ("key", "_repeat_key")):
        out = out.set_column(out.schema.get_field_index(c), schema.field(c), batch.column(src).cast(schema.field(c).type))
    for c in list(out.column_names):
        if c.endswith(DECISION_SUFFIX) and c[: -len(DECISION_SUFFIX)] in schema.names:
            base = c[: -len(DECISION_SUFFIX)]
            out = out.set_column(out.schema.get_field_index(base), schema.field(base),
                                 out.column(c).cast(schema.field(base).type))
    return R.conform(out.select([c for c in schema.names if c in out.column_names]), schema)


class RayExecutor:
    """Ray Data: local `ray.init()` by default, an existing cluster when RAY_ADDRESS is set."""
    name = "ray"

    def __init__(self, num_cpus: int | None = None, verbose: bool = False):
        import ray
        from ray.data import DataContext
        self.ray = ray
        self._started = False
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
        ctx.enable_progress_bars = verbose
        ctx.print_on_execution_start = verbose

    def _write(self, ds: Any, out: Path, schema: pa.Schema | None) -> None:
        ds.write_parquet(str(out.resolve()), **PARQUET_OPTIONS)
        if not data_files(out) and schema is not None:
            out.mkdir(parents=True, exist_ok=True)
            write_table(schema.empty_table(), out / "part-empty.parquet")

    def _read(self, files: list[str], columns: list[str] | None = None) -> Any:
        import ray.data
        return ray.data.read_parquet([str(Path(f).resolve()) for f in files], columns=columns)

    def map_stages(self, stages: list[Stage], files: list[str], out: Path) -> None:
        """One streaming Ray Data pass: read, each stage's map_batches in turn (tasks or an actor pool,
        each with its own batch size and resources), write. Nothing between the stages touches disk."""
        head = stages[0]
        ds = self._read(files)
        if head.reads_sources:
            tasks = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
            # A block per `batch_size` files, at most MAX_SOURCE_BLOCKS: enough to keep a cluster busy,
            # few enough that 10,000 one-sample tars do not become 10,000 parquet files in every stage.
            ds = ds.repartition(max(1, min(MAX_SOURCE_BLOCKS, -(-tasks // head.resources.batch_size))))
            schema = R.BASE_SCHEMA
        else:
            schema = pq.read_schema(files[0])
            if E.DROPPED_AT in schema.names:   # upstream's chain bookkeeping, dropped by every link
                schema = schema.remove(schema.get_field_index(E.DROPPED_AT))
        for position, stage in enumerate(stages):
            link = None if len(stages) == 1 else (stage.context.stage_index, position > 0)
            ds = self._map(ds, stage, link)
            if not stage.reads_sources:
                schema = stage.output_schema(schema) if link is None else E.chain_schema([stage], schema)
        self._write(ds, out, schema)

    def map_stage(self, stage: Stage, files: list[str], out: Path) -> None:
        self.map_stages([stage], files, out)

    def _map(self, ds: Any, stage: Stage, link: tuple[int, bool] | None) -> Any:
        import ray.data
        res = stage.resources
        common: dict[str, Any] = {"batch_size": res.batch_size, "batch_format": "pyarrow", "num_cpus": res.cpus}
        if res.gpus:
            common["num_gpus"] = res.gpus
        if res.npus:
            common["resources"] = {"NPU": res.npus}
        if res.kind == "actor":
            size = res.concurrency or max(1, int(self.ray.available_resources().get("GPU" if res.gpus else "CPU", 1)
                                                 // max(res.gpus or res.cpus, 1)))
            return ds.map_batches(_StageActor, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size),
                                  fn_constructor_kwargs={"stage_cls": type(stage), "config": stage.config,
                                                         "context": stage.context, "link": link}, **common)
        token = f"{stage.context.recipe_hash}:{stage.context.stage_index}:{stage.name}"
        return ds.map_batches(_apply_task, fn_kwargs={"token": token, "stage_cls": type(stage), "config": stage.config,
                                                      "context": stage.context, "link": link},
                              compute=ray.data.TaskPoolStrategy(size=res.concurrency), **common)

    def global_data(self, stage: Stage, files: list[str]) -> RayData:
        columns = global_columns(stage, pq.read_schema(files[0]))
        ds = self._read(files, columns).map_batches(_kept_columns, batch_format="pyarrow",
                                                    fn_kwargs={"columns": None if columns is None else
                                                               [c for c in columns if c != R.STATUS]})
        return RayData(ds)

    def apply_decisions(self, stage: Stage, files: list[str], decisions: Any, schema: pa.Schema, out: Path) -> int:
        import ray.data
        right = decisions.ds if isinstance(decisions, RayData) else ray.data.from_arrow(decisions)
        right = right.materialize()   # counted, split and joined below: compute the global step once
        left = self._read(files)
        names = right.schema().names
        repeats = None
        if E.REPEAT_SOURCE in names:   # the mixture's up-sampling: extra rows copying kept rows
            repeats = right.map_batches(_only_repeats, batch_format="pyarrow", fn_kwargs={"want": True})
            right = right.map_batches(_only_repeats, batch_format="pyarrow", fn_kwargs={"want": False})
        n_kept = left.map_batches(_kept_columns, batch_format="pyarrow", fn_kwargs={"columns": [R.ORDINAL]}).count()
        n_decisions = right.count()
        if n_kept != n_decisions:
            raise E.AccountingError(f"stage {stage.name!r}: {n_decisions} decisions for {n_kept} kept rows")
        decision_columns = [c for c in right.schema().names if c not in (R.ORDINAL, *E.REPEAT_COLUMNS)]
        # Suffix the decision columns before the join: Ray's join re-attaches list-typed payload columns
        # without applying right_suffix, so a list column on both sides came back twice.
        right = right.map_batches(_suffix_decisions, batch_format="pyarrow")
        partitions = max(1, min(64, len(files)))
        joined = left.join(right, join_type="left_outer", num_partitions=partitions, on=(R.ORDINAL,),
                           right_suffix=DECISION_SUFFIX)
        merged = joined.map_batches(_merge_decisions, batch_format="pyarrow",
                                    fn_kwargs={"decision_columns": [R.STATUS, *[c for c in decision_columns if c != R.STATUS]],
                                               "schema": schema, "stage_name": stage.name})
        n_repeats = 0
        if repeats is not None:
            n_repeats = repeats.count()
            copies = left.join(repeats.map_batches(_repeat_keys, batch_format="pyarrow"), join_type="inner",
                               num_partitions=partitions, on=(R.ORDINAL,), right_on=(E.REPEAT_SOURCE,),
                               right_suffix=DECISION_SUFFIX)
            copies = copies.map_batches(_as_repeat_rows, batch_format="pyarrow", fn_kwargs={"schema": schema})
            merged = merged.union(copies)
        self._write(merged.sort(R.ORDINAL), out, schema)
        return n_repeats

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
