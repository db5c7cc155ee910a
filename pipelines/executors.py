"""Executors: who runs a stage's batches. Ray Data on a laptop or a cluster, or inline in this process.

Both read the previous stage's parquet files, apply ``execution.apply_batch`` and write parquet into
a directory the runner gives them; the runner does everything else (resume, accounting, reports),
so the two produce the same rows. Ray Data does the scheduling — there is no home-made scheduler:
``map_batches`` with tasks for cheap stages and an actor pool for model stages (``setup()`` once per
actor). ``ray.init()`` starts a local Ray unless ``RAY_ADDRESS`` points at a cluster.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from curate.ingest import FileTask, IngestStage
from curate.readers import SourceSpec
from curate.stage import Stage
from pipelines import execution as E

PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd"}


def data_files(directory: str | Path) -> list[str]:
    d = Path(directory)
    return sorted(str(p) for p in d.glob("*.parquet")) if d.is_dir() else []


def write_table(table: pa.Table, path: str | Path) -> None:
    pq.write_table(table, str(path), **PARQUET_OPTIONS)


class Executor(Protocol):
    name: str

    def ingest(self, stage: IngestStage, sources: list[SourceSpec], tasks: list[FileTask], out: Path) -> None: ...
    def map_stage(self, stage: Stage, files: list[str], out: Path) -> None: ...
    def apply_decisions(self, files: list[str], decisions: pa.Table, schema: pa.Schema, out: Path) -> None: ...
    def close(self) -> None: ...


class InlineExecutor:
    """Everything in this process, file by file: notebooks, debugging, tiny runs."""
    name = "inline"

    def ingest(self, stage: IngestStage, sources: list[SourceSpec], tasks: list[FileTask], out: Path) -> None:
        for i, task in enumerate(tasks):
            write_table(IngestStage.read(sources, task), out / f"part-{i:05d}.parquet")

    def map_stage(self, stage: Stage, files: list[str], out: Path) -> None:
        size = stage.resources.batch_size
        for i, f in enumerate(files):
            table = pq.read_table(f)
            parts = [E.apply_batch(stage, table.slice(j, size)) for j in range(0, table.num_rows, size)]
            schema = stage.output_schema(table.schema)
            write_table(pa.concat_tables([schema.empty_table(), *parts]), out / f"part-{i:05d}.parquet")

    def apply_decisions(self, files: list[str], decisions: pa.Table, schema: pa.Schema, out: Path) -> None:
        for i, f in enumerate(files):
            write_table(E.apply_decisions(pq.read_table(f), decisions, schema), out / f"part-{i:05d}.parquet")

    def close(self) -> None:
        pass


# --- Ray Data --------------------------------------------------------------------------------------------
_WORKER_STAGES: dict[str, Stage] = {}


def _worker_stage(token: str, stage_cls: type[Stage], config: Any, context: Any) -> Stage:
    """One stage instance per worker process, so task stages also pay setup() once per worker."""
    stage = _WORKER_STAGES.get(token)
    if stage is None:
        stage = _WORKER_STAGES[token] = stage_cls(config=config, context=context)
    return stage


def _apply_task(batch: pa.Table, token: str, stage_cls: type[Stage], config: Any, context: Any) -> pa.Table:
    return E.apply_batch(_worker_stage(token, stage_cls, config, context), batch)


class _StageActor:
    """Actor-pool worker for model stages: the model is loaded once in the constructor (setup())."""

    def __init__(self, stage_cls: type[Stage], config: Any, context: Any):
        self.stage = stage_cls(config=config, context=context)
        self.stage.ensure_setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return E.apply_batch(self.stage, batch)


def _ingest_task(batch: pa.Table, sources: list[SourceSpec], tasks: list[FileTask]) -> pa.Table:
    tables = [IngestStage.read(sources, tasks[i]) for i in batch.column("task").to_pylist()]
    return pa.concat_tables(tables)


def _decisions_task(batch: pa.Table, decisions: Any, schema: pa.Schema) -> pa.Table:
    import ray
    if isinstance(decisions, ray.ObjectRef):
        decisions = ray.get(decisions)
    return E.apply_decisions(batch, decisions, schema)


class RayExecutor:
    """Ray Data: local `ray.init()` by default, an existing cluster when RAY_ADDRESS is set."""
    name = "ray"

    def __init__(self, num_cpus: int | None = None):
        import ray
        from ray.data import DataContext
        self.ray = ray
        self._started = False
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS") or None
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                                      "configure_logging": True, "logging_level": "WARNING"}
            if address is None:
                kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
            ray.init(address=address, **kwargs)
            self._started = True
        ctx = DataContext.get_current()
        ctx.execution_options.preserve_order = True  # same input order -> same output order
        ctx.enable_progress_bars = True

    def _write(self, ds: Any, out: Path, schema: pa.Schema | None) -> None:
        ds.write_parquet(str(out), **PARQUET_OPTIONS)
        if not data_files(out) and schema is not None:
            out.mkdir(parents=True, exist_ok=True)
            write_table(schema.empty_table(), out / "part-empty.parquet")

    def ingest(self, stage: IngestStage, sources: list[SourceSpec], tasks: list[FileTask], out: Path) -> None:
        import ray.data
        from curate import records as R
        ds = ray.data.from_items([{"task": i} for i in range(len(tasks))],
                                 override_num_blocks=max(1, len(tasks)))
        ds = ds.map_batches(_ingest_task, batch_size=1, batch_format="pyarrow",
                            fn_kwargs={"sources": sources, "tasks": tasks})
        self._write(ds, out, R.BASE_SCHEMA)

    def map_stage(self, stage: Stage, files: list[str], out: Path) -> None:
        import ray.data
        schema = stage.output_schema(pq.read_schema(files[0]))
        ds = ray.data.read_parquet(files)
        res = stage.resources
        common = {"batch_size": res.batch_size, "batch_format": "pyarrow", "num_cpus": res.cpus}
        if res.gpus:
            common["num_gpus"] = res.gpus
        if res.npus:
            common["resources"] = {"NPU": res.npus}
        if res.kind == "actor":
            size = res.concurrency or max(1, int(self.ray.available_resources().get("GPU" if res.gpus else "CPU", 1)
                                                 // max(res.gpus or res.cpus, 1)))
            ds = ds.map_batches(_StageActor, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size),
                                fn_constructor_kwargs={"stage_cls": type(stage), "config": stage.config,
                                                       "context": stage.context}, **common)
        else:
            token = f"{stage.context.recipe_hash}:{stage.context.stage_index}:{stage.name}"
            ds = ds.map_batches(_apply_task, fn_kwargs={"token": token, "stage_cls": type(stage),
                                                        "config": stage.config, "context": stage.context},
                                compute=ray.data.TaskPoolStrategy(size=res.concurrency), **common)
        self._write(ds, out, schema)

    def apply_decisions(self, files: list[str], decisions: pa.Table, schema: pa.Schema, out: Path) -> None:
        import ray.data
        ref = self.ray.put(decisions)
        ds = ray.data.read_parquet(files).map_batches(
            _decisions_task, batch_format="pyarrow", batch_size=4096,
            fn_kwargs={"decisions": ref, "schema": schema})
        self._write(ds, out, schema)

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()


def make_executor(name: str) -> Executor:
    if name == "ray":
        return RayExecutor()
    if name == "inline":
        return InlineExecutor()
    raise ValueError(f"unknown executor {name!r} (ray, inline)")
