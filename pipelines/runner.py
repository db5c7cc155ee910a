"""The runner: recipe in, stage directories + report.json out, resumable after any crash.

Layout of a run directory::

    OUT/recipe.json                      the resolved recipe and its hash
    OUT/stages/00_ingest/data/*.parquet  every row that entered the stage, with _status/_reason
    OUT/stages/00_ingest/rejects.parquet the rejected and quarantined rows (key, reason, detail, ...)
    OUT/stages/00_ingest/_COMPLETE.json  written last: the stage's fingerprint and report entry
    OUT/shards/...                       written by the final `shards` stage
    OUT/rejects.parquet                  all stages' rejects in one file
    OUT/images_removed.parquet           every image a stage took out of a kept document (key, position,
                                         reference, stage, reason; pipelines.engine.removed_images)
    OUT/report.json                      {"stages": [{"name", "in", "repeated", "out", "rejected", "quarantined"}]}
                                         — only what the data determines: byte-identical between runs
    OUT/report.html                      the same with plots and thumbnails (pipelines.present.report_html)
    OUT/run.json                         wall seconds, resumed stages, executor, output path

Resume: a stage whose ``_COMPLETE.json`` carries the same fingerprint (settings, seed, the content of
its inputs, its code, upstream fingerprint), that read the upstream content that is on disk now
(``input_digest``, the sha256 content digest of the upstream stage's files: an upstream stage
that re-ran and wrote other bytes, e.g. ingest after a referenced image changed, re-runs everything
after it), and whose outputs are still on disk unchanged (size and sha256 recorded at commit,
re-read only for a file whose stat changed) is skipped. A stage is built in ``NN_name.tmp`` and renamed into place before
its marker is written, so a SIGKILL anywhere leaves either a complete stage or a tmp dir that the
next run deletes. Stages are deterministic (ordered by ``_ordinal``, seeded by the recipe), so the
re-run writes the same bytes as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate import base as S
from curate.base import inline as E
from curate.base import records as R
from curate.base.diskspace import find_out_of_space
from pipelines.engine.chains import ChainResult, chain_input, run_chain
from pipelines.engine.executor import Executors
from pipelines.engine.fusion import FUSED_INTO, Member, fusion_groups, stage_rows
from pipelines.engine import removed_images
from pipelines.fingerprint import code_hash, content_digest, file_inventory, fingerprint, package_version
from pipelines.markers import atomic_write_json, read_marker, stale_reason
from pipelines.outdir import claim_output, remove_owned
from pipelines.engine.progress import Progress
from pipelines.engine.tables import write_table
from pipelines.recipe import Recipe, StageSpec, check_environment, load, source_roots
from pipelines.present.report_html import render_fragment, write_report_html

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
    """The rows a stage kept, also for a stage fused into a later one (then with the later stages'
    columns too)."""
    table = stage_rows(stage_dir, columns, kept=True)
    return table if table is not None else R.BASE_SCHEMA.empty_table()


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
        self._progress = Progress(enabled=progress)   # rows/s and ETA of every pass (pipelines.engine.progress)
        self._executors = Executors(executor, verbose, self._progress)
        self._ran_on = executor

    def log(self, msg: str) -> None:
        if self.progress:
            print(msg, flush=True)

    def run(self) -> RunResult:
        """Run the recipe. A full disk anywhere (a stage's files, shards, the report; in this process
        or a Ray worker) ends it with OutOfSpace naming the path, after deleting what was being built."""
        check_environment(self.recipe, self.out)
        try:
            with claim_output(self.out, source_roots(self.recipe)):
                try:
                    return self._run_claimed()
                except Exception as exc:
                    if find_out_of_space(exc, str(self.out)) is not None:
                        self._drop_unfinished()
                    raise
        except Exception as exc:
            full = find_out_of_space(exc, str(self.out))
            if full is None:
                raise
            raise full from None

    def _drop_unfinished(self) -> None:
        """After a full disk: delete the stages being built (never committed, so nothing complete is
        lost), giving their space back; the next run rebuilds them."""
        for unfinished in (self.out / "stages").glob("*.tmp"):
            try:
                remove_owned(unfinished)
            except OSError:
                pass   # the next run's start removes it

    def _run_claimed(self) -> RunResult:
        recipe = self.recipe
        (self.out / "stages").mkdir(exist_ok=True)
        for leftover in (self.out / "stages").glob("*.tmp"):
            remove_owned(leftover)  # a stage that was being built when the last run died
        atomic_write_json(self.out / "recipe.json", {"hash": recipe.hash(), **recipe.canonical()})
        plan = recipe.plan()
        names = [s.name for s in plan]
        for flag, value in (("--until", self.until), ("--from", self.rerun_from)):
            if value and value not in names:
                raise ValueError(f"{flag} {value!r}: no such stage in this recipe ({names})")
        if self.until:
            plan = plan[: names.index(self.until) + 1]
        forced_from = names.index(self.rerun_from) if self.rerun_from else len(names)
        entries: list[dict[str, Any]] = []
        timings: list[dict[str, Any]] = []
        stage_dirs: list[Path] = []
        upstream_digest: str | None = None   # content digest of the stage whose rows the next chain reads
        try:
            for group in fusion_groups(self._members(plan)):
                start = self._resume_point(group, forced_from, upstream_digest)
                for m in group[:start]:
                    done = read_marker(m.final)
                    entries.append(done["report"])
                    timings.append({"name": m.name, "seconds": 0.0, "resumed": True})
                    stage_dirs.append(m.final)
                    if not done.get(FUSED_INTO):   # a stage that owns its rows: the next chain reads them
                        upstream_digest = done.get("digest")
                    self.log(f"[{m.index:02d}] {m.name:<16} complete, skipped (resume)")
                if start < len(group):
                    t0 = time.perf_counter()
                    ran = group[start:]
                    entries += self._run_group(ran, stage_dirs, upstream_digest)
                    upstream_digest = read_marker(ran[-1].final)["digest"]
                    seconds = round(time.perf_counter() - t0, 3)
                    timings += [{"name": m.name, "seconds": seconds if m is ran[-1] else None, "resumed": False,
                                 "executor": self._ran_on,
                                 **({FUSED_INTO: ran[-1].final.name} if m is not ran[-1] else {})} for m in ran]
                    stage_dirs += [m.final for m in ran]
        finally:
            self._executors.close()
        # run.json first: report.html shows its executor and stage times
        atomic_write_json(self.out / "run.json", {"out_dir": str(self.out), "executor": self.executor_name,
                                                  "stages": timings, "progress_cost": self._progress.cost})
        report = self._report(entries, stage_dirs)
        return RunResult(self.out, report, stage_dirs)

    def _members(self, plan: list[StageSpec]) -> list[Member]:
        """Every stage of the plan built, with its fingerprint. Each fingerprint chains its settings,
        code and ``output_variant()`` onto its upstream's: a changed setting or a changed stage module
        re-runs that stage and everything after it, and nothing before it; so does a change later in
        the recipe that changes what an earlier stage writes (image_filter's image_facts)."""
        recipe = self.recipe
        members: list[Member] = []
        prev_fp = fingerprint(package_version())
        for index, spec in enumerate(plan):
            stage = S.build(spec.name, spec.settings, recipe.stage_context(index, str(self.out)))
            settings = _settings_of(stage)
            variant = stage.output_variant()   # only where a stage has one: the others' fingerprints stay
            prev_fp = fingerprint(prev_fp, spec.name, settings, recipe.seed, code_hash(type(stage).__module__),
                                  stage.input_identity(), *([variant] if variant is not None else []))
            members.append(Member(index, stage, self.out / "stages" / f"{index:02d}_{spec.name}", prev_fp,
                                  spec.checkpoint))
        return members

    def _resume_point(self, group: list[Member], forced_from: int, upstream_digest: str | None) -> int:
        """How many leading stages of a chain are complete up to one that owns its rows (a resume point):
        the chain re-runs from there. Complete means: same fingerprint, built from the upstream content
        that is on disk now, and every file still as committed."""
        point = 0
        for k, m in enumerate(group):
            done = read_marker(m.final)
            if m.index >= forced_from or done is None:
                break
            stale = stale_reason(m, done, upstream_digest, self.out)
            if stale:
                self.log(f"[{m.index:02d}] {m.name:<16} not resumed: {stale}")
                break
            if not done.get(FUSED_INTO):
                point = k + 1
                upstream_digest = done.get("digest")
        return point

    def _run_group(self, group: list[Member], stage_dirs: list[Path], upstream_digest: str | None) -> list[dict[str, Any]]:
        """Run a chain (one stage, or per-row stages fused into one pass, ending with at most one global
        step), then account for, write and mark each of its stages."""
        for m in group:
            remove_owned(m.final)
            remove_owned(m.tmp)   # a tmp dir a crashed run left (only ever one mmcurate created)
            m.tmp.mkdir(parents=True)
        head = group[0]
        started_ns = time.time_ns()
        source = chain_input(head, stage_dirs[-1] if stage_dirs else None, self._progress.enabled)
        executor = self._executors.for_rows(source.size_hint() if self.executor_name == "auto" else None)
        chain = " + ".join(m.name for m in group)
        self.log(f"[{head.index:02d}] {chain:<16} running ({executor.name}{', fused' if len(group) > 1 else ''})")
        self._progress.stage(f"[{head.index:02d}] {chain}")
        self._ran_on = executor.name   # run.json's executor per stage
        return self._account(group, run_chain(group, source, executor), started_ns, upstream_digest)

    def _account(self, group: list[Member], ran: ChainResult, started_ns: int,
                 upstream_digest: str | None) -> list[dict[str, Any]]:
        """Each stage's report entry from the chain's counts (in = out + rejected + quarantined,
        checked), then the chain committed."""
        owner, n_in, repeated, kept = group[-1], ran.rows_in, ran.repeated, ran.kept
        tallies, summaries = ran.tallies, ran.summaries
        entries = []
        for m in group:
            counts = tallies[m.index]
            extra = repeated if m is owner else 0
            counts["out"] = n_in + extra - sum(counts["rejected"].values()) - sum(counts["quarantined"].values())
            if m is owner and counts["out"] != kept:
                raise E.AccountingError(f"stage {m.name}: in={n_in} repeated={extra} but kept+rejected+quarantined="
                                        f"{kept + n_in + extra - counts['out']}")
            _check_error_fraction(m.stage, counts, n_in)
            entries.append({"name": m.name, "in": n_in, "repeated": extra, "out": counts["out"],
                            "rejected": counts["rejected"], "quarantined": counts["quarantined"],
                            "rejects": str((m.final / "rejects.parquet").relative_to(self.out)),
                            **removed_images.report_entry(ran.removed[m.index]), **summaries[m.index]})
            self.log(f"[{m.index:02d}] {m.name:<16} in={n_in} out={counts['out']} "
                     f"rejected={sum(counts['rejected'].values())} quarantined={sum(counts['quarantined'].values())}")
            n_in = counts["out"]
        self._commit(group, entries, started_ns, upstream_digest)
        return entries

    def _commit(self, group: list[Member], entries: list[dict[str, Any]], started_ns: int,
                upstream_digest: str | None) -> None:
        """Move the chain's directories into place, then write their markers, the owner's last: a crash
        in between leaves stages without markers, which the next run rebuilds. Each marker holds the
        content digest of the upstream stage the chain read (``input_digest``) and its own
        (``digest``), which the stages after it record in turn."""
        owner = group[-1]
        for m in group:
            os.replace(m.tmp, m.final)
        for m, entry in zip(group, entries):
            outputs = [m.final] + ([Path(p) for p in m.stage.external_outputs()] if m is owner else [])
            inventory = file_inventory(outputs, self.out)
            atomic_write_json(m.final / "_COMPLETE.json", {
                "fingerprint": m.fingerprint, "report": entry, "started_ns": started_ns, "stage_index": m.index,
                "input_digest": upstream_digest, "digest": content_digest(inventory),
                **({FUSED_INTO: owner.final.name} if m is not owner else {}), "outputs": inventory})

    def _report(self, entries: list[dict[str, Any]], stage_dirs: list[Path]) -> dict[str, Any]:
        all_rejects = []
        for entry, d in zip(entries, stage_dirs):
            t = pq.read_table(d / "rejects.parquet")
            all_rejects.append(t.append_column("stage", pa.array([entry["name"]] * t.num_rows, type=pa.string())))
        if all_rejects:
            write_table(pa.concat_tables(all_rejects, promote_options="default"), self.out / "rejects.parquet")
        removed_images.collect(stage_dirs, self.out)   # every image taken out of a document, by stage
        for e in entries:
            e["balanced"] = (e["in"] + e.get("repeated", 0)
                             == e["out"] + sum(e["rejected"].values()) + sum(e["quarantined"].values()))
        # Only what the data determines: wall times, resume flags, paths and the executor go to run.json,
        # so two runs of the same recipe give byte-identical report.json files.
        report = {"recipe": self.recipe.name, "recipe_hash": self.recipe.hash(), "seed": self.recipe.seed,
                  "version": package_version(), "stages": entries,
                  "final_samples": entries[-1]["out"] if entries else 0}
        atomic_write_json(self.out / "report.json", report)
        write_report_html(self.out)
        return report


def _settings_of(stage: S.Stage) -> dict[str, Any]:
    """Every setting with its resolved value (defaults included), as later stages and fingerprints need."""
    cfg = stage.config
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}


def _check_error_fraction(stage: S.Stage, counts: dict[str, Any], n_in: int) -> None:
    """With a tolerated error fraction, fail the run once errors (not bad samples) exceed it."""
    errors = sum(v for k, v in counts["quarantined"].items() if k.startswith("error:"))
    limit = stage.context.max_error_fraction
    if errors and n_in and errors / n_in > limit:
        raise E.StageError(f"stage {stage.name!r}: {errors} of {n_in} rows failed with errors "
                           f"({errors / n_in:.2%}), over max_error_fraction={limit:g}")


def run(recipe: Recipe | str | Path, out: str | Path | None = None, executor: str = "auto",
        until: str | None = None, progress: bool = True, rerun_from: str | None = None,
        verbose: bool = False) -> RunResult:
    """Run a recipe (a Recipe or a YAML path). The notebook entry point: `pipelines.run("recipes/demo.yaml")`."""
    if not isinstance(recipe, Recipe):
        recipe = load(recipe)
    return Runner(recipe, out, executor=executor, until=until, progress=progress, rerun_from=rerun_from,
                  verbose=verbose).run()
