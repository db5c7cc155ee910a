"""Distributed connected components (large-star / small-star rounds on GlobalData, or scipy inside one
reduce call for small graphs): the same labels as scipy's connected_components in one process,
whatever the batching and the number of shuffle partitions."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.base import records as R
from curate.base.global_data import InlineData
from curate.dedup.components import components
from curate.dedup.star_components import component_labels, oriented, star_components


def distributed_labels(n: int, src: np.ndarray, dst: np.ndarray, ids: np.ndarray, chunk: int,
                       partitions: int, one_reduce: bool = False) -> tuple[dict[int, int], int]:
    """Node id -> label through star_components (or the one-reduce tier), on edges renamed by `ids`
    (sparse, like _ordinals)."""
    table = oriented(ids[src], ids[dst])
    batches = [table.slice(i, chunk) for i in range(0, table.num_rows, chunk)] or [table]
    data = InlineData(batches)
    labels, rounds = component_labels(data, table.num_rows, partitions) if one_reduce else \
        star_components(data, partitions)
    out: dict[int, int] = {}
    for t in labels.tables:
        for node, comp in zip(t.column(R.ORDINAL).to_pylist(), t.column("_component").to_pylist()):
            assert out.setdefault(node, comp) == comp       # repeats of a node always agree
    return out, rounds


def scipy_labels(n: int, src: np.ndarray, dst: np.ndarray, ids: np.ndarray) -> dict[int, int]:
    """The one-process oracle, for the nodes that have an edge other than a self-loop."""
    comp = components(n, src, dst)
    smallest_id = {}
    for i in range(n):
        smallest_id[comp[i]] = min(smallest_id.get(comp[i], ids[i]), ids[i])
    touched = sorted(set(src[src != dst].tolist()) | set(dst[src != dst].tolist()))
    return {int(ids[i]): int(smallest_id[comp[i]]) for i in touched}


graphs = st.integers(1, 40).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=80)))


@given(graphs, st.integers(1, 9), st.integers(1, 30), st.integers(0, 2**31))
@settings(max_examples=150, deadline=None)
def test_star_components_equal_scipy_for_any_partitioning(graph, partitions, chunk, seed):
    n, edges = graph
    src = np.array([a for a, _ in edges], dtype=np.int64)
    dst = np.array([b for _, b in edges], dtype=np.int64)
    # sparse ids in a random order, as _ordinals of a partitioned corpus look to the graph
    ids = np.random.default_rng(seed).permutation(np.cumsum(np.random.default_rng(seed).integers(1, 10**9, n)))
    want = scipy_labels(n, src, dst, ids)
    assert distributed_labels(n, src, dst, ids, chunk, partitions)[0] == want
    assert distributed_labels(n, src, dst, ids, chunk, partitions, one_reduce=True) == (want, 0)


def test_chains_and_stars_converge_in_few_rounds():
    """The shapes the dedup makes: exact groups are chained (path graphs), LSH buckets are anchor-chained."""
    n = 4096
    chain = np.arange(n - 1)
    src = np.concatenate([chain, n + np.zeros(500, dtype=np.int64)])           # a path of 4096 and a star of 501
    dst = np.concatenate([chain + 1, n + 1 + np.arange(500)])
    ids = np.arange(n + 501, dtype=np.int64)[::-1].copy()                       # reversed: the worst order for a path
    got, rounds = distributed_labels(n + 501, src, dst, ids, 700, 5)
    assert got == scipy_labels(n + 501, src, dst, ids)
    assert set(got.values()) == {int(ids[n - 1]), int(ids[n + 500])}
    assert rounds <= 16, rounds


def test_no_edges_gives_no_labels_after_one_round():
    labels, rounds = star_components(InlineData([oriented(np.array([3]), np.array([3]))]), 4)
    assert sum(t.num_rows for t in labels.tables) == 0 and rounds == 1
