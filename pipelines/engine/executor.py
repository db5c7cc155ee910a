"""Executors: who runs a stage. Ray Data on a laptop or a cluster (``pipelines.engine.ray_data``), or
inline in this process (``pipelines.engine.inline_executor``); this module is the protocol both
implement and the one factory that makes them.

Every stage goes through the same three calls, whatever it is (ingest, a filter, the mixture, the
shard writer): ``map_stages`` (the per-batch step, or reading files for a source stage; several
consecutive per-row stages as one fused pass — see ``pipelines.engine.links.apply_link``),
``global_data`` (a ``GlobalData`` handle on the kept rows for a whole-dataset step) and
``apply_decisions`` (the global step's answer joined back by ``_ordinal``). ``pipelines.engine.chains``
strings them together for a chain; the runner does the rest (resume, markers, the report), so both
executors produce the same rows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from curate.base import Stage
from pipelines.engine.progress import DISABLED, Progress, RowCounter

EXECUTORS = ("ray", "inline")
# Below this many rows (or source bytes / 1 KiB for ingest) `executor="auto"` runs a stage inline: on
# 2 cores Ray's fixed cost per stage (~2-30 s) dwarfs the work of a few thousand rows.
AUTO_INLINE_ROWS = 50_000


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


def make_executor(name: str, verbose: bool = False) -> Executor:
    """The executor called `name` ("ray" or "inline"). `verbose`: Ray's own logs and progress bars."""
    if name == "ray":
        from pipelines.engine.ray_data import RayExecutor   # imports Ray: only when asked for
        return RayExecutor(verbose=verbose)
    if name == "inline":
        from pipelines.engine.inline_executor import InlineExecutor
        return InlineExecutor()
    raise ValueError(f"unknown executor {name!r} ({', '.join(EXECUTORS)})")


class Executors:
    """The executors of one run, made when first needed and closed together. With "auto", a chain
    runs inline below AUTO_INLINE_ROWS (Ray's fixed cost per stage dominates small runs), on Ray above."""

    def __init__(self, name: str, verbose: bool = False, progress: Progress = DISABLED):
        self.name = name
        self.verbose = verbose
        self.progress = progress
        self._made: dict[str, Executor] = {}

    def for_rows(self, rows: int | None) -> Executor:
        """The executor for a chain of about `rows` input rows (None: unknown)."""
        name = self.name
        if name == "auto":
            name = "inline" if rows is not None and rows < AUTO_INLINE_ROWS else "ray"
        if name not in self._made:
            self._made[name] = make_executor(name, self.verbose)
            self._made[name].progress = self.progress
        return self._made[name]

    def close(self) -> None:
        for executor in self._made.values():
            executor.close()
