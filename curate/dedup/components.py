"""Connected components in one process: the oracle the distributed components are tested against.

The dedup global step labels components with rounds of ``shuffle_reduce`` (``star_components``),
so no process holds the edge list. ``components`` is scipy's ``csgraph.connected_components`` on
a sparse matrix, relabelled canonically (the smallest member id of each component, the labels
``star_components`` gives): tests and ``bench/bench_dedup.py`` compare against it, and it labels
the small graphs a single reduce call builds (``tests/test_dedup_engine.py``).
"""
from __future__ import annotations

import numpy as np


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel so that each node's label is the smallest node id of its component."""
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.shape[0]
    smallest = np.full(int(labels.max()) + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(smallest, labels, np.arange(n, dtype=np.int64))
    return smallest[labels]


def components(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Label per node 0..n-1 (smallest node id of its component), edges undirected."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    if n == 0:
        return np.empty(0, dtype=np.int64)
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    graph = coo_matrix((np.ones(src.shape[0], dtype=np.int8), (src, dst)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    return canonical_labels(labels)
