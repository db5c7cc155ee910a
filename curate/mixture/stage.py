"""The `mixture` stage: make the kept data match the recipe's ratios, by samples or by tokens.

The seeds fix data mixtures per training stage (MindVL's per-dataset Table 11, multimodal:text 8:2
or 1:1, openPangu's grounding 7% vs 14%) and usually a budget ("the warm-up trains on 256B tokens").
So the stage takes ratios at one or two levels (``targets.py``) and an optional ``total`` in the
mixture's unit; large groups are down-sampled and small ones repeated up to ``max_repeat`` copies.
A group the cap keeps below its share is listed under ``shortfall`` in the report (or fails the run
with ``on_shortfall: fail``) — the other groups are *not* re-scaled to hide it.

Without ``total`` the stage keeps the largest total every group reaches within its cap; with the
default cap of 1 that is the old behaviour (down-sampling only), so old recipes are unchanged.

Repeats are distinct output rows: key ``{key}#r{n}``, ``repeat_of`` = the original key, and an
``_ordinal`` derived from the original's (``plan.repeat_ordinal``). The decision table carries them
as extra rows with ``_repeat_source`` (see ``pipelines.execution``), and the runner reports them as
``repeated``: in + repeated = out + rejected + quarantined.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import records as R
from curate.base.global_data import StepResult
from curate.mixture import distributed as D
from curate.mixture import plan as P
from curate.mixture.report import group_sums, mixture_report
from curate.mixture.targets import UNLISTED, Targets, build_targets
from curate.base import Resources, Stage, register

REPEAT_OF = "repeat_of"
REPEAT_SOURCE = "_repeat_source"   # bookkeeping column of decision rows that add a repeat (pipelines.execution)


class MixtureShortfall(ValueError):
    """on_shortfall: fail and a group cannot reach its share within max_repeat."""


@register
class MixtureStage(Stage):
    name = "mixture"
    description = ("Match the recipe's mixture: ratios by category (optionally by source within category) or by "
                   "source, in samples or tokens; down-sample large groups, repeat small ones up to max_repeat to "
                   "reach a total; seeded, independent of partitioning.")
    requires = ("key", "source", "category")
    adds = {REPEAT_OF: pa.string()}
    resources = Resources(cpus=1)
    global_columns = ("source", "category", "num_tokens")

    @dataclass
    class Config:
        by: Literal["category", "source"] = field(default="category", metadata={
            "doc": "first level of the ratios: category, or source for a flat mixture by source"})
        unit: Literal["samples", "tokens"] = field(default="samples", metadata={
            "doc": "what the ratios and total count: samples, or tokens (count_tokens must run before)"})
        ratios: dict[str, float] = field(default_factory=dict, metadata={
            "doc": "first-level shares; must sum to 1 unless normalize is true"})
        within: dict[str, dict[str, float]] = field(default_factory=dict, metadata={
            "doc": "second level (by: category): per category, source weights normalised within the category; "
                   "sources of that category not listed here are rejected as mixture:unlisted_group"})
        normalize: bool = field(default=False, metadata={
            "doc": "ratios are weights: divide by their sum (seed tables whose percentages do not sum to 100)"})
        total: int | None = field(default=None, metadata={
            "doc": "target size of the mixture in its unit (samples or tokens); null: the largest total every group "
                   "reaches within max_repeat"})
        max_repeat: float | dict[str, float] = field(default=1.0, metadata={
            "doc": "cap on copies per sample (1: no up-sampling); a number, or a mapping by source, category or '*'"})
        on_shortfall: Literal["report", "fail"] = field(default="report", metadata={
            "doc": "a group that cannot reach its share within max_repeat: report it (kept short), or fail the run"})
        tolerance: float = field(default=1e-6, metadata={"doc": "allowed deviation of the ratio sum from 1"})

    def validate_config(self) -> None:
        c = self.config
        if c.total is not None and (isinstance(c.total, bool) or not isinstance(c.total, int) or c.total <= 0):
            raise ValueError(f"total: must be a positive integer or null, got {c.total!r}")
        self.targets: Targets = build_targets(c.by, c.ratios, c.within, c.normalize, c.tolerance, c.max_repeat)

    def _weights(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray | None]:
        """Weights in the mixture's unit, and token counts for the report (None without num_tokens)."""
        has_tokens = "num_tokens" in table.column_names and table.column("num_tokens").null_count < table.num_rows
        tokens = (np.asarray(table.column("num_tokens").fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
                  if has_tokens else None)
        if self.config.unit == "tokens":
            if tokens is None:
                raise ValueError("mixture by tokens needs num_tokens: put count_tokens before the mixture")
            return tokens.astype(np.float64), tokens
        return np.ones(table.num_rows), tokens

    def _columns(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Per batch: leaf labels, seeded ranks, weights in the mixture's unit, tokens (or None)."""
        labels = self.targets.label_rows(table.column("category").to_pylist(), table.column("source").to_pylist())
        ranks = P.seeded_rank(table.column("key").to_pylist(), self.context.seed)
        weights, tokens = self._weights(table)
        return labels, ranks, weights, tokens

    def _derive(self, table: pa.Table) -> pa.Table:
        """Per row, what every pass needs: label, seeded rank, weight, tokens (null: no num_tokens in
        the batch). Hashing keys and labelling rows is the passes' main cost, so it is done once."""
        labels, ranks, weights, tokens = self._columns(table)
        return pa.table({R.ORDINAL: table.column(R.ORDINAL), "key": table.column("key"),
                         "label": pa.array(labels.tolist(), pa.string()), "rank": pa.array(ranks, pa.uint64()),
                         "weight": pa.array(weights, pa.float64()),
                         "tokens": pa.array(tokens, pa.int64()) if tokens is not None else
                         pa.nulls(table.num_rows, pa.int64())})

    @staticmethod
    def _derived(t: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(labels, ranks, weights, tokens or None) of a batch of ``_derive``'s rows."""
        tokens = t.column("tokens")
        return (np.asarray(t.column("label").to_pylist(), dtype=object), t.column("rank").to_numpy(),
                t.column("weight").to_numpy(),
                None if tokens.null_count == t.num_rows else
                np.asarray(tokens.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64))

    def global_step(self, data: Any) -> Any:
        """Both passes as aggregates (per-group totals and rank histograms, then the boundary bins'
        rows), the plan on the driver, and a per-row map: no process holds the rows. The plan equals
        decide()'s on the same rows, whatever the batching (hypothesis-tested). The per-row label,
        rank and weight are derived once and kept (Ray's object store) for the passes."""
        c = self.config
        cols = self._derived
        rows = data.map_batches(self._derive).materialize()
        stats = rows.aggregate(lambda t: D.stats_table(P.partial_stats(*cols(t))), D.stats_from_table)
        b = P.budget(self.targets, stats, c.total)
        bins, before = P.boundary_bins(b, stats)
        boundary = (rows.aggregate(lambda t: D.boundary_table(P.partial_boundary(*cols(t)[:3], bins)),
                                   D.boundary_from_table) if bins else {})
        plans = P.finish_plan(b, self.targets, stats, bins, before, boundary)
        self._check_shortfall(plans)

        def copies_of(t: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
            labels, ranks, _, tokens = cols(t)
            return labels, P.apply_plan(plans, labels, ranks), tokens

        def sums(t: pa.Table) -> pa.Table:
            part = D.sums_table(group_sums(*copies_of(t)))
            return part.append_column("has_tokens", pa.array([t.column("tokens").null_count < t.num_rows] *
                                                             part.num_rows, pa.bool_()))
        totals = rows.aggregate(sums, lambda t: (D.sums_from_table(t.drop_columns(["has_tokens"])),
                                                 bool(pc.any(t.column("has_tokens")).as_py()))
                                if t.num_rows else ({}, False))
        decisions = rows.map_batches(lambda t: decision_table(t.column(R.ORDINAL).to_numpy(), t.column("key").to_pylist(),
                                                              *copies_of(t)[:2]))
        return StepResult(decisions, {"mixture": mixture_report(self.targets, c.unit, plans, b, *totals)})

    def _check_shortfall(self, plans: dict[str, P.GroupPlan]) -> None:
        short = [g for g, p in plans.items() if p.short]
        if short and self.config.on_shortfall == "fail":
            raise MixtureShortfall(f"mixture: group(s) {short} cannot reach their share of total={self.config.total} "
                                   f"within max_repeat (available {[plans[g].available for g in short]})")

    def decide(self, table: pa.Table) -> StepResult:
        c = self.config
        labels = self.targets.label_rows(table.column("category").to_pylist(), table.column("source").to_pylist())
        keys = table.column("key").to_pylist()
        ranks = P.seeded_rank(keys, self.context.seed)
        weights, tokens = self._weights(table)
        plans, _stats, budget = P.plan_mixture(self.targets, labels, ranks, weights, tokens, c.total)
        self._check_shortfall(plans)
        copies = P.apply_plan(plans, labels, ranks)
        return StepResult(decision_table(table.column(R.ORDINAL).to_numpy(), keys, labels, copies),
                          {"mixture": mixture_report(self.targets, c.unit, plans, budget,
                                                     group_sums(labels, copies, tokens), tokens is not None)})


def decision_table(ordinals: np.ndarray, keys: list[str], labels: np.ndarray, copies: np.ndarray) -> pa.Table:
    """One decision per input row, then one extra kept row per repeat (with `_repeat_source` and `key`)."""
    reasons = np.where(copies > 0, None, np.where(labels == UNLISTED, "mixture:unlisted_group",
                                                  "mixture:downsampled")).tolist()
    n = len(keys)
    originals = pa.table({
        R.ORDINAL: pa.array(ordinals, type=pa.int64()),
        R.STATUS: pc.if_else(pa.array(copies > 0), pa.scalar(R.KEPT), pa.scalar(R.REJECTED)),
        R.REASON: pa.array(reasons, type=pa.string()),
        R.DETAIL: pa.nulls(n, type=pa.string()),
        REPEAT_OF: pa.nulls(n, type=pa.string()),
        REPEAT_SOURCE: pa.nulls(n, type=pa.int64()),
        "key": pa.nulls(n, type=pa.string()),
    })
    src, rep_ord, rep_key, rep_of = [], [], [], []
    for i in np.flatnonzero(copies > 1).tolist():
        o = int(ordinals[i])
        for r in range(1, int(copies[i])):
            src.append(o)
            rep_ord.append(P.repeat_ordinal(o, r))
            rep_key.append(P.repeat_key(keys[i], r))
            rep_of.append(keys[i])
    m = len(src)
    repeats = pa.table({
        R.ORDINAL: pa.array(rep_ord, type=pa.int64()),
        R.STATUS: pa.array([R.KEPT] * m, type=pa.string()),
        R.REASON: pa.nulls(m, type=pa.string()),
        R.DETAIL: pa.nulls(m, type=pa.string()),
        REPEAT_OF: pa.array(rep_of, type=pa.string()),
        REPEAT_SOURCE: pa.array(src, type=pa.int64()),
        "key": pa.array(rep_key, type=pa.string()),
    })
    return pa.concat_tables([originals, repeats])
