"""cluster, cluster_sample and semantic_dedup on planted embeddings, through the real faiss k-means:
every row accounted for, identical answers whatever the batch size or row order, exact statistics,
the planted-corpus effect against uniform random sampling, and SemDeDup's groups and survivors."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.base import records as R
from curate.cluster import columns as C
from curate.cluster.cluster_stage import Cluster
from curate.cluster.kmeans import FitSettings, assign, fit_hierarchy
from demo_data.planted_clusters import kept_summary, planted_corpus
from curate.cluster.sample_stage import ClusterSample
from curate.cluster.semdedup_stage import SemanticDedup
from curate.cluster.stats import combine_stats, finalize_stats, partial_stats
from curate.base import StageContext
from curate.base.inline import with_bookkeeping

CTX = StageContext(seed=11)
LEVELS = [24, 4]


def table_of(emb: np.ndarray, categories: list[str] | None = None, extra: dict | None = None) -> pa.Table:
    n, d = emb.shape
    cats = categories or ["caption"] * n
    rows = [R.Sample(key=f"p/{i:05d}", source="s" if i % 3 else "t", category=cats[i], text="x", ordinal=i).to_row()
            for i in range(n)]
    t = R.rows_to_table(rows).append_column(C.EMBEDDING, pa.FixedSizeListArray.from_arrays(
        pa.array(emb.astype(np.float16).reshape(-1)), d))
    for name, col in (extra or {}).items():
        t = t.append_column(name, col)
    return t


@pytest.fixture(scope="module")
def corpus():
    return planted_corpus(n=1500, dim=16, dominant=2, rare=60, seed=3)


@pytest.fixture(scope="module")
def clustered(corpus):
    return Cluster(context=CTX, levels=LEVELS, niter=10).run(table_of(corpus.embeddings), batch_size=500)


def by_ordinal(t: pa.Table) -> pa.Table:
    return C.by_ordinal(t)


def test_every_row_gets_a_consistent_path_and_distances(clustered):
    kept = clustered.kept
    assert kept.num_rows == 1500 and clustered.dropped.num_rows == 0
    paths = C.matrix(kept.column(C.CLUSTER_PATH), np.int64)
    dists = C.matrix(kept.column(C.CLUSTER_DISTANCES), np.float64)
    assert paths.shape == (1500, 2) and dists.shape == (1500, 2)
    assert (paths[:, 1] < LEVELS[0]).all() and (paths[:, 0] < LEVELS[1]).all()
    leaf_parent = {}
    for top, leaf in paths:                           # a leaf always sits under the same parent
        assert leaf_parent.setdefault(leaf, top) == top
    assert (dists >= 0).all() and (dists <= 2.0 + 1e-6).all()


def test_cluster_is_identical_whatever_the_batches_and_row_order(corpus, clustered):
    table = table_of(corpus.embeddings)
    again = Cluster(context=CTX, levels=LEVELS, niter=10).run(with_bookkeeping(table).take(
        pa.array(np.random.default_rng(0).permutation(table.num_rows))), batch_size=37)
    cols = ["key", C.CLUSTER_PATH, C.CLUSTER_DISTANCES]
    assert by_ordinal(again.kept).select(cols).equals(by_ordinal(clustered.kept).select(cols))


def test_assignment_of_a_row_does_not_depend_on_its_batch(corpus):
    x = corpus.embeddings
    h = fit_hierarchy(x[:600], FitSettings(levels=(12, 3), niter=5, seed=1))
    whole_p, whole_d = assign(x, h)
    parts = [assign(x[s:s + 97], h) for s in range(0, len(x), 97)]
    assert np.array_equal(whole_p, np.concatenate([p for p, _ in parts]))
    assert np.array_equal(whole_d, np.concatenate([d for _, d in parts]))


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 299), max_size=6, unique=True))
def test_statistics_are_exact_under_any_partitioning(cuts):
    rng = np.random.default_rng(5)
    pts = rng.normal(size=(300, 8))
    ids = rng.integers(0, 7, size=300)
    dist = rng.uniform(0, 2, size=300)
    whole = partial_stats(ids, dist, pts, 7)
    bounds = [0, *sorted(cuts), 300]
    parts = [partial_stats(ids[a:b], dist[a:b], pts[a:b], 7) for a, b in zip(bounds, bounds[1:])]
    total = parts[0]
    for p in parts[1:]:
        total = combine_stats(total, p)
    fw, ft = finalize_stats(whole), finalize_stats(total)
    for key in fw:
        assert np.array_equal(fw[key], ft[key])       # bit-identical, not just close
    c = 3
    members = pts[ids == c]
    assert np.isclose(ft["variance"][c], ((members - members.mean(0)) ** 2).sum(1).mean(), atol=1e-5)
    assert np.isclose(ft["mean_distance"][c], dist[ids == c].mean(), atol=1e-5)


def test_cluster_sample_hits_the_target_and_accounts_for_every_row(clustered):
    res = ClusterSample(context=CTX, fraction=0.3).run(clustered.kept)
    assert res.kept.num_rows == 450 and res.kept.num_rows + res.dropped.num_rows == 1500
    assert set(res.dropped.column(R.REASON).to_pylist()) == {"cluster:not_sampled"}
    assert set(res.kept.column("cluster_repeat").to_pylist()) == {1}
    counted = ClusterSample(context=CTX, count=100, within_leaf="closest").run(clustered.kept)
    assert counted.kept.num_rows == 100


def test_cluster_sample_is_identical_whatever_the_batches(clustered):
    a = ClusterSample(context=CTX, fraction=0.3, beta=1.0).run(clustered.kept, batch_size=64)
    shuffled = clustered.kept.take(pa.array(np.random.default_rng(1).permutation(clustered.kept.num_rows)))
    b = ClusterSample(context=CTX, fraction=0.3, beta=1.0).run(shuffled, batch_size=1000)
    assert by_ordinal(a.kept).column("key").equals(by_ordinal(b.kept).column("key"))
    other_seed = ClusterSample(context=StageContext(seed=12), fraction=0.3, beta=1.0).run(clustered.kept)
    assert not by_ordinal(other_seed.kept).column("key").equals(by_ordinal(a.kept).column("key"))


def test_upsampling_repeats_small_clusters_within_the_cap(clustered):
    res = ClusterSample(context=CTX, fraction=1.5, max_repeat=3, alpha=0.0, beta=0.0).run(clustered.kept)
    repeats = np.array(res.kept.column("cluster_repeat").to_pylist())
    assert repeats.sum() == 2250 and repeats.max() <= 3 and (repeats > 1).any()


def test_unclustered_rows_pass_untouched(corpus):
    table = table_of(corpus.embeddings[:200])
    mask = np.zeros(200, dtype=bool)
    mask[:10] = True
    emb = pa.FixedSizeListArray.from_arrays(pa.array(corpus.embeddings[:200].astype(np.float16).reshape(-1)), 16,
                                            mask=pa.array(mask))
    table = table.set_column(table.schema.get_field_index(C.EMBEDDING), C.EMBEDDING, emb)
    clustered = Cluster(context=CTX, levels=[6, 2], niter=5).run(table)
    sampled = ClusterSample(context=CTX, fraction=0.5).run(clustered.kept)
    null_keys = {f"p/{i:05d}" for i in range(10)}
    kept_keys = set(sampled.kept.column("key").to_pylist())
    assert null_keys <= kept_keys and len(kept_keys) == 10 + 95


def test_planted_corpus_balanced_keeps_more_concepts_than_uniform(corpus, clustered):
    kept_keys = set(ClusterSample(context=CTX, fraction=0.3, alpha=0.0, beta=0.0).run(clustered.kept)
                    .kept.column("key").to_pylist())
    keys = [f"p/{i:05d}" for i in range(len(corpus.concept))]
    balanced = np.array([k in kept_keys for k in keys])
    uniform = np.zeros(len(keys), dtype=bool)
    uniform[np.random.default_rng(0).choice(len(keys), balanced.sum(), replace=False)] = True
    b_share, b_concepts = kept_summary(corpus.concept, corpus.dominant, balanced)
    u_share, u_concepts = kept_summary(corpus.concept, corpus.dominant, uniform)
    assert b_concepts > u_concepts
    assert b_share < u_share


def test_semantic_dedup_removes_planted_copies_and_names_the_survivor():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(80, 32))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    copies = base[:10] + rng.normal(size=(10, 32)) * 0.01          # near-duplicates of rows 0..9
    emb = np.concatenate([base, copies / np.linalg.norm(copies, axis=1, keepdims=True)])
    quality = pa.array(np.r_[np.zeros(80), np.ones(10)].astype(np.float32))   # the copies are "better"
    cats = ["caption"] * 90
    cats[9] = "vqa"                                                  # row 9 differs in category from its copy
    table = table_of(emb, cats, {"clip_score": quality})
    clustered = Cluster(context=CTX, levels=[6, 2], niter=5).run(table).kept
    res = SemanticDedup(context=CTX, survivor="quality", quality_column="clip_score").run(clustered)
    removed = sorted(res.dropped.column("key").to_pylist())
    assert removed == [f"p/{i:05d}" for i in range(9)]               # originals lose to their better copies
    detail = dict(zip(res.dropped.column("key").to_pylist(), res.dropped.column(R.DETAIL).to_pylist()))
    assert "kept p/00080" in detail["p/00000"]
    group = dict(zip(res.kept.column("key").to_pylist(), res.kept.column("semdedup_group_size").to_pylist()))
    assert group["p/00080"] == 2 and group["p/00050"] == 1
    hard = SemanticDedup(context=CTX, survivor="hard", partition_by=[]).run(clustered)
    assert hard.dropped.num_rows == 10                               # category ignored: all ten pairs
    only_vqa = SemanticDedup(context=CTX, categories=["vqa"]).run(clustered)
    assert only_vqa.dropped.num_rows == 0 and only_vqa.kept.num_rows == 90


def test_settings_are_checked():
    with pytest.raises(ValueError, match="fraction, count"):
        ClusterSample(fraction=0.3, count=5)
    with pytest.raises(ValueError, match="levels"):
        Cluster(levels=[4, 8])
    with pytest.raises(ValueError, match="quality_column"):
        SemanticDedup(survivor="quality")


@settings(max_examples=25, deadline=None)
@given(size=st.integers(1, 120), chunk=st.integers(7, 400), shrink=st.sampled_from([1, 1000]))
def test_fit_sample_is_the_smallest_hashes_for_any_batching(corpus, size, chunk, shrink):
    """The bounded fit sample equals the `size` smallest seeded key hashes (ties: _ordinal) of all rows,
    whatever the batches; with the first threshold shrunk 1000x, the retries still find it."""
    from curate.base.global_data import InlineData
    from curate.cluster import cluster_ops
    from curate.cluster.kmeans import seeded_hash
    table = table_of(corpus.embeddings[:600])
    threshold = cluster_ops.sample_threshold
    offered = []

    def counted(partial, combine):
        return InlineData.aggregate(data, partial, lambda parts: (offered.append(parts.num_rows), combine(parts))[1])
    data = InlineData([table.slice(i, chunk) for i in range(0, table.num_rows, chunk)])
    data.aggregate = counted
    cluster_ops.sample_threshold = lambda s, n, attempt: threshold(s, n, attempt) // (shrink if attempt == 0 else 1)
    try:
        got = cluster_ops.fit_sample(data, C.EMBEDDING, 5, size)
    finally:
        cluster_ops.sample_threshold = threshold
    hashes = seeded_hash(table.column("key").to_pylist(), 5)
    want = np.lexsort((np.arange(table.num_rows), hashes))[:size]
    assert np.array_equal(got, C.matrix(table.column(C.EMBEDDING).take(pa.array(want))))
    offers = offered[1:]                     # offered[0]: the row count
    wanted = size + 6 * size ** 0.5 + 64
    if shrink == 1:                          # one offer, about `wanted` rows (binomial: 6 sigma), not all 600
        assert len(offers) == 1 and offers[0] <= wanted + 6 * wanted ** 0.5
    else:
        assert len(offers) >= 2


@pytest.fixture(scope="module")
def hierarchy(clustered):
    return fit_hierarchy(C.matrix(clustered.kept.column(C.EMBEDDING).slice(0, 400)), FitSettings(levels=(24, 4), niter=5))


@settings(max_examples=8, deadline=None)
@given(chunk=st.integers(50, 700), seed=st.integers(0, 3))
def test_per_cluster_sums_reach_the_driver_as_one_row_per_cluster(clustered, hierarchy, chunk, seed):
    """cluster statistics and cluster_sample totals pre-summed by a shuffle per (level, cluster): the
    same result as summing every batch's partial on the driver, from at most one row per cluster."""
    from curate.base.global_data import InlineData
    from curate.cluster import cluster_ops
    from curate.cluster.cells import sum_cells, summed_per_cell
    from curate.cluster.sample_stage import _totals_combine
    table, h = clustered.kept, hierarchy
    seen = []

    class Recording(InlineData):
        def aggregate(self, partial, combine):
            return InlineData.aggregate(self, partial, lambda parts: (seen.append(parts.num_rows), combine(parts))[1])

        def map_batches(self, fn):
            return Recording(InlineData.map_batches(self, fn).tables)

        def shuffle_reduce(self, key, fn, partitions):
            return Recording(InlineData.shuffle_reduce(self, key, fn, partitions).tables)
    batches = [table.slice(i, chunk) for i in range(0, table.num_rows, chunk)]
    stats_partial = cluster_ops.stats_partial(C.EMBEDDING, h, seed, 3)
    stats_combine = cluster_ops.stats_combine(h, 16, 3)
    sums, keys = summed_per_cell(Recording(batches), stats_partial, "level", "cluster",
                                 cluster_ops.stats_cell_sum(3), stats_combine)
    want_sums, want_keys = InlineData(batches).aggregate(stats_partial, stats_combine)
    assert keys == want_keys and seen[-1] <= 24 + 4
    for got, want in zip(sums, want_sums):
        assert all(np.array_equal(getattr(got, f), getattr(want, f)) for f in ("count", "dist", "dist_sq", "norm_sq", "vec"))
    sample = ClusterSample(context=CTX, fraction=0.3)
    got = summed_per_cell(Recording(batches), sample._totals_partial, "level", "node",
                          sum_cells(("rows", "units", "sq")), _totals_combine)
    want = InlineData(batches).aggregate(sample._totals_partial, _totals_combine)
    assert seen[-1] <= 24 + 4
    for g, w in zip(got, want):
        assert all(np.array_equal(getattr(g, f), getattr(w, f)) for f in ("units", "rows", "spread", "parent"))
