"""The dedup stages' shared settings and global step (distributed; see ``global_step``).

Per batch (``process_batch``) a stage writes its content hash, its signatures and, for derived
survivor measures, ``dup_quality``; the global step gets only those columns plus ``key``,
``source`` and ``_ordinal`` — never image bytes, references or texts. Subclasses supply the
engine: LSH bucket keys per row, the verification of a candidate pair, and the verification of a
row against a kept row on the full signatures (``signature_closeness``, with the value ``_detail``
reports): inside a component a row is removed only when verified close to a KEPT row
(``greedy_stars``), so near-duplicate chains do not collapse.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import numpy as np
import pyarrow as pa

from curate.base import Stage, StageContext
from curate.base.global_data import InlineData, StepResult, concat
from curate.base import records as R
from curate.dedup import global_step as G
from curate.dedup import star_components as CC
from curate.dedup import survivor as SV

DUP_COLUMNS: dict[str, pa.DataType] = {"dup_group": pa.string(), "dup_group_size": pa.int32(),
                                       SV.QUALITY_COLUMN: pa.float64()}
# Rows per shuffle partition of the global step (bucket rows are ~bands per row).
ROWS_PER_PARTITION = 200_000


@dataclass
class SurvivorConfig:
    """Settings every dedup stage shares."""
    survivor_by: str = field(default="resolution", metadata={
        "doc": "which copy of a group survives: 'resolution' (total image pixels), 'text_length', or any "
               "numeric column (e.g. clip_score); ties go to the smaller content hash, then key"})
    prefer: Literal["highest", "lowest"] = field(default="highest", metadata={
        "doc": "keep the member with the highest (or lowest) survivor_by value"})
    categories: list[str] = field(default_factory=list, metadata={
        "doc": "sample categories this stage deduplicates ([] = all); rows of other categories pass untouched"})
    max_bucket_size: int = field(default=1000, metadata={
        "doc": "LSH buckets with more members are cut to this many (by _ordinal) and counted in the report: "
               "bounds the cost of degenerate buckets such as blank images"})
    max_component_pairs: int = field(default=10_000_000, metadata={
        "doc": "comparisons per connected component beyond its best row's (which is compared with every member): "
               "choosing further kept rows stops there and the rows still undecided are KEPT, never removed "
               "unverified (reported as kept_unverified / capped_components)"})


def with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    """Set or replace a column (a recipe may run a stage twice, or on its own output)."""
    idx = table.schema.get_field_index(name)
    return table.set_column(idx, name, values) if idx >= 0 else table.append_column(name, values)


class DedupStage(Stage):
    """Base: subclasses fill ``hash_column`` (and signatures) in process_batch and supply the engine hooks."""

    hash_column: ClassVar[str] = ""
    reason: ClassVar[str] = ""
    signature_columns: ClassVar[tuple[str, ...]] = ()
    no_signature_label: ClassVar[str | None] = None    # report name of rows on the exact path only
    requires = ("key", "source", "category")
    batch_phase = "signatures"

    def __init__(self, config: Any = None, context: StageContext | None = None, **settings: Any):
        super().__init__(config, context, **settings)
        self.global_columns = ("source", self.hash_column, *self.signature_columns,
                               *SV.quality_columns(self.config.survivor_by))

    def validate_config(self) -> None:
        if self.config.max_bucket_size < 2:
            raise ValueError("max_bucket_size must be >= 2")
        if self.config.max_component_pairs < 0:
            raise ValueError("max_component_pairs must be >= 0")

    def with_quality(self, batch: pa.Table) -> pa.Table:
        """Add the survivor_by value when it is derived (resolution, text_length) from this row's columns."""
        if not SV.is_derived(self.config.survivor_by):
            return batch
        return with_column(batch, SV.QUALITY_COLUMN, SV.derived_quality(batch, self.config.survivor_by))

    def in_scope(self, batch: pa.Table) -> np.ndarray:
        """Rows of the configured categories (all rows when `categories` is empty)."""
        if not self.config.categories:
            return np.ones(batch.num_rows, dtype=bool)
        wanted = set(self.config.categories)
        return np.array([c in wanted for c in batch.column("category").to_pylist()], dtype=bool)

    # --- engine hooks (exact_dedup uses these defaults: no LSH) -------------------------------------
    def lsh_keys(self, batch: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Rows (indices into `batch`) that take part in LSH, and their (rows x bands) bucket keys."""
        return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.uint64)

    def carry(self, batch: pa.Table) -> pa.Table:
        """Per-row columns that travel with each bucket row for verification (default: the signatures)."""
        return batch.select(list(self.signature_columns))

    def verifier(self, rows: pa.Table) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """Verification of candidate pairs (indices into `rows`, which hold the ``carry`` columns)."""
        return lambda a, b: np.ones(a.shape[0], dtype=bool)

    # how a removed row is said to be close to its kept row: rows with an equal content hash always are
    same_label: ClassVar[str] = "same content hash"
    farthest_label: ClassVar[str | None] = None   # the report's name of the verified value (None: exact only)
    farther_sign: ClassVar[float] = 1.0           # +1: the value is a distance; -1: a similarity
    integer_values: ClassVar[bool] = False        # the value counts something (bits)

    def signature_closeness(self, rows: pa.Table) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """Index pairs of ``rows`` (a component's, with the global columns) -> (within the threshold on the
        full signatures, the verified value; NaN where a row has no signature). Default: never."""
        return lambda a, b: (np.zeros(a.shape[0], dtype=bool), np.full(a.shape[0], np.nan))

    def describe(self, values: np.ndarray) -> list[str]:
        """The verified value of each removed row, for ``_detail`` (NaN: matched on the content hash)."""
        return [self.same_label] * values.shape[0]

    def no_signature(self, batch: pa.Table) -> np.ndarray:
        """Rows with a content hash but no signature (short texts, blank images): exact path only."""
        return np.zeros(batch.num_rows, dtype=bool)

    def engine_report(self) -> dict[str, Any]:
        return {}

    # --- the global step ----------------------------------------------------------------------------
    def global_step(self, data: Any) -> Any:
        """Buckets -> verified edges -> components -> labels joined to the rows by _ordinal -> one
        survivor per component (``global_step`` has the steps). An input of at most one shuffle
        partition (``ROWS_PER_PARTITION``) runs those steps inside one reduce call — one shuffle
        instead of four or more, the same decisions; a larger one runs them as distributed steps.
        Either way the driver holds counters, a schema and one integer per components round."""
        rows = data.aggregate(G.rows_partial, G.rows_combine)
        if rows == 0:
            decided, near = None, {c: 0 for c in G.COUNTERS + (G.ROUNDS,)}
        elif rows <= ROWS_PER_PARTITION:
            decided = data.map_batches(G.with_one_key).shuffle_reduce(G.ONE, self._in_one_call, 1).materialize()
            near = decided.aggregate(G.counters_partial, G.counters_combine)
        else:
            decided, near = self._decided(data, -(-rows // ROWS_PER_PARTITION))
        summary = G.report_combine(pa.table({})) if decided is None else \
            decided.aggregate(G.report_partial, G.report_combine)
        no_signature = summary.pop("no_signature")
        if self.no_signature_label:
            summary[self.no_signature_label] = no_signature
        farthest = summary.pop("farthest")
        if self.farthest_label:
            value = None if farthest is None else round(self.farther_sign * farthest, 4)
            summary["farthest_removed"] = {self.farthest_label: int(value) if self.integer_values and value is not None
                                           else value}
        report = {"dedup": {"stage": self.name, **summary,
                            "exact_edges": near["exact_edges"], "candidates": near["candidates"],
                            "verified_edges": near["candidates"] - near["rejected"],
                            "rejected_candidates": near["rejected"], "capped_buckets": near["capped_buckets"],
                            "capped_members": near["capped_members"], "component_rounds": near[G.ROUNDS],
                            **self.engine_report()}}
        decisions = G.DECISION_SCHEMA.empty_table() if decided is None else decided.map_batches(G.project_decisions)
        return StepResult(decisions, report)

    def _in_one_call(self, group: pa.Table) -> pa.Table:
        """The whole distributed step on one reduce call's rows (all of them), in this worker; the
        counters ride on the first decision row (``counters_partial`` sums them)."""
        decided, near = self._decided(InlineData([group.drop_columns([G.ONE])]), 1)
        return G.with_counters(concat(decided.tables), near)

    def _decided(self, data: Any, parts: int) -> tuple[Any, dict[str, int]]:
        """Decisions for every row, and the counters of the edges and components."""
        records = data.map_batches(lambda b: G.row_records(b, self.no_signature))
        schema = records.aggregate(G.schema_partial, G.schema_combine)
        hash_col, max_bucket = self.hash_column, self.config.max_bucket_size
        edge_rows = (data.map_batches(lambda b: G.bucket_rows(b, hash_col, self.lsh_keys, self.carry))
                     .shuffle_reduce(G.BUCKET, lambda g: G.reduce_buckets(g, self.verifier, max_bucket), parts)
                     .materialize())
        near = edge_rows.aggregate(G.edge_counters_partial, G.edge_counters_combine)
        edges = near["exact_edges"] + near["candidates"] - near["rejected"]
        sign = 1.0 if self.config.prefer == "highest" else -1.0
        survivor_by, reason = self.config.survivor_by, self.reason
        matcher = G.Matcher(self.signature_closeness, self.describe, self.farther_sign, self.config.max_component_pairs,
                            self.lsh_keys)

        def decide(group: pa.Table) -> pa.Table:
            return G.decide_groups(group, lambda g: sign * SV.quality_values(g, survivor_by), hash_col, reason, matcher)
        if edges == 0:      # every row is a group of its own
            return records.map_batches(lambda b: decide(G.only_grouped(b, False))).materialize(), {**near, G.ROUNDS: 0}
        labels, rounds = CC.component_labels(edge_rows.map_batches(G.graph_edges), edges, parts)
        joined = (records.union(labels.map_batches(lambda t: G.label_records(t, schema)))
                  .shuffle_reduce(R.ORDINAL, G.attach_components, parts).materialize())
        alone = joined.map_batches(lambda b: decide(G.only_grouped(b, False)))
        grouped = joined.map_batches(lambda b: G.only_grouped(b, True)).shuffle_reduce(G.COMPONENT, decide, parts)
        return alone.union(grouped).materialize(), {**near, G.ROUNDS: rounds}
