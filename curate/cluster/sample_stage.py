"""The ``cluster_sample`` stage: keep a target of the clustered rows, balanced over the hierarchy.

Reads only the per-row columns ``cluster`` wrote (path and distances), so a different fraction,
alpha or beta needs no new clustering. Allocation: ``curate/cluster/sampling.py`` (water-filling
top-down, weights ``size**alpha * spread**beta``); inside a leaf: seeded random, closest to the
centroid first, or farthest first. ``max_repeat > 1`` lets small clusters be upsampled: such rows
stay one row each and carry ``cluster_repeat`` (how many times the trainer should see them).

Defaults: alpha = 0, beta = 0.5. alpha = beta = 0 is Vo et al.'s balanced sampling; beta = 0.5 adds
MindVL's tilt towards spread-out ("larger variance") clusters. On the planted benchmark
(``bench/bench_cluster.py``, keep 30% of 20k rows, 303 concepts) the two are equal: 300/303 concepts
kept and a 0.667 dominant share, against 160/303 and 0.898 for uniform random; alpha = 0.5 gives
back part of the gain (296/303, 0.727) and alpha = 1 is uniform (163/303, 0.901).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import records as R
from curate.base.global_data import StepResult
from curate.cluster import columns as C
from curate.cluster.cells import sum_cells, summed_per_cell
from curate.cluster.kmeans import seeded_hash
from curate.cluster.sampling import (AllocationSettings, allocate_tree, choose_in_leaves, combine_totals,
                                     totals_partial)
from curate.base import Resources, Stage, register

REPEAT = "cluster_repeat"
LEAF_KEY = "_cluster_leaf"
REDUCE_PARTITIONS = 16
TOTAL_COLUMNS = ("level", "node", "rows", "units", "sq", "parent")
NOT_SAMPLED = "cluster:not_sampled"


@register
class ClusterSample(Stage):
    name: ClassVar[str] = "cluster_sample"
    description: ClassVar[str] = ("Keep a fraction or count of the clustered rows by water-filling over the cluster "
                                  "hierarchy (weights size^alpha * spread^beta, Vo et al. / MindVL).")
    requires: ClassVar[tuple[str, ...]] = ("key", C.CLUSTER_PATH, C.CLUSTER_DISTANCES)
    adds: ClassVar[Mapping[str, pa.DataType]] = {REPEAT: pa.int32()}
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=4096, kind="task")
    global_columns: ClassVar[tuple[str, ...] | None] = (C.CLUSTER_PATH, C.CLUSTER_DISTANCES)

    @dataclass
    class Config:
        fraction: float | None = field(default=None, metadata={
            "doc": "Keep this fraction of the clustered rows (or tokens). Give fraction or count."})
        count: int | None = field(default=None, metadata={"doc": "Keep this many rows (or tokens)."})
        unit: Literal["samples", "tokens"] = field(default="samples", metadata={
            "doc": "Count the target in rows, or in `num_tokens` (run count_tokens first)."})
        alpha: float = field(default=0.0, metadata={"doc": "Weight exponent of cluster size (0: balanced, Vo et al.)."})
        beta: float = field(default=0.5, metadata={
            "doc": "Weight exponent of cluster spread (rms distance to centroid); > 0 samples spread-out clusters more."})
        within_leaf: Literal["random", "closest", "farthest"] = field(default="random", metadata={
            "doc": "Which rows of a leaf are kept: seeded random, closest to the centroid, or farthest."})
        max_repeat: int = field(default=1, metadata={
            "doc": "Upsampling cap: a cluster may be allocated up to this many times its size (1: no upsampling)."})
        report_clusters: int = field(default=20, metadata={"doc": "Leaves listed with sampled vs available."})

    def __init__(self, config: Any = None, context: Any = None, **settings: Any):
        super().__init__(config, context, **settings)
        if self.config.unit == "tokens":
            self.global_columns = (C.CLUSTER_PATH, C.CLUSTER_DISTANCES, "num_tokens")

    def validate_config(self) -> None:
        c = self.config
        if (c.fraction is None) == (c.count is None):
            raise ValueError("fraction, count: give exactly one of them")
        if c.fraction is not None and not 0.0 < float(c.fraction) <= float(c.max_repeat):
            raise ValueError(f"fraction: must be in (0, max_repeat], got {c.fraction}")
        if c.count is not None and int(c.count) < 0:
            raise ValueError(f"count: must be >= 0, got {c.count}")
        if int(c.max_repeat) < 1:
            raise ValueError(f"max_repeat: must be >= 1, got {c.max_repeat}")
        for name in ("alpha", "beta"):
            if not math.isfinite(float(getattr(c, name))):
                raise ValueError(f"{name}: must be a finite number")

    def _units(self, rows: pa.Table) -> np.ndarray:
        if self.config.unit == "samples":
            return np.ones(rows.num_rows, dtype=np.int64)
        if "num_tokens" not in rows.column_names or rows.column("num_tokens").null_count:
            raise ValueError("cluster_sample: unit tokens needs num_tokens on every clustered row (run count_tokens first)")
        return np.asarray(rows.column("num_tokens").to_numpy(zero_copy_only=False), dtype=np.int64)

    def global_step(self, data: Any) -> Any:
        """Per-node totals (summed per node by a shuffle, then aggregated: one row per node, ``cells.py``)
        -> allocation on the driver (small) -> the choice inside each
        leaf (shuffle_reduce by leaf: a leaf's rows meet in one call) -> the kept totals (aggregate)."""
        c = self.config
        totals = summed_per_cell(data, self._totals_partial, "level", "node", sum_cells(("rows", "units", "sq")),
                                 _totals_combine)
        if not totals:
            return StepResult(data.map_batches(lambda b: self._decide_leaves(b, [], [])), {"cluster_sample": {"clustered": 0}})
        available = int(totals[0].units.sum())
        target = self.target(available)
        quotas = allocate_tree(totals, target, AllocationSettings(c.alpha, c.beta, int(c.max_repeat), self.context.seed))
        keyed = data.map_batches(_with_leaf_key)
        decisions = keyed.shuffle_reduce(LEAF_KEY, lambda part: self._decide_leaves(
            part.drop_columns([LEAF_KEY]), totals, quotas), REDUCE_PARTITIONS).materialize()
        kept = decisions.aggregate(_kept_partial, _sum_kept)
        return StepResult(decisions, {"cluster_sample": self._report(totals, quotas, kept, available, target)})

    def _columns(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(valid mask, paths, distances, units) of the rows that have a cluster path."""
        valid = C.valid_mask(table, [C.CLUSTER_PATH, C.CLUSTER_DISTANCES])
        rows = table.filter(pa.array(valid))
        if rows.num_rows == 0:
            return valid, np.zeros((0, 0), np.int64), np.zeros((0, 0)), np.zeros(0, np.int64)
        return (valid, C.matrix(rows.column(C.CLUSTER_PATH), np.int64),
                C.matrix(rows.column(C.CLUSTER_DISTANCES), np.float64), self._units(rows))

    def _totals_partial(self, batch: pa.Table) -> pa.Table:
        _, paths, dists, units = self._columns(batch)
        if len(units) == 0:
            return pa.table({name: pa.array([], pa.int64()) for name in TOTAL_COLUMNS} | {"depth": pa.array([], pa.int64())})
        part = totals_partial(paths, dists, units)
        return pa.table({**{name: pa.array(part[name], pa.int64()) for name in TOTAL_COLUMNS},
                         "depth": pa.array(np.full(len(part["level"]), paths.shape[1]), pa.int64())})

    def _decide_leaves(self, table: pa.Table, totals: list[Any], quotas: list[np.ndarray]) -> pa.Table:
        """Decisions for whole leaves (and for unclustered rows: kept, null cluster_repeat)."""
        table = C.by_ordinal(table)
        n = table.num_rows
        ordinals = np.asarray(table.column(R.ORDINAL).to_numpy(zero_copy_only=False), dtype=np.int64)
        valid, paths, dists, units = self._columns(table)
        reasons: list[str | None] = [None] * n
        details: list[str | None] = [None] * n
        repeats_all = np.ones(n, dtype=np.int64)
        if len(units):
            keys = table.filter(pa.array(valid)).column("key").to_pylist()
            repeats = choose_in_leaves(paths[:, -1], dists[:, -1], units, seeded_hash(keys, self.context.seed),
                                       quotas[-1], self.config.within_leaf)
            idx = np.flatnonzero(valid)
            repeats_all[idx] = repeats
            for j in np.flatnonzero(repeats == 0):
                leaf = int(paths[j, -1])
                reasons[idx[j]] = NOT_SAMPLED
                details[idx[j]] = (f"leaf {'/'.join(str(int(v)) for v in paths[j])}: {int(quotas[-1][leaf])} of "
                                   f"{int(totals[-1].units[leaf])} {self.config.unit} sampled")
        repeat_col = pa.array([int(r) if v else None for r, v in zip(repeats_all, valid)], pa.int32())
        return C.decisions(ordinals, reasons, details, {REPEAT: repeat_col})

    def target(self, available: int) -> int:
        c = self.config
        return int(c.count) if c.count is not None else int(round(float(c.fraction) * available))

    def _report(self, totals: list[Any], quotas: list[np.ndarray], kept: dict[str, int], available: int,
                target: int) -> dict[str, Any]:
        c = self.config
        leaf_t, leaf_q = totals[-1], quotas[-1]
        order = np.lexsort((np.arange(len(leaf_t.units)), -leaf_t.units))[:c.report_clusters]
        present = leaf_t.rows > 0
        if c.unit == "samples":
            kept = {**kept, "kept_units": kept["kept_repeats"]}
        return {"unit": c.unit, "available": available, "target": target, **kept, "alpha": c.alpha, "beta": c.beta,
                "within_leaf": c.within_leaf, "max_repeat": c.max_repeat,
                "leaves": int(present.sum()), "leaves_kept": int((leaf_q[present] > 0).sum()),
                "sampled_fraction_histogram": C.value_histogram(leaf_q[present] / leaf_t.units[present].clip(1)),
                "largest_leaves": [{"leaf": int(i), "available": int(leaf_t.units[i]), "sampled": int(leaf_q[i]),
                                    "spread": round(float(leaf_t.spread[i]), 5)} for i in order if present[i]]}


def _totals_combine(parts: pa.Table) -> list[Any]:
    if parts.num_rows == 0:
        return []
    arrays = {name: parts.column(name).to_numpy() for name in TOTAL_COLUMNS}
    return combine_totals(arrays, int(pc.max(parts.column("depth")).as_py()))


def _with_leaf_key(batch: pa.Table) -> pa.Table:
    """The leaf id to shuffle on; unclustered rows get a key of their own (-1 - _ordinal)."""
    paths = batch.column(C.CLUSTER_PATH).to_pylist()
    ords = batch.column(R.ORDINAL).to_pylist()
    return batch.append_column(LEAF_KEY, pa.array([p[-1] if p else -1 - o for p, o in zip(paths, ords)], pa.int64()))


def _kept_partial(batch: pa.Table) -> pa.Table:
    rep = np.asarray(pc.fill_null(batch.column(REPEAT), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    sampled = np.asarray(pc.is_valid(batch.column(REPEAT)).to_numpy(zero_copy_only=False), dtype=bool)
    kept = np.asarray(pc.equal(batch.column(R.STATUS), R.KEPT).to_numpy(zero_copy_only=False), dtype=bool)
    return pa.table({"kept_rows": [int((kept & sampled).sum())], "repeated_rows": [int((rep > 1).sum())],
                     "unclustered_rows": [int((~sampled).sum())], "kept_repeats": [int(rep[kept & sampled].sum())]})


def _sum_kept(parts: pa.Table) -> dict[str, int]:
    names = ("kept_rows", "repeated_rows", "unclustered_rows", "kept_repeats")
    return {name: int(pc.sum(parts.column(name)).as_py() or 0) if parts.num_rows else 0 for name in names}
