"""Arrow <-> numpy for the clustering stages: embeddings, cluster paths, decisions, report histograms.

The cluster columns every row gets (declared once here, so the three stages agree):

* ``cluster_path``: list<int32>, the cluster id at every level, coarsest first (the last is the leaf);
* ``cluster_distances``: list<float32>, the row's distance to the centroid of each of those clusters.

Both are kept on the rows so that ``cluster_sample`` can be re-tuned (alpha, beta, fraction) on the
same clustering without fitting or assigning again.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import records as R

EMBEDDING = "embedding"
CLUSTER_PATH = "cluster_path"
CLUSTER_DISTANCES = "cluster_distances"
CLUSTER_COLUMNS: dict[str, pa.DataType] = {CLUSTER_PATH: pa.list_(pa.int32()),
                                           CLUSTER_DISTANCES: pa.list_(pa.float32())}


def embedding_type(dim: int, dtype: str = "float16") -> pa.DataType:
    """The embedding column: a fixed-size list (dim known from the backend) of float16 or float32."""
    return pa.list_({"float16": pa.float16(), "float32": pa.float32()}[dtype], int(dim))


def by_ordinal(table: pa.Table) -> pa.Table:
    """Rows in _ordinal order: decisions must not depend on the order partitions arrived in."""
    return table.take(pc.sort_indices(table, sort_keys=[(R.ORDINAL, "ascending")]))


def matrix(column: pa.ChunkedArray | pa.Array, dtype: Any = np.float32) -> np.ndarray:
    """(n, d) array of a non-null list / fixed-size-list column (all rows the same length)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0), dtype=dtype)
    flat = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=dtype)
    if flat.size % n:
        raise ValueError(f"column {getattr(column, '_name', '')}: rows of unequal length")
    return flat.reshape(n, flat.size // n)


def valid_mask(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """True where every named column is non-null (rows without an embedding / a cluster path)."""
    mask = np.ones(table.num_rows, dtype=bool)
    for col in columns:
        mask &= np.asarray(pc.is_valid(table.column(col)).to_numpy(zero_copy_only=False), dtype=bool)
    return mask


def decisions(ordinals: np.ndarray, reasons: Sequence[str | None], details: Sequence[str | None],
              extra: dict[str, pa.Array] | None = None) -> pa.Table:
    """Decision rows of a global step: one per input row; a reason means rejected."""
    status = [R.KEPT if r is None else R.REJECTED for r in reasons]
    cols: dict[str, pa.Array] = {R.ORDINAL: pa.array(ordinals, pa.int64()), R.STATUS: pa.array(status, pa.string()),
                                 R.REASON: pa.array(list(reasons), pa.string()),
                                 R.DETAIL: pa.array(list(details), pa.string())}
    cols.update(extra or {})
    return pa.table(cols)


def list_column(values: np.ndarray, valid: np.ndarray, typ: pa.DataType) -> pa.Array:
    """(n_valid, L) values spread back to n rows as a list column; invalid rows null."""
    n = len(valid)
    width = values.shape[1] if values.ndim == 2 else 0
    offsets = np.zeros(n + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(np.where(valid, width, 0))
    flat = pa.array(values.reshape(-1), typ.value_type)
    mask = pa.array(~valid)
    return pa.ListArray.from_arrays(pa.array(offsets), flat, mask=mask).cast(typ)


def size_histogram(sizes: np.ndarray, weights: np.ndarray | None = None) -> dict[str, int]:
    """Cluster sizes in powers-of-two bins: {"1": 3, "2-3": 5, "4-7": ...}; ``weights``: how many
    clusters each entry of ``sizes`` stands for (1 each by default)."""
    out: dict[str, int] = {}
    sizes = np.asarray(sizes, dtype=np.int64)
    weights = np.ones(sizes.shape[0], dtype=np.int64) if weights is None else np.asarray(weights, dtype=np.int64)
    for s, w in zip(sizes, weights):
        if s <= 0:
            continue
        lo = 1 << (int(s).bit_length() - 1)
        label = str(lo) if lo == 1 else f"{lo}-{2 * lo - 1}"
        out[label] = out.get(label, 0) + int(w)
    return dict(sorted(out.items(), key=lambda kv: int(kv[0].split("-")[0])))


def value_histogram(values: np.ndarray, bins: int = 10) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(v, bins=bins)
    return {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()}
