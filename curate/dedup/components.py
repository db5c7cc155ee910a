"""Connected components of the duplicate graph: the small "combine" step of the global dedup.

``components`` is the one-machine tier: scipy's ``csgraph.connected_components`` on a sparse
matrix, O(n + e) time and ~16 bytes per edge plus 8 per node, so ~100M edges fit in a few GB of
driver memory (verified edges only: after LSH + verification a corpus with d% duplicates has about
d% x n edges). ``large_small_star`` computes the same labels with the large-star / small-star
alternation of Kiveris et al. (2014, "Connected Components in MapReduce and Beyond"): every step is
a group-by on one endpoint followed by a per-group minimum, so it runs as rounds of Ray Data
``shuffle_reduce`` when the edge list does not fit one machine (here in numpy, and tested equal to
the scipy tier). Both return the same canonical labels: the smallest member id of each component.
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


def _min_per_group(keys: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.arange(n, dtype=np.int64)          # each node's own id is in its neighbourhood
    np.minimum.at(out, keys, values)
    return out


def _unique_edges(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = u != v
    pairs = np.unique(np.stack([u[keep], v[keep]], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def large_star(u: np.ndarray, v: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Connect every strictly larger neighbour of a node to the node's neighbourhood minimum."""
    a, b = np.concatenate([u, v]), np.concatenate([v, u])
    m = _min_per_group(a, b, n)
    larger = b > a
    return _unique_edges(b[larger], m[a[larger]])


def small_star(u: np.ndarray, v: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Connect a node and its smaller-or-equal neighbours to the minimum of that set."""
    hi, lo = np.maximum(u, v), np.minimum(u, v)
    m = _min_per_group(hi, lo, n)
    return _unique_edges(np.concatenate([lo, hi]), np.concatenate([m[hi], m[hi]]))


def large_small_star(n: int, src: np.ndarray, dst: np.ndarray, max_rounds: int = 100) -> np.ndarray:
    """Same labels as ``components``, by alternating large-star and small-star until nothing changes."""
    u, v = _unique_edges(np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)) \
        if len(src) else (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
    for _ in range(max_rounds):
        nu, nv = small_star(*large_star(u, v, n), n)
        lo, hi = np.minimum(nu, nv), np.maximum(nu, nv)
        order = np.lexsort((lo, hi))
        lo, hi = lo[order], hi[order]
        if lo.shape == u.shape and np.array_equal(lo, u) and np.array_equal(hi, v):
            break
        u, v = lo, hi
    else:
        raise RuntimeError(f"large/small-star did not converge in {max_rounds} rounds")
    return _min_per_group(np.concatenate([u, v]), np.concatenate([v, u]), n) if u.shape[0] \
        else np.arange(n, dtype=np.int64)
