"""Near-duplicate groups do not chain (issue #28): every removed row is within the threshold of a row
that is KEPT, and planted duplicates of a kept row are removed — for random chains and random planted
groups through the real global steps of image_dedup and text_dedup, the greedy-star core, semantic
dedup's leaf decision, and the chained corpora (translucent shapes, replaced words) end to end."""
from __future__ import annotations

import hashlib
import re

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate import base as S
from curate.base import records as R
from curate.base.global_data import InlineData
from curate.cluster.semdedup import dedup_leaf, unit_rows
from curate.dedup import chained as CH
from curate.dedup import minhash as M
from curate.dedup import phash as P
from curate.dedup.components import components
from curate.dedup import greedy_stars as GS
from curate.dedup.greedy_stars import greedy_stars
from tests.test_dedup import rows_table

BRUTE = GS.BRUTE_FORCE_ROWS
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# a corpus: chains (each item `step` from the previous one) and planted groups (copies close to a base)
corpora = st.fixed_dictionaries({
    "chains": st.lists(st.tuples(st.integers(2, 14), st.integers(1, 10_000)), min_size=0, max_size=4),
    "groups": st.lists(st.tuples(st.integers(1, 5), st.integers(1, 10_000)), min_size=0, max_size=5),
    "seed": st.integers(0, 2**31 - 1),
})


# --- the core: greedy stars on points of a line (distance |x - y|, threshold t) ------------------------
@given(corpora, st.integers(2, 8), st.sampled_from([0, 1, 3, 10**9]), st.booleans())
@SETTINGS
def test_greedy_stars_remove_only_what_is_close_to_a_kept_row(corpus, t, max_pairs, by_keys):
    """``by_keys``: later centres see only rows sharing a key (two grids of cell t offset by t/2: rows
    within t/2 always share one, as planted copies do)."""
    rng = np.random.default_rng(corpus["seed"])
    points, planted = [], []                       # planted: (base index, copy index)
    for c, (length, _) in enumerate(corpus["chains"]):
        x = 1_000_000 * (c + 1)
        for _ in range(length):
            points.append(x)
            x += int(rng.integers(1, t + 1))
    for g, (copies, _) in enumerate(corpus["groups"]):
        base = len(points)
        points.append(-1_000_000 * (g + 1))
        for _ in range(copies):
            planted.append((base, len(points)))
            points.append(points[base] + int(rng.integers(-(t // 2), t // 2 + 1)))
    x = np.array(points, dtype=np.int64)
    n = x.shape[0]
    a, b = np.triu_indices(n, 1)
    near = np.abs(x[a] - x[b]) <= t
    comp = components(n, a[near], b[near])
    quality = rng.random(n)
    order = np.lexsort((np.arange(n), -quality, comp))

    def close(i, j):
        d = np.abs(x[i] - x[j]).astype(np.float64)
        return d <= t, d
    keys = (lambda idx: np.stack([x[idx] // t, (x[idx] + t // 2) // t + (1 << 40)], axis=1).astype(np.uint64)) \
        if by_keys else None
    GS.BRUTE_FORCE_ROWS = 0 if by_keys else BRUTE
    try:
        stars = greedy_stars(comp, order, close, max_pairs, keys)
    finally:
        GS.BRUTE_FORCE_ROWS = BRUTE
    kept = stars.centre == np.arange(n)
    removed = np.flatnonzero(~kept)
    assert kept[stars.centre[removed]].all()                                  # each names a KEPT row
    assert (np.abs(x[removed] - x[stars.centre[removed]]) <= t).all()         # within the threshold of it
    assert np.array_equal(stars.value[removed], np.abs(x[removed] - x[stars.centre[removed]]))
    verified = np.flatnonzero(kept & ~stars.unverified)
    for i in verified if not by_keys else []:                                 # no kept pair within t ...
        others = verified[(comp[verified] == comp[i]) & (verified != i)]
        assert (np.abs(x[others] - x[i]) > t).all()
    for base, copy in planted:                                                # ... so copies of a kept base go
        if kept[base] and not stars.unverified[copy]:
            assert not kept[copy]
    assert stars.unverified.any() == (stars.capped_components > 0)
    assert np.array_equal(stars.component_size, np.bincount(comp)[comp])


# --- the real global steps ---------------------------------------------------------------------------
def _global(stage, table: pa.Table, chunk: int = 23) -> tuple[dict[str, dict], dict]:
    """(decisions by _ordinal, the step's report numbers)."""
    try:
        step = stage.global_step(InlineData([table.slice(i, chunk) for i in range(0, table.num_rows, chunk)]))
        got = step.decisions.gather()
    finally:
        GS.BRUTE_FORCE_ROWS = BRUTE          # hypothesis runs examples in one test call: no monkeypatch
    return {r[R.ORDINAL]: r for r in got.to_pylist()}, step.report


def _check(decided: dict[str, dict], keys: list[str], planted: list[tuple[int, int]], distance, within) -> list[float]:
    """The guarantee on decisions: a removed row names a kept row within the threshold and its _detail
    gives that verified value; planted copies of a kept base are removed. Returns the values."""
    by_key = {keys[o]: r for o, r in decided.items()}
    values = []
    for o, r in decided.items():
        if r[R.STATUS] == R.KEPT:
            assert r["dup_group"] == keys[o]
            continue
        kept = by_key[r["dup_group"]]
        assert kept[R.STATUS] == R.KEPT, r[R.DETAIL]
        value = distance(o, kept[R.ORDINAL])
        assert within(value), r[R.DETAIL]
        assert f"duplicate of {r['dup_group']}; " in r[R.DETAIL]
        values.append(value)
    for base, copy in planted:
        if decided[base][R.STATUS] == R.KEPT:
            assert decided[copy][R.STATUS] != R.KEPT, decided[copy]
    return values


@given(corpora, st.booleans())
@SETTINGS
def test_image_dedup_global_step_on_random_pHash_chains_and_planted_groups(corpus, by_keys):
    """pHash chains flip 1-8 bits per step (a long chain drifts far past 12 bits); planted copies are
    within 4 bits of their base. ``by_keys``: later centres compare only rows sharing a band key."""
    GS.BRUTE_FORCE_ROWS = 0 if by_keys else BRUTE
    rng = np.random.default_rng(corpus["seed"])
    hashes, planted = [], []
    for length, _ in corpus["chains"]:
        h = int(rng.integers(0, 2**63)) * 2 + 1
        for _ in range(length):
            hashes.append(h)
            for bit in rng.choice(64, int(rng.integers(1, 9)), replace=False):
                h ^= 1 << int(bit)
    for copies, _ in corpus["groups"]:
        base = len(hashes)
        hashes.append(int(rng.integers(0, 2**63)) * 2)
        for _ in range(copies):
            planted.append((base, len(hashes)))
            h = hashes[base]
            for bit in rng.choice(64, int(rng.integers(0, 5)), replace=False):
                h ^= 1 << int(bit)
            hashes.append(h)
    if not hashes:
        return
    n = len(hashes)
    keys = [f"s/{i:04d}" for i in range(n)]
    table = pa.table({"key": keys, R.ORDINAL: np.arange(n), "source": ["s"] * n,
                      "image_hash": [f"{h:016x}" for h in hashes],
                      "image_phash": pa.array([[h] for h in hashes], pa.list_(pa.uint64())),
                      "dup_quality": rng.random(n)})
    stage = S.build("image_dedup")
    decided, step_report = _global(stage, table)
    arr = np.array(hashes, dtype=np.uint64)
    values = _check(decided, keys, planted, lambda i, j: int(P.hamming(arr[i], arr[j])), lambda d: d <= 12)
    for r in decided.values():
        if r[R.STATUS] != R.KEPT:
            d = int(re.search(r"Hamming (\d+)/64", r[R.DETAIL]).group(1))
            assert d == int(P.hamming(arr[r[R.ORDINAL]], arr[keys.index(r["dup_group"])]))
    report = step_report["dedup"]
    assert report["removed"] == len(values) and report["kept_unverified"] == 0
    assert report["farthest_removed"]["hamming_bits"] == (max(values) if values else None)


@given(corpora, st.booleans())
@SETTINGS
def test_text_dedup_global_step_on_random_signature_chains_and_planted_groups(corpus, by_keys):
    """MinHash chains replace 10-35 of 128 signature values per step (estimated Jaccard 0.73-0.92 to
    the previous one); planted copies replace up to 20 (>= 0.84 to their base). ``by_keys``: later
    centres compare only rows sharing a band key."""
    GS.BRUTE_FORCE_ROWS = 0 if by_keys else BRUTE
    rng = np.random.default_rng(corpus["seed"])
    sigs, planted = [], []

    def changed(sig, count):
        out = sig.copy()
        out[rng.choice(128, count, replace=False)] = rng.integers(0, 2**32, count, dtype=np.uint32)
        return out
    for length, _ in corpus["chains"]:
        s = rng.integers(0, 2**32, 128, dtype=np.uint32)
        for _ in range(length):
            sigs.append(s)
            s = changed(s, int(rng.integers(10, 36)))
    for copies, _ in corpus["groups"]:
        base = len(sigs)
        sigs.append(rng.integers(0, 2**32, 128, dtype=np.uint32))
        for _ in range(copies):
            planted.append((base, len(sigs)))
            sigs.append(changed(sigs[base], int(rng.integers(0, 21))))
    if not sigs:
        return
    n = len(sigs)
    mat = np.stack(sigs)
    keys = [f"s/{i:04d}" for i in range(n)]
    table = pa.table({"key": keys, R.ORDINAL: np.arange(n), "source": ["s"] * n,
                      "text_hash": [hashlib.md5(row.tobytes()).hexdigest() for row in mat],
                      "text_minhash": pa.FixedSizeListArray.from_arrays(pa.array(mat.ravel()), 128),
                      "dup_quality": rng.random(n)})
    stage = S.build("text_dedup")
    decided, step_report = _global(stage, table)
    values = _check(decided, keys, planted, lambda i, j: float(M.estimated_jaccard(mat[i], mat[j])),
                    lambda j: j >= 0.6)
    report = step_report["dedup"]
    assert report["farthest_removed"]["estimated_jaccard"] == (round(min(values), 4) if values else None)


# --- semantic dedup's leaf ----------------------------------------------------------------------------
@given(st.integers(2, 30), st.integers(0, 2**31 - 1), st.floats(0.002, 0.05))
@settings(max_examples=40, deadline=None)
def test_semantic_leaf_removes_only_rows_close_to_a_kept_row(n, seed, eps):
    """An embedding random walk (steps about eps apart in cosine) plus exact copies of random rows."""
    rng = np.random.default_rng(seed)
    walk = [rng.normal(size=16)]
    walk[0] /= np.linalg.norm(walk[0])
    for _ in range(n - 1):
        step = walk[-1] + rng.normal(size=16) * np.sqrt(eps) * rng.uniform(0.1, 0.6)
        walk.append(step / np.linalg.norm(step))
    copies = rng.choice(n, max(1, n // 4))
    emb = np.concatenate([np.stack(walk), np.stack(walk)[copies]])
    order = rng.permutation(emb.shape[0])
    g = dedup_leaf(emb, order, eps)
    unit = unit_rows(emb)
    cos = unit @ unit.T
    kept = g.survivor == np.arange(emb.shape[0])
    removed = np.flatnonzero(~kept)
    assert kept[g.survivor[removed]].all()
    assert (cos[removed, g.survivor[removed]] > 1 - eps).all()
    np.testing.assert_allclose(g.similarity[removed], cos[removed, g.survivor[removed]], atol=1e-5)
    ks = np.flatnonzero(kept)
    assert not (cos[np.ix_(ks, ks)][~np.eye(ks.shape[0], dtype=bool)] > 1 - eps + 1e-6).any()
    assert (g.component_size >= g.group_size).all()


# --- the chained corpora, end to end ----------------------------------------------------------------
@pytest.fixture(scope="module")
def image_chain_table(tmp_path_factory):
    links = CH.image_chains(chains=2, length=24, seed=3)
    d = tmp_path_factory.mktemp("chains")
    rows = []
    for link in links:
        path = d / (link.key.replace("/", "__") + ".jpg")
        path.write_bytes(link.image)
        rows.append({"key": link.key, "images": [R.image_ref(str(path), size=len(link.image), width=192,
                                                             height=192, format="JPEG")], "text": None})
    return rows_table(rows)


def test_image_chains_keep_what_is_far_from_every_kept_image(image_chain_table):
    stage = S.build("image_dedup")
    result = stage.run(image_chain_table, batch_size=16)
    every = pa.concat_tables([result.kept, result.dropped])
    phash = {r["key"]: r["image_phash"][0] for r in every.select(["key", "image_phash"]).to_pylist()}
    kept = np.array([phash[k] for k in result.kept.column("key").to_pylist()], dtype=np.uint64)
    for key in result.dropped.column("key").to_pylist():
        assert P.hamming(kept, np.uint64(phash[key])).min() <= 12
    report = result.report["dedup"]
    assert result.kept.num_rows > 2                       # a chain is not one group
    assert report["farthest_removed"]["hamming_bits"] <= 12
    assert report["largest_component"] >= max(int(s) for s in report["group_sizes"])
    assert sum(report["component_sizes"].values()) == report["components"] >= 2


def test_caption_chains_and_the_comparison_budget():
    links = CH.caption_chains(chains=2, length=20, seed=1)
    table = rows_table([{"key": link.key, "text": link.text} for link in links])
    full = S.build("text_dedup")
    result = full.run(table, batch_size=16)
    report = result.report["dedup"]
    assert result.kept.num_rows > 2 and report["farthest_removed"]["estimated_jaccard"] >= 0.6
    assert report["kept_unverified"] == 0 and report["capped_components"] == 0
    assert report["largest_component"] > max(int(s) for s in report["group_sizes"])
    # no comparisons beyond each component's best row: the rest of a component is kept, never removed
    capped = S.build("text_dedup", {"max_component_pairs": 0})
    result = capped.run(table, batch_size=16)
    report = result.report["dedup"]
    assert report["capped_components"] >= 1 and report["kept_unverified"] >= 1
    assert report["farthest_removed"]["estimated_jaccard"] >= 0.6
    assert result.kept.num_rows + result.dropped.num_rows == len(links)


def test_semantic_dedup_on_an_embedding_chain_reports_components_and_the_lowest_cosine():
    """A chain of 40 embeddings (each ~0.995 cosine to the previous, the ends far apart) in one leaf:
    several rows are kept, each removal names a kept row above 1 - eps, and the report says how large
    the component got."""
    from curate.base import StageContext
    from curate.cluster import columns as C
    from curate.cluster.semdedup_stage import SemanticDedup
    from tests.test_cluster import table_of
    rng = np.random.default_rng(4)
    walk = [rng.normal(size=32)]
    for _ in range(39):
        walk.append(walk[-1] / np.linalg.norm(walk[-1]) + rng.normal(size=32) * 0.013)
    emb = np.stack([w / np.linalg.norm(w) for w in walk])
    table = table_of(emb)
    table = table.append_column(C.CLUSTER_PATH, pa.array([[0]] * 40, pa.list_(pa.int32())))
    table = table.append_column(C.CLUSTER_DISTANCES, pa.array([[float(i)] for i in range(40)], pa.list_(pa.float32())))
    stage = SemanticDedup(context=StageContext(seed=1), eps=0.01, partition_by=[])
    res = stage.run(table)
    report = res.report["semantic_dedup"]
    unit = emb.astype(np.float16).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    index = {k: i for i, k in enumerate(table.column("key").to_pylist())}
    kept = set(res.kept.column("key").to_pylist())
    assert 1 < len(kept) < 40 and report["largest_component"] == 40 and report["components"] == 1
    for key, group in zip(res.dropped.column("key").to_pylist(), res.dropped.column("semdedup_group").to_pylist()):
        assert group in kept and unit[index[key]] @ unit[index[group]] > 0.99 - 1e-4
    assert report["lowest_cosine_to_kept"] > 0.99 and report["removed"] == 40 - len(kept)
    assert report["component_size_histogram"] == {"32-63": 1}
