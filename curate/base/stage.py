"""The stage contract every curation, counting, packing and writing step implements.

Ideas taken from two peers (not their code): NeMo Curator's stage declares its resources, inputs and
outputs and separates a once-per-worker ``setup()`` from ``process_batch()``; DataTrove's filter is a
tiny function ``filter(doc) -> bool | (bool, reason)``. Here:

* A ``Stage`` declares ``name``, ``requires`` (columns it reads), ``adds`` (typed columns it writes),
  ``resources`` (cpus, gpus, batch size, task or actor) and a ``Config`` dataclass of settings.
* ``setup()`` runs once per worker (load models there), ``process_batch(table)`` returns a
  ``BatchResult``: the kept rows plus every dropped row with a status and a reason. Nothing is lost
  silently — the runner checks ``in == kept + dropped`` for every batch.
* A stage that needs to see the whole dataset (dedup, top-fraction selection, mixture, packing,
  shard writing) also implements ``global_step(data)``: ``data`` is a ``GlobalData`` handle on the
  ``global_columns`` of the rows kept by ``process_batch`` (Ray Data under the Ray executor, parquet
  files read in-process under the inline one); the step composes map / aggregate / shuffle-reduce
  operations on it and returns one decision row per input row, joined back by ``_ordinal``. Small
  steps may implement ``decide(table)`` instead, which gathers those columns into one process.
* Bad input is not a bug: stage code raises ``BadSample`` (or returns a dropped row) for a sample
  whose bytes or fields are unusable, and that row alone is quarantined. Any other exception is a bug
  and fails the run, naming the stage, the batch and the first row.
* Rows are dropped one way: a ``Drop`` (reason, detail, status) or None per row, turned into the
  ``BatchResult`` by ``split_drops`` (``curate.base.drops``) — DataTrove's per-row verdict, with the
  detail a rejects manifest needs.

Stages are plain classes: ``stage.run(table)`` runs one in a notebook without Ray.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping, Protocol

import pyarrow as pa

from curate.base.batch import BadSample, BatchResult, error_detail, set_status  # noqa: F401 (the contract's names)
from curate.base.inline import run_stage_inline

ALL_COLUMNS = ("*",)



@dataclass(frozen=True)
class Resources:
    """What one worker of the stage needs. `kind="actor"` keeps state (a model) across batches."""
    cpus: float = 1.0
    gpus: float = 0.0
    npus: float = 0.0               # Ascend NPUs (Ray custom resource "NPU", as ray-ascend registers it)
    batch_size: int = 256
    kind: Literal["task", "actor"] = "task"
    concurrency: int | None = None  # actors in the pool (max); None: one per available CPU/GPU


class RunProfile(Protocol):
    """The run's model profile as the base layer may name it: pack.profile.ModelProfile, parsed once
    from the recipe's `model:` (the base layer imports nothing above it, so it names the shape, not
    the class; the stages that read it take the typed class through pack.profile.run_profile)."""
    @property
    def context_length(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class StageContext:
    """Run-wide facts a stage may need: the seed, where the run writes, and the recipe's identity."""
    seed: int = 0
    out_dir: str = ""
    recipe_name: str = ""
    recipe_hash: str = ""
    stage_index: int = 0
    # The names (only the names) of the stages before this one in the run: a stage whose name comes
    # again (two image_filter stages) labels what it records with its index to keep the two apart.
    earlier_stages: tuple[str, ...] = ()
    # The columns the stages after this one in the run read (their ``requires`` and ``reads_if_present``;
    # "*" stands for every column), or None when not known (a stage built alone).
    # A stage that writes a column only for later stages (image_filter's image_facts) skips that work
    # when the column is not in it; when it is None, it does the work.
    later_reads: frozenset[str] | None = None
    mixture: Mapping[str, Any] | None = None
    # Fraction of a stage's input that may fail with a non-BadSample error (quarantined as error:<Type>)
    # before the run fails. 0: any such error is a bug and fails the run at once.
    max_error_fraction: float = 0.0
    # The run's model profile, typed (the recipe's `model:`); None: no run declares one (the default).
    profile: RunProfile | None = None


class Stage:
    """Base class. Subclasses set the ClassVars and implement process_batch and/or decide."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ("key",)
    adds: ClassVar[Mapping[str, pa.DataType]] = {}
    resources: ClassVar[Resources] = Resources()
    # Columns the stage uses when an earlier stage wrote them and computes itself otherwise (the dedup
    # stages and image_facts): not required, but they tell that earlier stage someone reads them.
    reads_if_present: ClassVar[tuple[str, ...]] = ()
    # Columns handed to decide(); ("*",) means every column. None: the stage has no global step.
    global_columns: ClassVar[tuple[str, ...] | None] = None
    # Columns handed to summarize() for the report.
    summary_columns: ClassVar[tuple[str, ...]] = ()
    # A source stage (ingest) reads files instead of rows: its input is ``input_table()`` (one row per
    # task) and each batch of tasks expands into records through ``read_tasks()``.
    reads_sources: ClassVar[bool] = False
    # What the progress lines call this stage's per-batch pass (dedup: "signatures").
    batch_phase: ClassVar[str] = "map"

    @dataclass
    class Config:
        pass

    def __init__(self, config: Any = None, context: StageContext | None = None, **settings: Any):
        if config is None:
            config = self.Config(**settings)
        elif settings:
            config = dataclasses.replace(config, **settings)
        self.config = config
        self.context = context or StageContext()
        self._is_setup = False
        from curate.base.config_schema import check_config
        check_config(self.config)   # declared types and Literal choices, for every stage alike
        self.validate_config()

    # --- lifecycle -------------------------------------------------------------------------------
    def validate_config(self) -> None:
        """Raise ValueError naming the bad setting. Runs at construction (also at `validate recipe`)."""

    def setup(self) -> None:
        """Once per worker, before the first batch: load models, tokenizers, tables."""

    def ensure_setup(self) -> None:
        if not self._is_setup:
            self.setup()
            self._is_setup = True

    def has_batch_step(self) -> bool:
        return type(self).process_batch is not Stage.process_batch

    def has_global_step(self) -> bool:
        """A stage has a whole-dataset step exactly when it declares global_columns (a stage may clear
        them per instance when a setting makes the step unnecessary, e.g. no top_fraction)."""
        return self.global_columns is not None

    def process_batch(self, batch: pa.Table) -> BatchResult:
        return BatchResult.keep_all(batch)

    def input_identity(self) -> Any:
        """What identifies this stage's external inputs for the resume fingerprint (source stages:
        the files they read). None: the stage reads only the previous stage's rows."""
        return None

    def output_variant(self) -> Any:
        """What, besides the settings, decides what this stage writes — a choice it made from its
        ``StageContext`` (image_filter: whether it carries ``image_facts``) — for the resume
        fingerprint. None: nothing does."""
        return None

    def external_outputs(self) -> list[str]:
        """Paths outside the stage directory that this stage writes (e.g. the shards folder); a re-run
        treats the stage as complete only while they still exist with the sizes recorded."""
        return []

    def input_table(self) -> pa.Table:
        """Source stages: the task table the executor distributes."""
        raise NotImplementedError

    def read_tasks(self, tasks: pa.Table) -> pa.Table:
        """Source stages: the records (any status) read for a batch of tasks."""
        raise NotImplementedError

    def global_step(self, data: Any) -> Any:
        """Whole-dataset step on a ``GlobalData`` (``curate.base.global_data``) holding `key`, `_ordinal`
        and ``global_columns`` of every kept row. Returns decisions (a GlobalData or a table): `_ordinal`,
        `_status`, `_reason`, `_detail` and any `adds` columns, one row per input row; with numbers
        for report.json, ``StepResult(decisions, report)`` (``curate.base.global_data``). It runs on
        the driver: numbers it computes there (from ``data.aggregate``) are the step's own to return.

        The default gathers the columns into this process and calls ``decide()`` — fine for steps
        whose input is small; steps over per-sample data at scale override this instead."""
        return self.decide(data.gather())

    def decide(self, table: pa.Table) -> Any:
        """Small-data global step: gets the global columns of every kept row as one table; returns
        what ``global_step`` returns (a decisions table, or a StepResult with numbers)."""
        raise NotImplementedError

    def summary_partial(self, kept: pa.Table) -> pa.Table:
        """A small table standing for one batch of kept rows, computed on the workers; partials are
        merged (``summary_merge``) in any grouping and order and the result handed to ``summarize``.
        The default passes `summary_columns` (with key and _ordinal) through, which grows with the
        dataset on the driver: the stages here return counts and value histograms instead
        (``curate.base.summary_sketch``; count_tokens a histogram of lengths), so the driver stays flat."""
        return kept

    def summary_merge(self, parts: pa.Table) -> pa.Table:
        """Several concatenated partials as one (associative, order-free): what lets workers combine
        partials before the driver sees them. The default keeps them as they are."""
        return parts

    def summarize(self, kept: pa.Table) -> dict[str, Any]:
        """Extra numbers for report.json (fill, percentiles...), computed on the driver. Gets the
        concatenated (and perhaps merged) ``summary_partial`` tables (by default `summary_columns` of
        the kept rows; an empty table for a stage without summary columns). With a global step's
        ``StepResult.report`` this is the one way a stage's numbers reach the report
        (curate.base.inline.report_numbers): nothing is read off the stage object afterwards, so
        a number ``setup()`` computes (setup runs in the workers under Ray) must be computed here."""
        return {}

    # --- running without Ray -----------------------------------------------------------------------
    def run(self, table: pa.Table, batch_size: int | None = None) -> BatchResult:
        """Run the whole stage in-process on a table (notebooks, tests, the inline executor)."""
        return run_stage_inline(self, table, batch_size=batch_size)

    @classmethod
    def settings_schema(cls) -> dict[str, Any]:
        """JSON Schema of the Config dataclass (for the recipe schema and `mmcurate stages`)."""
        from curate.base.config_schema import dataclass_json_schema
        return dataclass_json_schema(cls.Config)

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        schema = input_schema
        for col, typ in self.adds.items():
            idx = schema.get_field_index(col)
            schema = schema.set(idx, pa.field(col, typ)) if idx >= 0 else schema.append(pa.field(col, typ))
        return schema


