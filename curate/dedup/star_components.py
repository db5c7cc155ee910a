"""Connected components of the duplicate graph as rounds of ``GlobalData`` operations.

The dedup global step must label every row that has a verified edge with its component, and no
process may hold the edge list of the whole dataset. This is the large-star / small-star
alternation of Kiveris et al. (2014, "Connected Components in MapReduce and Beyond"), each step
one ``shuffle_reduce`` keyed by a node, so a reduce call holds the edges of its nodes only:

* large-star (key: each endpoint, both directions): a node ``u`` with neighbourhood minimum ``m``
  (``u`` included) links every strictly larger neighbour ``v`` to ``m``: ``(v, m)``.
* small-star (key: the larger endpoint ``w`` of an edge ``(w, l)``, ``l < w``): with ``m`` the
  smallest such ``l``, every ``l`` and ``w`` itself are linked to ``m``.

A round is a large-star then a small-star. Convergence is exact, checked by a one-number
``aggregate`` per round: a large-star changes the edge set only where a node with larger
neighbours is not its own neighbourhood minimum, and a small-star only where a node has more than
one smaller neighbour; when a round counts neither, every edge is ``(root, leaf)`` with the root
the smallest member of its component (a star), which is the fixed point. Kiveris et al. prove
O(log^2 n) rounds; chains of n nodes take about log2(n) + 2 here (``bench/bench_dedup.py``).

Labels are canonical — the smallest node id (``_ordinal``) of each component — so the result does
not depend on how Ray partitions the edges, and it equals scipy's ``connected_components``
relabelled the same way (``components.components``, the test oracle).

``component_labels`` picks the tier: a graph of at most ``ONE_REDUCE_EDGES`` edges (known from the
bucket counters before any edge moves) is labelled by scipy inside one reduce call — one shuffle
instead of two per round, in a worker, never on the driver; a larger one by the rounds above.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from curate.base import records as R
from curate.dedup.components import components

HI, LO, CHANGED, NODE, NBR = "_hi", "_lo", "_changed", "_node", "_nbr"
COMPONENT = "_component"
EDGE_SCHEMA = pa.schema([(HI, pa.int64()), (LO, pa.int64()), (CHANGED, pa.int64())])
LABEL_SCHEMA = pa.schema([(R.ORDINAL, pa.int64()), (COMPONENT, pa.int64())])
# Far above Kiveris et al.'s O(log^2 n) bound for any corpus that fits on Earth; reaching it is a bug.
MAX_ROUNDS = 200
# Edges one reduce call labels with scipy: 16 bytes per edge in, ~50 with scipy's CSR and the
# relabelling, so ~100 MB of one worker's memory at 2M (a 20M-row corpus with 10% duplicates).
ONE_REDUCE_EDGES = 2_000_000
ALL = "_all"


def _ints(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.int64)


def distinct_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (a, b) pairs sorted by a, then b (a lexsort: np.unique(axis=0) is ~10x slower)."""
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    new = np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])] if a.shape[0] else np.zeros(0, dtype=bool)
    return a[new], b[new]


def edge_table(hi: np.ndarray, lo: np.ndarray, changed: int = 0) -> pa.Table:
    """Distinct (hi, lo) pairs, hi > lo, with the call's change count on the first row (the aggregate
    only sums it)."""
    keep = hi != lo
    hi, lo = distinct_pairs(np.maximum(hi, lo)[keep], np.minimum(hi, lo)[keep])
    flags = np.zeros(hi.shape[0], dtype=np.int64)
    if flags.shape[0]:
        flags[0] = changed
    elif changed:
        raise AssertionError("a star step changed edges but emitted none")   # impossible by construction
    return pa.table([pa.array(hi, pa.int64()), pa.array(lo, pa.int64()), pa.array(flags, pa.int64())],
                    schema=EDGE_SCHEMA)


def oriented(src: np.ndarray, dst: np.ndarray) -> pa.Table:
    """Undirected edges as distinct (hi, lo) pairs; self-loops dropped."""
    return edge_table(np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64))


def _starts(keys: np.ndarray) -> np.ndarray:
    """First index of each run of equal keys (keys sorted)."""
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if keys.shape[0] else np.empty(0, dtype=np.int64)


def both_directions(edges: pa.Table) -> pa.Table:
    """Large-star input: every edge under both endpoints."""
    hi, lo = _ints(edges, HI), _ints(edges, LO)
    return pa.table({NODE: pa.array(np.concatenate([hi, lo]), pa.int64()),
                     NBR: pa.array(np.concatenate([lo, hi]), pa.int64())})


def large_star(group: pa.Table) -> pa.Table:
    """Reduce by node (rows sorted by node): every larger neighbour to the neighbourhood minimum."""
    node, nbr = _ints(group, NODE), _ints(group, NBR)
    if node.shape[0] == 0:
        return EDGE_SCHEMA.empty_table()
    starts = _starts(node)
    smallest = np.minimum(np.minimum.reduceat(nbr, starts), node[starts])
    m = np.repeat(smallest, np.diff(np.r_[starts, node.shape[0]]))
    larger = nbr > node
    return edge_table(nbr[larger], m[larger], int(np.sum(m[larger] < node[larger])))


def small_star(group: pa.Table) -> pa.Table:
    """Reduce by the larger endpoint (rows sorted by it): it and its smaller neighbours to their minimum.
    Carries the large-star's change count forward, so one aggregate per round sees both."""
    hi, lo = _ints(group, HI), _ints(group, LO)
    carried = int(np.sum(_ints(group, CHANGED)))
    if hi.shape[0] == 0:
        return EDGE_SCHEMA.empty_table()
    hi, lo = distinct_pairs(hi, lo)          # by hi, then lo: a node's first lo is its minimum
    starts = _starts(hi)
    counts = np.diff(np.r_[starts, hi.shape[0]])
    m = np.repeat(lo[starts], counts)
    return edge_table(np.concatenate([lo, hi[starts]]), np.concatenate([m, lo[starts]]),
                      carried + int(np.sum(counts > 1)))


def _changed_partial(edges: pa.Table) -> pa.Table:
    return pa.table({CHANGED: [int(np.sum(_ints(edges, CHANGED)))]})


def _changed_total(parts: pa.Table) -> int:
    return int(np.sum(_ints(parts, CHANGED))) if CHANGED in parts.column_names else 0


def label_rows(stars: pa.Table) -> pa.Table:
    """(node, component) for both ends of every converged star edge (a root once per leaf; the join
    that reads them takes the minimum, so repeats are harmless)."""
    hi, lo = _ints(stars, HI), _ints(stars, LO)
    return pa.table([pa.array(np.concatenate([hi, lo]), pa.int64()), pa.array(np.concatenate([lo, lo]), pa.int64())],
                    schema=LABEL_SCHEMA)


def _with_one_key(edges: pa.Table) -> pa.Table:
    return edges.append_column(ALL, pa.array(np.zeros(edges.num_rows, dtype=np.int8)))


def labels_in_one_reduce(group: pa.Table) -> pa.Table:
    """Reduce over every edge at once: scipy's components, labelled by the smallest node id."""
    hi, lo = _ints(group, HI), _ints(group, LO)
    nodes, inverse = np.unique(np.concatenate([hi, lo]), return_inverse=True)
    comp = components(nodes.shape[0], inverse[:hi.shape[0]], inverse[hi.shape[0]:])   # nodes ascend: index order = id order
    return pa.table([pa.array(nodes, pa.int64()), pa.array(nodes[comp], pa.int64())], schema=LABEL_SCHEMA)


def component_labels(edges: Any, edge_count: int, partitions: int) -> tuple[Any, int]:
    """Labels of every node that has an edge (``LABEL_SCHEMA`` rows, possibly several per node, all
    equal) and the star rounds run: 0 when at most ``ONE_REDUCE_EDGES`` edges were labelled in one
    reduce call."""
    if edge_count <= ONE_REDUCE_EDGES:
        return edges.map_batches(_with_one_key).shuffle_reduce(ALL, labels_in_one_reduce, 1), 0
    return star_components(edges, partitions)


def star_components(edges: Any, partitions: int, max_rounds: int = MAX_ROUNDS) -> tuple[Any, int]:
    """Labels of every node that has an edge, from a GlobalData of ``EDGE_SCHEMA`` rows.

    Returns a GlobalData of ``LABEL_SCHEMA`` rows (possibly several per node, all equal to the
    component's smallest node id) and the number of rounds run. The driver only ever holds one
    integer per round."""
    current = edges
    for rounds in range(1, max_rounds + 1):
        current = (current.map_batches(both_directions).shuffle_reduce(NODE, large_star, partitions)
                   .shuffle_reduce(HI, small_star, partitions).materialize())
        if current.aggregate(_changed_partial, _changed_total) == 0:
            return current.map_batches(label_rows), rounds
    raise RuntimeError(f"large/small-star did not converge in {max_rounds} rounds")
