"""Dedup engines without the stages: MinHash accuracy, band choice, bit-sampling LSH, bucket
reduction, connected components — arithmetic checked with hypothesis against brute force."""
from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.dedup import minhash as M
from curate.dedup import phash as P
from curate.dedup.components import components
from curate.dedup.lsh import band_rows, bucket_edges, equal_key_edges
from curate.dedup.normalize import exact_text, fuzzy_text

PERMS = M.Permutations.make(128, 42)


def true_jaccard(a: str, b: str, n: int) -> float:
    sa = {a[i:i + n] for i in range(len(a) - n + 1)}
    sb = {b[i:i + n] for i in range(len(b) - n + 1)}
    return len(sa & sb) / len(sa | sb)


def test_normal_forms_fold_case_width_space_and_punctuation():
    assert exact_text("  Ａ  Cat\n\tSAT. ") == "a cat sat."
    assert fuzzy_text("A cat -- sat!!") == fuzzy_text("a CAT sat") == "a cat sat"
    assert exact_text(None) == fuzzy_text("...") == ""


def test_minhash_estimates_jaccard_within_its_standard_error():
    rng = np.random.default_rng(0)
    words = ["cat", "dog", "red", "blue", "house", "tree", "runs", "under", "the", "a", "old", "sky"]
    texts = [" ".join(rng.choice(words, 12)) for _ in range(60)]
    sigs, has = M.signatures(texts, 5, PERMS)
    assert has.all()
    errors = [abs(M.estimated_jaccard(sigs[i], sigs[j]) - true_jaccard(texts[i], texts[j], 5))
              for i, j in itertools.combinations(range(0, 60, 3), 2)]
    assert np.mean(errors) < 0.035 and np.max(errors) < 0.2   # sd at J=0.5 with 128 perms is 0.044


def test_one_byte_sketch_estimates_jaccard_like_the_full_signature():
    rng = np.random.default_rng(1)
    words = ["cat", "dog", "red", "blue", "house", "tree", "runs", "under", "the", "a", "old", "sky"]
    texts = [" ".join(rng.choice(words, 12)) for _ in range(40)]
    sigs, _ = M.signatures(texts, 5, PERMS)
    low = sigs.astype(np.uint8)
    pairs = list(itertools.combinations(range(40), 2))
    full = np.array([M.estimated_jaccard(sigs[i], sigs[j]) for i, j in pairs])
    sketch = np.array([M.bbit_jaccard(low[i], low[j]) for i, j in pairs])
    assert np.mean(np.abs(full - sketch)) < 0.01


@given(st.lists(st.text(alphabet="abcé xyz", max_size=30), min_size=1, max_size=20), st.integers(1, 6))
@settings(max_examples=60, deadline=None)
def test_signatures_batch_equals_one_by_one_and_short_texts_have_none(texts, n):
    sigs, has = M.signatures(texts, n, PERMS)
    assert has.tolist() == [len(t) >= n for t in texts]
    for i, t in enumerate(texts):
        one, one_has = M.signatures([t], n, PERMS)
        assert one_has[0] == has[i] and np.array_equal(one[0], sigs[i])
    for i, j in itertools.combinations(range(len(texts)), 2):
        if has[i] and texts[i] == texts[j]:
            assert M.estimated_jaccard(sigs[i], sigs[j]) == 1.0


@given(st.floats(0.3, 0.95), st.sampled_from([16, 64, 128, 256]))
@settings(max_examples=40, deadline=None)
def test_chosen_bands_fit_the_signature_and_put_the_s_curve_near_the_threshold(threshold, num_perm):
    bands, rows = M.choose_bands(threshold, num_perm)
    assert bands >= 1 and rows >= 1 and bands * rows <= num_perm
    # recall-weighted: a pair at the threshold is caught more often than a pair well below it
    at = M.collision_probability(threshold, bands, rows)
    assert at >= 0.5 or num_perm < 64
    assert M.collision_probability(threshold - 0.25, bands, rows) < at


def test_band_keys_separate_bands_and_follow_values():
    sig = np.arange(16, dtype=np.uint32).reshape(1, 16)
    same_values = np.tile(np.arange(4, dtype=np.uint32), 4).reshape(1, 16)
    keys = M.band_keys(same_values, 4, 4)
    assert len(set(keys[0].tolist())) == 4          # equal values in different bands: different buckets
    other = sig.copy()
    other[0, 5] += 1
    k1, k2 = M.band_keys(sig, 4, 4), M.band_keys(other, 4, 4)
    assert (k1 == k2).tolist() == [[True, False, True, True]]


@given(st.integers(0, 20), st.integers(1, 20), st.floats(0.5, 0.999))
@settings(max_examples=60, deadline=None)
def test_image_band_count_meets_the_target_recall(distance, bits, recall):
    if bits > P.HASH_BITS - distance:
        return
    p = P.band_agreement(distance, bits)
    try:
        bands = P.choose_image_bands(distance, bits, recall, max_bands=10_000)
    except ValueError:
        assert 1 - (1 - p) ** 10_000 < recall
        return
    assert 1 - (1 - p) ** bands >= recall - 1e-9
    assert bands == 1 or 1 - (1 - p) ** (bands - 1) < recall


@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=30), st.integers(0, 2**32))
@settings(max_examples=40, deadline=None)
def test_bit_sampling_keys_collide_exactly_when_the_sampled_bits_agree(hashes, seed):
    h = np.array(hashes, dtype=np.uint64)
    pos = P.sampled_positions(6, 12, seed)
    keys = P.band_keys(h, pos)
    for i, j in itertools.combinations(range(len(h)), 2):
        for b in range(6):
            agree = all(((int(h[i]) >> int(p)) & 1) == ((int(h[j]) >> int(p)) & 1) for p in pos[b])
            assert (keys[i, b] == keys[j, b]) == agree


def brute_components(n, src, dst):
    parent = list(range(n))
    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x
    for a, b in zip(src, dst):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = [find(i) for i in range(n)]
    return [min(i for i in range(n) if roots[i] == roots[k]) for k in range(n)]


edge_lists = st.integers(1, 25).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=40)))


@given(edge_lists)
@settings(max_examples=100, deadline=None)
def test_components_scipy_matches_brute_force(case):
    n, edges = case
    src = np.array([a for a, _ in edges], dtype=np.int64)
    dst = np.array([b for _, b in edges], dtype=np.int64)
    want = brute_components(n, src.tolist(), dst.tolist())
    assert components(n, src, dst).tolist() == want


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 15)), max_size=60), st.integers(2, 6))
@settings(max_examples=100, deadline=None)
def test_bucket_edges_link_exactly_the_verified_pairs_reachable_in_each_bucket(rows, cap):
    """With transitive verification (same class), every bucket's members of one class end up connected,
    edges never join different classes, and there are at most n-1 edges per bucket."""
    bucket = np.array([b for b, _ in rows], dtype=np.uint64)
    member = np.array([m for _, m in rows], dtype=np.int64)
    cls = np.arange(16) % 3
    edges = bucket_edges(bucket, member, lambda a, b: cls[a] == cls[b], max_bucket_size=cap)
    assert all(cls[a] == cls[b] for a, b in zip(edges.src, edges.dst))
    labels = components(16, edges.src, edges.dst)
    for b in set(bucket.tolist()):
        members = sorted(set(member[bucket == b].tolist()))[:cap]
        for a, c in itertools.combinations(members, 2):
            if cls[a] == cls[c]:
                assert labels[a] == labels[c]
    assert edges.src.shape[0] <= max(0, len(set(zip(bucket.tolist(), member.tolist()))) - 1)


def test_degenerate_bucket_is_cut_and_counted():
    bucket = np.zeros(5000, dtype=np.uint64)
    member = np.arange(5000, dtype=np.int64)
    calls = []
    edges = bucket_edges(bucket, member, lambda a, b: calls.append(len(a)) or np.zeros(len(a), bool),
                         max_bucket_size=100)
    assert edges.capped_buckets == 1 and edges.capped_members == 4900
    assert sum(calls) == 99 * 100 // 2            # rounds shrink the bucket by its anchor each time


def test_band_rows_and_equal_key_edges():
    b, m = band_rows(np.array([7, 9]), np.array([[1, 2], [3, 4]], dtype=np.uint64))
    assert b.tolist() == [1, 2, 3, 4] and m.tolist() == [7, 7, 9, 9]
    e = equal_key_edges(np.array(["x", "y", "x", "x", ""]), np.array([True, True, True, True, False]))
    assert sorted(zip(e.src.tolist(), e.dst.tolist())) == [(0, 2), (0, 3)]
