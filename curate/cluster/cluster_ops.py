"""The ``cluster`` stage's whole-dataset step as batch functions for ``GlobalData`` operations.

* fit sample: ``aggregate`` — the ``size`` rows with the smallest seeded key hashes overall (ties:
  lower ``_ordinal``), the same sample however the rows are partitioned. The driver holds this
  bounded sample (``fit_sample_size`` embeddings) and nothing else per row: a first aggregate counts
  the rows, so each batch offers only rows whose hash is under a threshold that about
  ``size + 6 sqrt(size) + 64`` rows of the whole dataset pass (the hashes are uniform); should
  fewer than ``size`` pass, the threshold doubles and the batches offer again (exact either way);
* assignment: ``map_batches`` — the centroids travel with the function; each batch's rows get their
  cluster path and distances (the decision rows);
* statistics: integer per-cluster sums per batch (``stats.partial_stats``) plus the few
  smallest-hash member keys of each leaf, summed per cluster by a shuffle (``cells.py``), then
  merged on the driver (one row per cluster) in any order.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import records as R
from curate.cluster import columns as C
from curate.cluster.cells import sum_cells
from curate.cluster.kmeans import Hierarchy, assign, draw_fit_sample, seeded_hash
from curate.cluster.stats import ClusterSums, partial_stats

HASH = "_hash"
BatchFn = Callable[[pa.Table], pa.Table]


def _valid_rows(batch: pa.Table, column: str) -> pa.Table:
    return batch.filter(pa.array(C.valid_mask(batch, [column])))


ALL_HASHES = 1 << 64


def valid_rows_partial(column: str) -> BatchFn:
    return lambda batch: pa.table({"rows": [int(C.valid_mask(batch, [column]).sum())]})


def total_rows(parts: pa.Table) -> int:
    return int(pc.sum(parts.column("rows")).as_py() or 0) if parts.num_rows else 0


def sample_threshold(size: int, rows: int, attempt: int) -> int:
    """Hash bound under which ~size + 6 sqrt(size) + 64 of `rows` uniform uint64 hashes fall (times
    2**attempt); ALL_HASHES when that is every row."""
    wanted = (size + 6 * math.sqrt(size) + 64) * 2 ** attempt
    return ALL_HASHES if wanted >= rows else int(wanted / rows * ALL_HASHES)


def fit_sample_partial(column: str, seed: int, size: int, threshold: int = ALL_HASHES) -> BatchFn:
    def partial(batch: pa.Table) -> pa.Table:
        rows = _valid_rows(batch, column)
        hashes = seeded_hash(rows.column("key").to_pylist(), seed)
        under = np.flatnonzero(hashes < np.uint64(threshold)) if threshold < ALL_HASHES else np.arange(len(hashes))
        idx = pa.array(under[draw_fit_sample(hashes[under], size)], pa.int64())
        return pa.table({HASH: pa.array(hashes, pa.uint64()).take(idx), R.ORDINAL: rows.column(R.ORDINAL).take(idx),
                         column: rows.column(column).take(idx)})
    return partial


def fit_sample_combine(column: str, size: int) -> Callable[[pa.Table], tuple[np.ndarray, int]]:
    """The `size` smallest offered rows' embeddings, and how many rows were offered."""
    def combine(parts: pa.Table) -> tuple[np.ndarray, int]:
        if parts.num_rows == 0 or column not in parts.column_names:
            return np.zeros((0, 0), dtype=np.float32), 0
        order = pc.sort_indices(parts, sort_keys=[(HASH, "ascending"), (R.ORDINAL, "ascending")])
        return C.matrix(parts.column(column).take(order[:size])), parts.num_rows
    return combine


def fit_sample(data: Any, column: str, seed: int, size: int) -> np.ndarray:
    """The seeded fit sample (see the module docstring): a count, then offers under a hash threshold."""
    rows = data.aggregate(valid_rows_partial(column), total_rows)
    attempt = 0
    while True:
        threshold = sample_threshold(size, rows, attempt)
        sample, offered = data.aggregate(fit_sample_partial(column, seed, size, threshold),
                                         fit_sample_combine(column, size))
        if offered >= min(size, rows) or threshold == ALL_HASHES:
            return sample
        attempt += 1


def assign_batch(column: str, h: Hierarchy) -> BatchFn:
    """Decision rows of one batch: every row kept, with its cluster path and distances (null when the
    row has no embedding)."""
    def fn(batch: pa.Table) -> pa.Table:
        valid = C.valid_mask(batch, [column])
        n = batch.num_rows
        depth = h.depth
        paths, dists = np.zeros((0, depth), np.int32), np.zeros((0, depth), np.float32)
        if valid.any():
            paths, dists = assign(C.matrix(batch.column(column).filter(pa.array(valid))), h)
        extra = {C.CLUSTER_PATH: C.list_column(paths, valid, C.CLUSTER_COLUMNS[C.CLUSTER_PATH]),
                 C.CLUSTER_DISTANCES: C.list_column(dists, valid, C.CLUSTER_COLUMNS[C.CLUSTER_DISTANCES])}
        ords = np.asarray(batch.column(R.ORDINAL).to_numpy(zero_copy_only=False), dtype=np.int64)
        return C.decisions(ords, [None] * n, [None] * n, extra)
    return fn


def level_sizes(h: Hierarchy) -> list[int]:
    """Clusters per level, coarsest first (the order of a cluster path)."""
    return [len(h.centroids[h.depth - 1 - lv]) for lv in range(h.depth)]


def stats_partial(column: str, h: Hierarchy, seed: int, report_keys: int) -> BatchFn:
    """Per batch: one row per (level, non-empty cluster) with integer sums, and for leaves the
    `report_keys` member keys with the smallest seeded hash."""
    sizes = level_sizes(h)

    def partial(batch: pa.Table) -> pa.Table:
        rows = _valid_rows(batch, column)
        out: dict[str, list[Any]] = {k: [] for k in ("level", "cluster", "count", "dist", "dist_sq", "norm_sq", "vec",
                                                      "key_hashes", "keys")}
        if rows.num_rows == 0:
            return _stats_table(out)
        pts = C.matrix(rows.column(column))
        paths, dists = assign(pts, h)
        keys = rows.column("key").to_pylist()
        hashes = seeded_hash(keys, seed)
        for lv, k in enumerate(sizes):
            s = partial_stats(paths[:, lv], dists[:, lv], pts, k)
            leaf = lv == len(sizes) - 1
            for c in np.flatnonzero(s.count):
                members = np.flatnonzero(paths[:, lv] == c) if leaf else np.zeros(0, dtype=np.int64)
                shown = members[np.argsort(hashes[members], kind="stable")[:report_keys]]
                for name, value in (("level", lv), ("cluster", int(c)), ("count", int(s.count[c])),
                                    ("dist", int(s.dist[c])), ("dist_sq", int(s.dist_sq[c])),
                                    ("norm_sq", int(s.norm_sq[c])), ("vec", s.vec[c].tolist()),
                                    ("key_hashes", [int(v) for v in hashes[shown]]), ("keys", [keys[i] for i in shown])):
                    out[name].append(value)
        return _stats_table(out)
    return partial


def _stats_table(cols: dict[str, list[Any]]) -> pa.Table:
    types = {"level": pa.int32(), "cluster": pa.int64(), "count": pa.int64(), "dist": pa.int64(), "dist_sq": pa.int64(),
             "norm_sq": pa.int64(), "vec": pa.list_(pa.int64()), "key_hashes": pa.list_(pa.uint64()),
             "keys": pa.list_(pa.string())}
    return pa.table({k: pa.array(cols[k], t) for k, t in types.items()})


def stats_cell_sum(report_keys: int) -> BatchFn:
    """The per-cell reduce of ``stats_partial`` rows (see ``cells.py``)."""
    return sum_cells(("count", "dist", "dist_sq", "norm_sq"), vector="vec", keys=("key_hashes", "keys", report_keys))


def stats_combine(h: Hierarchy, dim: int, report_keys: int) -> Callable[[pa.Table], tuple[list[ClusterSums], dict]]:
    """Exact per-level sums (integer addition: any order) and each leaf's smallest-hash member keys."""
    sizes = level_sizes(h)

    def combine(parts: pa.Table) -> tuple[list[ClusterSums], dict[int, list[str]]]:
        sums = [ClusterSums(np.zeros(k, np.int64), np.zeros(k, np.int64), np.zeros(k, np.int64),
                            np.zeros((k, dim), np.int64), np.zeros(k, np.int64)) for k in sizes]
        members: dict[int, list[tuple[int, str]]] = {}
        if parts.num_rows == 0:
            return sums, {}
        level = parts.column("level").to_numpy()
        cluster = parts.column("cluster").to_numpy()
        for lv, s in enumerate(sums):
            sel = np.flatnonzero(level == lv)
            ids = cluster[sel]
            for name in ("count", "dist", "dist_sq", "norm_sq"):
                np.add.at(getattr(s, name), ids, parts.column(name).to_numpy()[sel])
            if len(sel):
                np.add.at(s.vec, ids, C.matrix(parts.column("vec").take(pa.array(sel)), np.int64))
        leaf_rows = np.flatnonzero(level == len(sizes) - 1)
        hashes = parts.column("key_hashes").to_pylist()
        keys = parts.column("keys").to_pylist()
        for i in leaf_rows:
            members.setdefault(int(cluster[i]), []).extend(zip(hashes[i], keys[i]))
        return sums, {c: [k for _, k in sorted(v)[:report_keys]] for c, v in members.items()}
    return combine
