"""The ``cluster`` stage: hierarchical k-means over the embedding column, every row assigned.

Whole-dataset step, written as the distributed steps it is made of (``curate/cluster/kmeans.py``,
``stats.py``): a seeded sample of ``fit_sample_size`` rows goes to the driver and is fitted
(bottom-up levels, Vo et al.'s resampling); assignment is a per-batch map holding the centroids
(``assign_batch_rows`` rows at a time); per-cluster statistics are an exact aggregate of per-batch
partial sums. Today the runner hands ``decide()`` the embeddings of every kept row and the steps
run there in that shape; they move onto the distributed primitives unchanged.

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
from curate.cluster import columns as C
from curate.cluster.kmeans import FitSettings, Hierarchy, assign, draw_fit_sample, fit_hierarchy, seeded_hash
from curate.cluster.stats import ClusterSums, combine_stats, finalize_stats, partial_stats
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
        assign_batch_rows: int = field(default=65536, metadata={"doc": "Rows per assignment batch."})
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
        for name in ("fit_sample_size", "niter", "resample_points", "assign_batch_rows"):
            if int(getattr(c, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(c, name)}")
        if c.resampling_steps < 0 or c.report_clusters < 0 or c.report_keys < 0:
            raise ValueError("resampling_steps, report_clusters, report_keys: must be >= 0")

    def fit_settings(self) -> FitSettings:
        c = self.config
        return FitSettings(levels=tuple(int(k) for k in c.levels), niter=c.niter, resampling_steps=c.resampling_steps,
                           resample_points=c.resample_points, spherical=c.spherical, seed=self.context.seed)

    def decide(self, table: pa.Table) -> pa.Table:
        table = C.by_ordinal(table)
        valid = C.valid_mask(table, [self.config.column])
        rows = table.filter(pa.array(valid))
        n = table.num_rows
        ordinals = np.asarray(table.column(R.ORDINAL).to_numpy(zero_copy_only=False), dtype=np.int64)
        if rows.num_rows == 0:
            self.report["cluster"] = {"clustered": 0, "unclustered": n}
            return C.decisions(ordinals, [None] * n, [None] * n)
        points = C.matrix(rows.column(self.config.column))
        keys = rows.column("key").to_pylist()
        paths, dists, h = self.fit_and_assign(points, keys)
        extra = {C.CLUSTER_PATH: C.list_column(paths, valid, C.CLUSTER_COLUMNS[C.CLUSTER_PATH]),
                 C.CLUSTER_DISTANCES: C.list_column(dists, valid, C.CLUSTER_COLUMNS[C.CLUSTER_DISTANCES])}
        return C.decisions(ordinals, [None] * n, [None] * n, extra)

    def fit_and_assign(self, points: np.ndarray, keys: list[str]) -> tuple[np.ndarray, np.ndarray, Hierarchy]:
        """Sample -> fit (driver) -> assign per batch -> exact per-cluster statistics."""
        s = self.fit_settings()
        hashes = seeded_hash(keys, s.seed)
        sample = draw_fit_sample(hashes, self.config.fit_sample_size)
        t0 = time.perf_counter()
        h = fit_hierarchy(points[sample], s)
        fit_s = time.perf_counter() - t0
        paths, dists, sums = [], [], None
        step = self.config.assign_batch_rows
        t0 = time.perf_counter()
        for start in range(0, len(points), step):
            p, d = assign(points[start:start + step], h)
            part = [partial_stats(p[:, lv], d[:, lv], points[start:start + step], len(h.centroids[h.depth - 1 - lv]))
                    for lv in range(h.depth)]
            sums = part if sums is None else [combine_stats(a, b) for a, b in zip(sums, part)]
            paths.append(p)
            dists.append(d)
        assign_s = time.perf_counter() - t0
        path, dist = np.concatenate(paths), np.concatenate(dists)
        self.report["cluster"] = self._report(h, sums or [], path, keys, hashes, len(sample), fit_s, assign_s)
        return path, dist, h

    def _report(self, h: Hierarchy, sums: list[ClusterSums], path: np.ndarray, keys: list[str], hashes: np.ndarray,
                sample_rows: int, fit_s: float, assign_s: float) -> dict[str, Any]:
        levels = []
        for lv, s in enumerate(sums):
            st = finalize_stats(s)
            present = st["count"] > 0
            levels.append({"clusters": int(len(st["count"])), "non_empty": int(present.sum()),
                           "size_histogram": C.size_histogram(st["count"]),
                           "spread_histogram": C.value_histogram(st["rms_distance"][present]),
                           "variance_histogram": C.value_histogram(st["variance"][present])})
        leaf = finalize_stats(sums[-1]) if sums else {}
        return {"rows": int(len(path)), "fit_sample_rows": sample_rows, "levels_requested": list(self.config.levels),
                "levels": levels[::-1],   # finest first, like the setting
                "fit_seconds": round(fit_s, 3), "assign_seconds": round(assign_s, 3),
                "largest_leaves": self._largest_leaves(leaf, path, keys, hashes) if sums else []}

    def _largest_leaves(self, leaf: dict[str, np.ndarray], path: np.ndarray, keys: list[str],
                        hashes: np.ndarray) -> list[dict[str, Any]]:
        order = np.lexsort((np.arange(len(leaf["count"])), -leaf["count"]))[:self.config.report_clusters]
        out = []
        for c in order:
            if leaf["count"][c] == 0:
                break
            members = np.flatnonzero(path[:, -1] == c)
            shown = members[np.argsort(hashes[members], kind="stable")[:self.config.report_keys]]
            out.append({"path": [int(v) for v in path[members[0]]], "count": int(leaf["count"][c]),
                        "mean_distance": round(float(leaf["mean_distance"][c]), 5),
                        "variance": round(float(leaf["variance"][c]), 5), "keys": [keys[i] for i in shown]})
        return out
