"""The runner: recipe in, stage directories + report.json out, resumable after any crash.

Layout of a run directory::

    OUT/recipe.json                      the resolved recipe and its hash
    OUT/stages/00_ingest/data/*.parquet  every row that entered the stage, with _status/_reason
    OUT/stages/00_ingest/rejects.parquet the rejected and quarantined rows (key, reason, detail, ...)
    OUT/stages/00_ingest/_COMPLETE.json  written last: the stage's fingerprint and report entry
    OUT/shards/...                       written by the final `shards` stage
    OUT/rejects.parquet                  all stages' rejects in one file
    OUT/report.json                      {"stages": [{"name", "in", "repeated", "out", "rejected", "quarantined"}]}
                                         — only what the data determines: byte-identical between runs
    OUT/report.html                      the same with plots and thumbnails (pipelines.report_html)
    OUT/run.json                         wall seconds, resumed stages, executor, output path

Resume: a stage whose ``_COMPLETE.json`` carries the same fingerprint (settings, seed, the content of
its inputs, its code, upstream fingerprint) and whose outputs are still on disk is skipped. A stage is built in ``NN_name.tmp`` and renamed into place before
its marker is written, so a SIGKILL anywhere leaves either a complete stage or a tmp dir that the
next run deletes. Stages are deterministic (ordered by ``_ordinal``, seeded by the recipe), so the
re-run writes the same bytes as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections import Counter
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
from pipelines.executors import PARQUET_OPTIONS, Executor, data_files, make_executor, write_table
from pipelines.fingerprint import code_hash, file_inventory, fingerprint, inventory_matches, package_version
from pipelines.outdir import claim_output, remove_owned
from pipelines.recipe import Recipe, StageSpec, check_environment, load, source_roots
from pipelines.report_html import render_fragment, write_report_html

# Below this many rows (or source bytes / 1 KiB for ingest) `executor="auto"` runs a stage inline: on
# 2 cores Ray's fixed cost per stage (~2-30 s) dwarfs the work of a few thousand rows.
AUTO_INLINE_ROWS = 50_000

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


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


class Runner:
    def __init__(self, recipe: Recipe, out_dir: str | Path | None = None, executor: str = "ray",
                 until: str | None = None, progress: bool = True, rerun_from: str | None = None,
                 verbose: bool = False):
        self.recipe = recipe
        self.out = Path(out_dir or recipe.output_dir).absolute()
        self.executor_name = executor
        self.until = until
        self.rerun_from = rerun_from
        self.progress = progress
        self.verbose = verbose
        self._executors: dict[str, Executor] = {}

    def log(self, msg: str) -> None:
        if self.progress:
            print(msg, flush=True)

    def executor_for(self, rows: int | None) -> Executor:
        """The recipe's executor; with "auto", inline below AUTO_INLINE_ROWS (Ray's fixed cost per
        stage dominates small runs) and Ray above."""
        name = self.executor_name
        if name == "auto":
            name = "inline" if rows is not None and rows < AUTO_INLINE_ROWS else "ray"
        if name not in self._executors:
            self._executors[name] = make_executor(name) if name != "ray" else make_ray(self.verbose)
        return self._executors[name]

    def run(self) -> RunResult:
        check_environment(self.recipe, self.out)
        with claim_output(self.out, source_roots(self.recipe)):
            return self._run_claimed()

    def _run_claimed(self) -> RunResult:
        recipe = self.recipe
        (self.out / "stages").mkdir(exist_ok=True)
        for leftover in (self.out / "stages").glob("*.tmp"):
            remove_owned(leftover)  # a stage that was being built when the last run died
        _atomic_write_json(self.out / "recipe.json", {"hash": recipe.hash(), **recipe.canonical()})
        plan = recipe.plan()
        names = [s.name for s in plan]
        for flag, value in (("--until", self.until), ("--from", self.rerun_from)):
            if value and value not in names:
                raise ValueError(f"{flag} {value!r}: no such stage in this recipe ({names})")
        entries: list[dict[str, Any]] = []
        timings: list[dict[str, Any]] = []
        stage_dirs: list[Path] = []
        upstream: dict[str, dict] = {}
        forced = False
        # Each stage's fingerprint chains its settings and code onto its upstream's: a changed setting or
        # a changed stage module re-runs that stage and everything after it, and nothing before it.
        prev_fp = fingerprint(package_version())
        try:
            for index, spec in enumerate(plan):
                context = S.StageContext(seed=recipe.seed, out_dir=str(self.out), recipe_name=recipe.name,
                                         recipe_hash=recipe.hash(), stage_index=index, mixture=recipe.mixture,
                                         upstream=dict(upstream), max_error_fraction=recipe.max_error_fraction,
                                         profile=recipe.model)
                stage = S.build(spec.name, spec.settings, context)
                final = self.out / "stages" / f"{index:02d}_{spec.name}"
                settings = _settings_of(stage)
                forced = forced or spec.name == self.rerun_from
                fp = fingerprint(prev_fp, spec.name, settings, recipe.seed, code_hash(type(stage).__module__),
                                 stage.input_identity())
                marker = final / "_COMPLETE.json"
                done = json.loads(marker.read_text()) if marker.exists() and not forced else None
                t0 = time.perf_counter()
                if (done and done.get("fingerprint") == fp and inventory_matches(done.get("outputs", {}), self.out)
                        and not (stage.reads_sources and _media_changed(final, done))):
                    entry = done["report"]
                    resumed = True
                    self.log(f"[{index:02d}] {spec.name:<16} complete, skipped (resume)")
                else:
                    remove_owned(final)
                    started_ns = time.time_ns()
                    entry = self._run_stage(stage, spec, index, final, stage_dirs)
                    outputs = [final] + [Path(p) for p in stage.external_outputs()]
                    _atomic_write_json(marker, {"fingerprint": fp, "report": entry, "started_ns": started_ns,
                                                "outputs": file_inventory(outputs, self.out)})
                    resumed = False
                entries.append(entry)
                timings.append({"name": spec.name, "seconds": round(time.perf_counter() - t0, 3), "resumed": resumed})
                stage_dirs.append(final)
                upstream[spec.name] = settings
                prev_fp = fp
                if self.until == spec.name:
                    break
        finally:
            for ex in self._executors.values():
                ex.close()
        report = self._report(entries, stage_dirs)
        _atomic_write_json(self.out / "run.json", {"out_dir": str(self.out), "executor": self.executor_name,
                                                   "stages": timings})
        return RunResult(self.out, report, stage_dirs)

    def _run_stage(self, stage: S.Stage, spec: StageSpec, index: int, final: Path,
                   stage_dirs: list[Path]) -> dict[str, Any]:
        tmp = final.with_name(final.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        pass1 = tmp / ("pass1" if stage.has_global_step() else "data")
        pass1.mkdir(parents=True)
        if stage.reads_sources:
            write_table(stage.input_table(), tmp / "tasks.parquet")
            files = [str(tmp / "tasks.parquet")]
            executor = self.executor_for(None if self.executor_name != "auto" else _source_rows_hint(stage))
        else:
            files = data_files(stage_dirs[-1] / "data")
            executor = self.executor_for(_count(stage_dirs[-1] / "data", kept_only=True))
        self.log(f"[{index:02d}] {spec.name:<16} running ({executor.name})")
        if stage.reads_sources or _count(stage_dirs[-1] / "data", kept_only=True):
            executor.map_stage(stage, files, pass1)
        else:
            schema = stage.output_schema(pq.read_schema(files[0]) if files else R.BASE_SCHEMA)
            write_table(schema.empty_table(), pass1 / "part-00000.parquet")
        n_in = _count(pass1) if stage.reads_sources else _count(stage_dirs[-1] / "data", kept_only=True)
        repeated = 0  # rows a global step added as repeats of kept rows (mixture up-sampling)
        if stage.has_global_step():
            out_data = tmp / "data"
            out_data.mkdir()
            files = data_files(pass1)
            if _count(pass1, kept_only=True):
                stage.ensure_setup()
                decisions = stage.global_step(executor.global_data(stage, files))
                repeated = executor.apply_decisions(stage, files, decisions, pq.read_schema(files[0]), out_data)
            else:
                for f in files:
                    os.replace(f, out_data / Path(f).name)
            shutil.rmtree(pass1)
        data = tmp / "data"
        # One streaming pass over the dropped rows writes the rejects manifest and tallies the reasons;
        # kept rows are only counted. Memory stays at one file's dropped rows, whatever the dataset size.
        counts = self._write_rejects(data, tmp / "rejects.parquet")
        counts["out"] = _count(data, kept_only=True)
        dropped_total = sum(counts["rejected"].values()) + sum(counts["quarantined"].values())
        if counts["out"] + dropped_total != n_in + repeated:
            raise E.AccountingError(f"stage {spec.name}: in={n_in} repeated={repeated} but kept+rejected+quarantined="
                                    f"{counts['out'] + dropped_total}")
        _check_error_fraction(stage, counts, n_in)
        summary = {}
        if stage.summary_columns:
            summary = stage.summarize(read_kept(tmp, list(stage.summary_columns) + ["key", R.ORDINAL]))
        entry = {"name": spec.name, "in": n_in, "repeated": repeated, "out": counts["out"],
                 "rejected": counts["rejected"],
                 "quarantined": counts["quarantined"],
                 "rejects": str((final / "rejects.parquet").relative_to(self.out)),
                 **summary, **stage.report}
        os.replace(tmp, final)
        self.log(f"[{index:02d}] {spec.name:<16} in={n_in} out={counts['out']} "
                 f"rejected={sum(counts['rejected'].values())} quarantined={sum(counts['quarantined'].values())}")
        return entry

    @staticmethod
    def _write_rejects(data: Path, path: Path) -> dict[str, Any]:
        """Write the dropped rows (sorted by _ordinal) file by file and return their tally.

        Every data file covers an increasing, disjoint range of ordinals (executors keep input order),
        so sorting each file's dropped rows gives the global order without holding them all."""
        files = data_files(data)
        schema = pq.read_schema(files[0]) if files else R.BASE_SCHEMA
        cols = [c for c in REJECT_COLUMNS if c in schema.names]
        out_schema = pa.schema([schema.field(c) for c in cols])
        counts: Counter[tuple[str, str | None]] = Counter()
        with pq.ParquetWriter(str(path), out_schema, **PARQUET_OPTIONS) as writer:
            for f in files:
                t = pads.dataset(f, format="parquet").to_table(columns=cols, filter=pc.field(R.STATUS) != R.KEPT)
                if t.num_rows:
                    writer.write_table(t.take(pc.sort_indices(t, sort_keys=[(R.ORDINAL, "ascending")])).cast(out_schema))
                    groups = t.group_by([R.STATUS, R.REASON], use_threads=False).aggregate([([], "count_all")])
                    for st, why, n in zip(*(groups.column(c).to_pylist() for c in (R.STATUS, R.REASON, "count_all"))):
                        counts[(st, why)] += n
        keys = sorted(counts, key=lambda k: (k[0], k[1] or ""))
        return E.tally([k[0] for k in keys], [k[1] for k in keys], [counts[k] for k in keys])

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
        # Only what the data determines: wall times, resume flags, paths and the executor go to run.json,
        # so two runs of the same recipe give byte-identical report.json files.
        report = {"recipe": self.recipe.name, "recipe_hash": self.recipe.hash(), "seed": self.recipe.seed,
                  "version": package_version(), "stages": entries,
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


def _media_changed(stage_dir: Path, marker: dict[str, Any]) -> bool:
    """Whether an image file referenced by a record changed since the source stage hashed it (then the
    stage re-runs). Refs are streamed batch by batch, never all in memory."""
    from curate.identity import stale_media
    files = data_files(stage_dir / "data")
    if not files or "started_ns" not in marker:
        return bool(files)
    started_ns = int(marker["started_ns"]) - 2_000_000_000   # 2 s slack for timestamp granularity
    batches = pads.dataset(files, format="parquet").to_batches(columns=["images"])
    refs = (ref for b in batches for refs in b.column(0).to_pylist() for ref in (refs or []))
    return bool(stale_media(refs, changed_after_ns=started_ns))


def _source_rows_hint(stage: S.Stage) -> int:
    """A cheap size estimate for a source stage before reading it: total bytes / 1 KiB per row."""
    total = 0
    for uri in stage.input_table().column("uri").to_pylist():
        try:
            total += os.stat(uri).st_size
        except OSError:
            return AUTO_INLINE_ROWS  # remote or unreadable: let Ray handle it
    return total // 1024


def _check_error_fraction(stage: S.Stage, counts: dict[str, Any], n_in: int) -> None:
    """With a tolerated error fraction, fail the run once errors (not bad samples) exceed it."""
    errors = sum(v for k, v in counts["quarantined"].items() if k.startswith("error:"))
    limit = stage.context.max_error_fraction
    if errors and n_in and errors / n_in > limit:
        raise E.StageError(f"stage {stage.name!r}: {errors} of {n_in} rows failed with errors "
                           f"({errors / n_in:.2%}), over max_error_fraction={limit:g}")


def make_ray(verbose: bool) -> Executor:
    from pipelines.ray_data import RayExecutor
    return RayExecutor(verbose=verbose)


def run(recipe: Recipe | str | Path, out: str | Path | None = None, executor: str = "auto",
        until: str | None = None, progress: bool = True, rerun_from: str | None = None,
        verbose: bool = False) -> RunResult:
    """Run a recipe (a Recipe or a YAML path). The notebook entry point: `pipelines.run("recipes/demo.yaml")`."""
    if not isinstance(recipe, Recipe):
        recipe = load(recipe)
    return Runner(recipe, out, executor=executor, until=until, progress=progress, rerun_from=rerun_from,
                  verbose=verbose).run()
