"""The global step shared by the three dedup stages: exact-key edges + LSH edges -> components ->
survivors -> decisions, run through today's ``decide()``.

Shape (see ``curate.dedup.lsh``): the per-row map (hashes, signatures) runs in ``process_batch``
and lands in the stage's own columns; ``decide`` gets only those columns plus ``key``, ``source``
and the survivor's quality column — never image bytes. Inside ``decide`` the steps are the pure
functions the distributed primitives will run: band rows (map), ``bucket_edges`` (per-bucket
reduce), ``components`` (combine; scipy when the edge list fits one machine, large/small-star
otherwise) and ``choose_survivors`` (per-row apply).

Every row is numbered by its position after sorting on (content hash, key): anchors, bucket cuts
and tie-breaks then depend on content only, not on row order or batch size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import numpy as np
import pyarrow as pa

from curate import records as R
from curate.dedup import survivor as SV
from curate.dedup.components import components
from curate.dedup.lsh import Edges, equal_key_edges
from curate.stage import Stage, StageContext

DUP_COLUMNS: dict[str, pa.DataType] = {"dup_group": pa.string(), "dup_group_size": pa.int32(),
                                       SV.QUALITY_COLUMN: pa.float64()}


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
        "doc": "LSH buckets with more members are cut to this many (content order) and counted in the "
               "report: bounds the cost of degenerate buckets such as blank images"})


def with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    """Set or replace a column (a recipe may run a stage twice, or on its own output)."""
    idx = table.schema.get_field_index(name)
    return table.set_column(idx, name, values) if idx >= 0 else table.append_column(name, values)


@dataclass
class NearDuplicates:
    """What a stage's near-duplicate engine found: verified edges, how to describe the distance of a
    dropped row to its survivor (for the rejects detail), and engine numbers for the report."""
    edges: Edges
    measure: Callable[[np.ndarray, np.ndarray], list[str]]
    report: dict[str, Any] = field(default_factory=dict)


class DedupStage(Stage):
    """Base: subclasses fill ``hash_column`` in process_batch and may add ``near_edges``."""

    hash_column: ClassVar[str] = ""
    reason: ClassVar[str] = ""
    signature_columns: ClassVar[tuple[str, ...]] = ()
    requires = ("key", "source", "category")

    def __init__(self, config: Any = None, context: StageContext | None = None, **settings: Any):
        super().__init__(config, context, **settings)
        self.global_columns = ("source", self.hash_column, *self.signature_columns,
                               *SV.quality_columns(self.config.survivor_by))

    def validate_config(self) -> None:
        if self.config.max_bucket_size < 2:
            raise ValueError("max_bucket_size must be >= 2")

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

    # --- hook ---------------------------------------------------------------------------------------
    def near_duplicates(self, table: pa.Table) -> NearDuplicates:
        """Verified near-duplicate edges between positions of `table` (sorted by hash, key)."""
        return NearDuplicates(Edges(), lambda rows, survivors: ["same content hash"] * len(rows))

    # --- the global step ----------------------------------------------------------------------------
    def decide(self, table: pa.Table) -> pa.Table:
        table = table.sort_by([(self.hash_column, "ascending"), ("key", "ascending")])
        n = table.num_rows
        hashes = table.column(self.hash_column)
        valid = np.asarray(hashes.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        exact = equal_key_edges(np.asarray(hashes.fill_null("").to_numpy(zero_copy_only=False), dtype=object)
                                .astype(str), valid)
        found = self.near_duplicates(table)
        near = found.edges
        edges = exact.extend(near)
        labels = components(n, edges.src, edges.dst)
        quality = SV.quality_values(table, self.config.survivor_by)
        groups = SV.choose_survivors(labels, quality, self.config.prefer)
        keys = table.column("key").to_pylist()
        details = self._details(keys, groups, found.measure)
        self.report = {"dedup": SV.summary(self.name, groups, table.column("source").to_pylist(), {
            "exact_edges": int(exact.src.shape[0]), "verified_edges": int(near.src.shape[0]),
            "candidates": near.candidates, "rejected_candidates": near.rejected,
            "capped_buckets": near.capped_buckets, "capped_members": near.capped_members,
            **found.report})}
        return SV.decisions(table.column(R.ORDINAL).to_numpy(), keys, groups, self.reason, details)

    @staticmethod
    def _details(keys: list[str], groups: SV.Groups, measure: Callable[[np.ndarray, np.ndarray], list[str]]
                 ) -> list[str | None]:
        dropped = np.flatnonzero(groups.survivor != np.arange(len(keys)))
        out: list[str | None] = [None] * len(keys)
        measures = measure(dropped, groups.survivor[dropped]) if dropped.shape[0] else []
        for i, m in zip(dropped, measures):
            s = groups.survivor[i]
            out[i] = f"duplicate of {keys[s]}{'; ' + m if m else ''} (group of {groups.size[i]})"
        return out
