"""The runner: recipe in, stage directories + report.json out, resumable after any crash.

Layout of a run directory::

    OUT/recipe.json                      the resolved recipe and its hash
    OUT/stages/00_ingest/data/*.parquet  every row that entered the stage, with _status/_reason
    OUT/stages/00_ingest/rejects.parquet the rejected and quarantined rows (key, reason, detail, ...)
    OUT/stages/00_ingest/_COMPLETE.json  written last: the stage's fingerprint and report entry
    OUT/shards/...                       written by the final `shards` stage
    OUT/rejects.parquet                  all stages' rejects in one file
    OUT/report.html                      the same, with plots and thumbnails (pipelines.report_html)
    OUT/report.json                      {"stages": [{"name", "in", "out", "rejected", "quarantined", "seconds"}]}

Resume: a stage whose ``_COMPLETE.json`` carries the same fingerprint (recipe settings, seed, inputs,
upstream fingerprint) is skipped. A stage is built in ``NN_name.tmp`` and renamed into place before
its marker is written, so a SIGKILL anywhere leaves either a complete stage or a tmp dir that the
next run deletes. Stages are deterministic (ordered by ``_ordinal``, seeded by the recipe), so the
re-run writes the same bytes as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from curate import records as R
from curate import stage as S
from curate.ingest import IngestStage
from pipelines import execution as E
from pipelines.executors import Executor, data_files, make_executor, write_table
from pipelines.recipe import Recipe, StageSpec, load
from pipelines.report_html import render_fragment, write_report_html

VERSION = "0.1.0"
REJECT_COLUMNS = ("key", "source", "category", R.ORDINAL, R.STATUS, R.REASON, R.DETAIL, "provenance")


@dataclass
class RunResult:
    out_dir: Path
    report: dict[str, Any]
    stage_dirs: list[Path] = field(default_factory=list)

    def _repr_html_(self) -> str:
        """A notebook shows the run as report.html's content."""
        return render_fragment(self.out_dir)

    def kept(self, stage: int = -1, columns: list[str] | None = None) -> pa.Table:
        """Rows kept by a stage (default: the last one), for notebooks."""
        return read_kept(self.stage_dirs[stage], columns)


def read_kept(stage_dir: Path, columns: list[str] | None = None) -> pa.Table:
    files = data_files(stage_dir / "data")
    ds = pads.dataset(files, format="parquet")
    cols = None if columns is None else [c for c in columns if c in ds.schema.names]
    return ds.to_table(columns=cols, filter=pc.field(R.STATUS) == R.KEPT)


def _fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def _sources_fingerprint(recipe: Recipe, tasks: list) -> list:
    out = []
    for t in tasks:
        try:
            st = os.stat(t.uri)
            out.append([t.uri, st.st_size, int(st.st_mtime)])
        except OSError:
            out.append([t.uri])
    return out


class Runner:
    def __init__(self, recipe: Recipe, out_dir: str | Path | None = None, executor: str = "ray",
                 until: str | None = None, progress: bool = True):
        self.recipe = recipe
        self.out = Path(out_dir or recipe.output_dir)
        self.executor_name = executor
        self.until = until
        self.progress = progress

    def log(self, msg: str) -> None:
        if self.progress:
            print(msg, flush=True)

    def run(self) -> RunResult:
        recipe = self.recipe
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "stages").mkdir(exist_ok=True)
        for leftover in (self.out / "stages").glob("*.tmp"):
            shutil.rmtree(leftover)  # a stage that was being built when the last run died
        _atomic_write_json(self.out / "recipe.json", {"hash": recipe.hash(), **recipe.canonical()})
        plan = recipe.plan()
        if self.until and self.until not in [s.name for s in plan]:
            raise ValueError(f"--until {self.until!r}: no such stage in this recipe ({[s.name for s in plan]})")
        executor: Executor | None = None
        entries: list[dict[str, Any]] = []
        stage_dirs: list[Path] = []
        upstream: dict[str, dict] = {}
        # Each stage's fingerprint chains its settings onto its upstream's: a changed setting re-runs
        # that stage and everything after it, and nothing before it.
        prev_fp = _fingerprint(VERSION)
        try:
            for index, spec in enumerate(plan):
                context = S.StageContext(seed=recipe.seed, out_dir=str(self.out), recipe_name=recipe.name,
                                         recipe_hash=recipe.hash(), stage_index=index, mixture=recipe.mixture,
                                         upstream=dict(upstream))
                stage = S.build(spec.name, spec.settings, context)
                final = self.out / "stages" / f"{index:02d}_{spec.name}"
                extra_fp: Any = None
                tasks = None
                if spec.name == "ingest":
                    tasks = IngestStage.plan(recipe.sources)
                    extra_fp = [[dataclasses.asdict(s) for s in recipe.sources], _sources_fingerprint(recipe, tasks)]
                settings = _settings_of(stage)
                fp = _fingerprint(prev_fp, spec.name, settings, recipe.seed, extra_fp)
                marker = final / "_COMPLETE.json"
                if marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fp:
                    entry = json.loads(marker.read_text())["report"]
                    entry = {**entry, "resumed": True}
                    self.log(f"[{index:02d}] {spec.name}: complete, skipped (resume)")
                else:
                    if final.exists():
                        shutil.rmtree(final)
                    if executor is None:
                        executor = make_executor(self.executor_name)
                    entry = self._run_stage(executor, stage, spec, index, final, stage_dirs, tasks)
                    _atomic_write_json(marker, {"fingerprint": fp, "report": entry})
                entries.append(entry)
                stage_dirs.append(final)
                upstream[spec.name] = settings
                prev_fp = fp
                if self.until == spec.name:
                    break
        finally:
            if executor is not None:
                executor.close()
        report = self._report(entries, stage_dirs)
        return RunResult(self.out, report, stage_dirs)

    def _run_stage(self, executor: Executor, stage: S.Stage, spec: StageSpec, index: int, final: Path,
                   stage_dirs: list[Path], tasks: list | None) -> dict[str, Any]:
        t0 = time.perf_counter()
        tmp = final.with_name(final.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        pass1 = tmp / ("pass1" if stage.has_global_step() else "data")
        repeated = 0  # rows a global step added as repeats of kept rows (mixture up-sampling)
        pass1.mkdir(parents=True)
        self.log(f"[{index:02d}] {spec.name}: running on {executor.name}")
        if isinstance(stage, IngestStage):
            executor.ingest(stage, self.recipe.sources, tasks or [], pass1)
            n_in = _count(pass1)
        else:
            files = data_files(stage_dirs[-1] / "data")
            n_in = _count(stage_dirs[-1] / "data", kept_only=True)
            if n_in == 0:
                schema = stage.output_schema(pq.read_schema(files[0]) if files else R.BASE_SCHEMA)
                write_table(schema.empty_table(), pass1 / "part-00000.parquet")
            else:
                executor.map_stage(stage, files, pass1)
        if stage.has_global_step():
            out_data = tmp / "data"
            out_data.mkdir()
            files = data_files(pass1)
            schema = pq.read_schema(files[0])
            inputs = _read_global_inputs(stage, files)
            stage.ensure_setup()
            decisions = E.validate_decisions(stage, inputs, stage.decide(inputs))
            repeated = E.count_repeats(decisions)
            executor.apply_decisions(files, decisions, schema, out_data)
            shutil.rmtree(pass1)
        data = tmp / "data"
        # One read of the dropped rows serves both the rejects manifest and the tally; kept rows are only counted.
        rejects = self._write_rejects(data, tmp / "rejects.parquet")
        counts = E.tally(rejects.column(R.STATUS).to_pylist(), rejects.column(R.REASON).to_pylist())
        counts["out"] = _count(data, kept_only=True)
        dropped_total = sum(counts["rejected"].values()) + sum(counts["quarantined"].values())
        if counts["out"] + dropped_total != n_in + repeated:
            raise E.AccountingError(f"stage {spec.name}: in={n_in} repeated={repeated} but kept+rejected+quarantined="
                                    f"{counts['out'] + dropped_total}")
        summary = {}
        if stage.summary_columns:
            summary = stage.summarize(read_kept(tmp, list(stage.summary_columns) + ["key", R.ORDINAL]))
        entry = {"name": spec.name, "in": n_in, "repeated": repeated, "out": counts["out"],
                 "rejected": counts["rejected"],
                 "quarantined": counts["quarantined"], "seconds": round(time.perf_counter() - t0, 3),
                 "rejects": str((final / "rejects.parquet").relative_to(self.out)),
                 **summary, **stage.report}
        os.replace(tmp, final)
        self.log(f"[{index:02d}] {spec.name}: in={n_in} out={counts['out']} rejected={sum(counts['rejected'].values())}"
                 f" quarantined={sum(counts['quarantined'].values())} ({entry['seconds']:.1f}s)")
        return entry

    @staticmethod
    def _write_rejects(data: Path, path: Path) -> pa.Table:
        ds = pads.dataset(data_files(data), format="parquet")
        cols = [c for c in REJECT_COLUMNS if c in ds.schema.names]
        t = ds.to_table(columns=cols, filter=pc.field(R.STATUS) != R.KEPT)
        t = t.take(pc.sort_indices(t, sort_keys=[(R.ORDINAL, "ascending")]))
        write_table(t, path)
        return t

    def _report(self, entries: list[dict[str, Any]], stage_dirs: list[Path]) -> dict[str, Any]:
        all_rejects = []
        for entry, d in zip(entries, stage_dirs):
            t = pq.read_table(d / "rejects.parquet")
            all_rejects.append(t.append_column("stage", pa.array([entry["name"]] * t.num_rows, type=pa.string())))
        if all_rejects:
            write_table(pa.concat_tables(all_rejects, promote_options="default"), self.out / "rejects.parquet")
        for e in entries:
            e["balanced"] = (e["in"] + e.get("repeated", 0)
                             == e["out"] + sum(e["rejected"].values()) + sum(e["quarantined"].values()))
        report = {"recipe": self.recipe.name, "recipe_hash": self.recipe.hash(), "seed": self.recipe.seed,
                  "executor": self.executor_name, "version": VERSION, "stages": entries,
                  "final_samples": entries[-1]["out"] if entries else 0}
        _atomic_write_json(self.out / "report.json", report)
        write_report_html(self.out)
        return report


def _settings_of(stage: S.Stage) -> dict[str, Any]:
    """Every setting with its resolved value (defaults included), as later stages and fingerprints need."""
    cfg = stage.config
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}


def _count(directory: Path, kept_only: bool = False) -> int:
    files = data_files(directory)
    if not files:
        return 0
    ds = pads.dataset(files, format="parquet")
    return ds.count_rows(filter=pc.field(R.STATUS) == R.KEPT) if kept_only else ds.count_rows()


def _read_global_inputs(stage: S.Stage, files: list[str]) -> pa.Table:
    ds = pads.dataset(files, format="parquet")
    cols = stage.global_columns or ()
    if tuple(cols) == S.ALL_COLUMNS:
        table = ds.to_table(filter=pc.field(R.STATUS) == R.KEPT)
    else:
        wanted = ["key", R.ORDINAL, R.STATUS] + [c for c in cols if c in ds.schema.names and c not in ("key", R.ORDINAL)]
        table = ds.to_table(columns=wanted, filter=pc.field(R.STATUS) == R.KEPT)
    table = table.take(pc.sort_indices(table, sort_keys=[(R.ORDINAL, "ascending")]))
    return E.global_input(stage, table)


def run(recipe: Recipe | str | Path, out: str | Path | None = None, executor: str = "ray",
        until: str | None = None, progress: bool = True) -> RunResult:
    """Run a recipe (a Recipe or a YAML path). The notebook entry point: `pipelines.run("recipes/demo.yaml")`."""
    if not isinstance(recipe, Recipe):
        recipe = load(recipe)
    return Runner(recipe, out, executor=executor, until=until, progress=progress).run()
