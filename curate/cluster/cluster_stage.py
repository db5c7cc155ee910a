"""The ``cluster`` stage: hierarchical k-means over the embedding column, every row assigned.

Whole-dataset step on the ``GlobalData`` operations (``curate/cluster/cluster_ops.py``): a seeded
sample of ``fit_sample_size`` rows goes to the driver and is fitted (bottom-up levels, Vo et al.'s
resampling, ``kmeans.py``); per-cluster statistics are an exact aggregate of per-batch integer sums
(``stats.py``); assignment is a per-batch map that carries the centroids. Only the sample (bounded
by ``fit_sample_size``, whatever the dataset's size: the k-means is fitted on it, not on every
row) and the per-cluster sums (one row per cluster, pre-summed by a shuffle: ``cells.py``) ever
reach the driver.

Rows without an embedding (e.g. text-only samples under ``embed: {modality: image}``) pass with a
null cluster path; the sampling and dedup stages leave them alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np
import pyarrow as pa

from curate.base import records as R
from curate.base.global_data import StepResult
from curate.cluster import cluster_ops
from curate.cluster.cells import summed_per_cell
from curate.cluster import columns as C
from curate.cluster.kmeans import FitSettings, Hierarchy, fit_hierarchy
from curate.cluster.stats import ClusterSums, finalize_stats
from curate.base import Resources, Stage, register


@register
class Cluster(Stage):
    name: ClassVar[str] = "cluster"
    description: ClassVar[str] = ("Hierarchical k-means (faiss, Vo et al. resampling) over an embedding column; "
                                  "each row gets its cluster path and distances to the centroids.")
    requires: ClassVar[tuple[str, ...]] = ("key", C.EMBEDDING)
    adds: ClassVar[Mapping[str, pa.DataType]] = C.CLUSTER_COLUMNS
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=4096, kind="task")
    global_columns: ClassVar[tuple[str, ...] | None] = (C.EMBEDDING,)

    @dataclass
    class Config:
        levels: list[int] = field(default_factory=lambda: [64, 8], metadata={
            "doc": "Clusters per level, finest first (Vo et al. on 743M web images: 10M/500k/50k/10k). "
                   "Clamped to the number of points available at that level."})
        column: str = field(default=C.EMBEDDING, metadata={"doc": "The embedding column (written by `embed`)."})
        fit_sample_size: int = field(default=100_000, metadata={
            "doc": "Rows the k-means is fitted on (a seeded sample by key hash); every row is assigned."})
        niter: int = field(default=20, metadata={"doc": "k-means iterations per fit."})
        resampling_steps: int = field(default=3, metadata={
            "doc": "Vo et al.'s resampling steps per level (0: plain k-means)."})
        resample_points: int = field(default=64, metadata={
            "doc": "Points kept per centroid in a resampling step (the closest ones)."})
        spherical: bool = field(default=True, metadata={"doc": "Unit-norm centroids (cosine geometry)."})
        report_clusters: int = field(default=20, metadata={"doc": "Largest leaf clusters listed in the report."})
        report_keys: int = field(default=3, metadata={"doc": "Member keys listed per reported cluster."})

    def __init__(self, config: Any = None, context: Any = None, **settings: Any):
        super().__init__(config, context, **settings)
        self.requires = ("key", self.config.column)
        self.global_columns = (self.config.column,)

    def validate_config(self) -> None:
        c = self.config
        if not c.levels or any(int(k) < 1 for k in c.levels):
            raise ValueError(f"levels: a non-empty list of cluster counts >= 1, got {c.levels}")
        if any(int(b) > int(a) for a, b in zip(c.levels, c.levels[1:])):
            raise ValueError(f"levels: finest first, each level no larger than the one below, got {c.levels}")
        for name in ("fit_sample_size", "niter", "resample_points"):
            if int(getattr(c, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(c, name)}")
        if c.resampling_steps < 0 or c.report_clusters < 0 or c.report_keys < 0:
            raise ValueError("resampling_steps, report_clusters, report_keys: must be >= 0")

    def fit_settings(self) -> FitSettings:
        c = self.config
        return FitSettings(levels=tuple(int(k) for k in c.levels), niter=c.niter, resampling_steps=c.resampling_steps,
                           resample_points=c.resample_points, spherical=c.spherical, seed=self.context.seed)

    def global_step(self, data: Any) -> Any:
        """Seeded sample to the driver (aggregate) -> fit -> assignment (map_batches, centroids in the
        function) and exact per-cluster statistics (shuffle by cluster, then aggregate). The
        embeddings never meet in one place."""
        c = self.config
        s = self.fit_settings()
        sample = cluster_ops.fit_sample(data, c.column, s.seed, c.fit_sample_size)
        if sample.shape[0] == 0:
            return StepResult(data.map_batches(_keep_all), {"cluster": {"clustered": 0}})
        t0 = time.perf_counter()
        h = fit_hierarchy(sample, s)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        sums, leaf_keys = summed_per_cell(data, cluster_ops.stats_partial(c.column, h, s.seed, c.report_keys),
                                          "level", "cluster", cluster_ops.stats_cell_sum(c.report_keys),
                                          cluster_ops.stats_combine(h, sample.shape[1], c.report_keys))
        stats_s = time.perf_counter() - t0
        return StepResult(data.map_batches(cluster_ops.assign_batch(c.column, h)),
                          {"cluster": self._report(h, sums, leaf_keys, sample.shape[0], fit_s, stats_s)})

    def _report(self, h: Hierarchy, sums: list[ClusterSums], leaf_keys: dict[int, list[str]], sample_rows: int,
                fit_s: float, stats_s: float) -> dict[str, Any]:
        levels = []
        for s in sums:
            st = finalize_stats(s)
            present = st["count"] > 0
            levels.append({"clusters": int(len(st["count"])), "non_empty": int(present.sum()),
                           "size_histogram": C.size_histogram(st["count"]),
                           "spread_histogram": C.value_histogram(st["rms_distance"][present]),
                           "variance_histogram": C.value_histogram(st["variance"][present])})
        leaf = finalize_stats(sums[-1])
        order = np.lexsort((np.arange(len(leaf["count"])), -leaf["count"]))[:self.config.report_clusters]
        largest = [{"path": [int(v) for v in h.ancestors(np.array([cid]))[0]], "count": int(leaf["count"][cid]),
                    "mean_distance": round(float(leaf["mean_distance"][cid]), 5),
                    "variance": round(float(leaf["variance"][cid]), 5), "keys": leaf_keys.get(int(cid), [])}
                   for cid in order if leaf["count"][cid] > 0]
        return {"rows": int(leaf["count"].sum()), "fit_sample_rows": sample_rows,
                "levels_requested": list(self.config.levels), "levels": levels[::-1],   # finest first, like the setting
                "fit_seconds": round(fit_s, 3), "assign_and_stats_seconds": round(stats_s, 3),
                "largest_leaves": largest}


def _keep_all(batch: pa.Table) -> pa.Table:
    """Decisions when nothing has an embedding: every row kept, null cluster columns."""
    n = batch.num_rows
    ords = np.asarray(batch.column(R.ORDINAL).to_numpy(zero_copy_only=False), dtype=np.int64)
    return C.decisions(ords, [None] * n, [None] * n, {name: pa.nulls(n, typ) for name, typ in C.CLUSTER_COLUMNS.items()})
