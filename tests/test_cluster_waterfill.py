"""Water-filling arithmetic (curate/cluster/waterfill.py) and the hierarchical allocation built on it:
exact totals, caps respected, monotone in the target and in a cluster's weight, alpha = beta = 0 equal
to Vo et al.'s balanced cap, and the within-leaf choice by rows and by tokens."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.cluster.sampling import (AllocationSettings, allocate_tree, choose_in_leaves, combine_totals,
                                     level_totals, totals_partial)
from curate.cluster.waterfill import cluster_weights, waterfill

caps_st = st.lists(st.integers(0, 40), min_size=1, max_size=20)
weights_for = lambda n: st.lists(st.floats(0.01, 100.0), min_size=n, max_size=n)  # noqa: E731


@settings(max_examples=200, deadline=None)
@given(caps=caps_st, data=st.data())
def test_allocation_sums_to_target_and_respects_caps(caps, data):
    w = data.draw(weights_for(len(caps)))
    target = data.draw(st.integers(0, sum(caps) + 10))
    alloc = waterfill(np.array(caps), np.array(w), target)
    assert alloc.sum() == min(target, sum(caps))
    assert (alloc >= 0).all() and (alloc <= np.array(caps)).all()


@settings(max_examples=40, deadline=None)
@given(caps=caps_st, data=st.data())
def test_raising_the_target_never_takes_a_unit_away(caps, data):
    w = np.array(data.draw(weights_for(len(caps))))
    rank = np.array(data.draw(st.permutations(range(len(caps)))))
    prev = waterfill(np.array(caps), w, 0, rank)
    for target in range(1, sum(caps) + 1):
        cur = waterfill(np.array(caps), w, target, rank)
        assert (cur >= prev).all() and cur.sum() == prev.sum() + 1
        prev = cur


@settings(max_examples=150, deadline=None)
@given(caps=caps_st, data=st.data())
def test_more_weight_never_means_fewer_units(caps, data):
    w = np.array(data.draw(weights_for(len(caps))))
    target = data.draw(st.integers(0, sum(caps)))
    c = data.draw(st.integers(0, len(caps) - 1))
    heavier = w.copy()
    heavier[c] *= data.draw(st.floats(1.0, 10.0))
    assert waterfill(np.array(caps), heavier, target)[c] >= waterfill(np.array(caps), w, target)[c]


def balanced_reference(caps: np.ndarray, target: int) -> np.ndarray:
    """Vo et al.: the largest integer cap x with sum(min(x, size)) <= target, then one more unit to
    the first uncapped clusters (in rank order) until the target is met."""
    x = 0
    while np.minimum(caps, x + 1).sum() <= target and x < caps.max():
        x += 1
    alloc = np.minimum(caps, x)
    for c in np.flatnonzero(caps > x)[: target - alloc.sum()]:
        alloc[c] += 1
    return alloc


@settings(max_examples=200, deadline=None)
@given(caps=caps_st, data=st.data())
def test_alpha_beta_zero_is_vo_balanced_sampling(caps, data):
    caps = np.array(caps)
    spreads = np.array(data.draw(st.lists(st.floats(0.0, 2.0), min_size=len(caps), max_size=len(caps))))
    target = data.draw(st.integers(0, int(caps.sum())))
    w = cluster_weights(caps, spreads, 0.0, 0.0)
    assert (w == 1.0).all()
    assert (waterfill(caps, w, target) == balanced_reference(caps, target)).all()


def test_weights_follow_size_and_spread_and_floor_zero_spread():
    w = cluster_weights(np.array([100, 4, 1]), np.array([0.5, 0.2, 0.0]), alpha=0.5, beta=1.0)
    assert np.allclose(w[:2], [10 * 0.5, 2 * 0.2])
    assert w[2] > 0                                  # a singleton (spread 0) is not excluded
    assert w[2] == 0.01 * np.median([0.5, 0.2])      # floored at 1% of the median positive spread


def test_proportional_when_alpha_is_one():
    caps = np.array([600, 300, 100])
    alloc = waterfill(caps, cluster_weights(caps, np.ones(3), 1.0, 0.0), 100)
    assert alloc.tolist() == [60, 30, 10]


def test_higher_beta_gives_spread_out_clusters_more():
    caps = np.array([100, 100, 100])
    spreads = np.array([0.1, 0.2, 0.4])
    flat = waterfill(caps, cluster_weights(caps, spreads, 0.0, 0.0), 60)
    steep = waterfill(caps, cluster_weights(caps, spreads, 0.0, 1.0), 60)
    assert flat.tolist() == [20, 20, 20]
    assert steep[2] > steep[1] > steep[0] and steep.sum() == 60


def test_hierarchy_splits_each_parent_quota_among_its_children():
    # two top clusters: 0 -> leaves {0, 1} (sizes 50, 2); 1 -> leaf {2} (size 8)
    paths = np.array([[0, 0]] * 50 + [[0, 1]] * 2 + [[1, 2]] * 8)
    dists = np.full(paths.shape, 0.1)
    totals = level_totals(paths, dists, np.ones(len(paths), dtype=np.int64))
    quotas = allocate_tree(totals, 20, AllocationSettings(alpha=0.0, beta=0.0))
    assert quotas[0].tolist() == [12, 8]             # balanced: the small top cluster is taken whole
    assert quotas[1].tolist() == [10, 2, 8]          # inside top 0: the 2-row leaf whole, the rest to leaf 0
    up = allocate_tree(totals, 100, AllocationSettings(max_repeat=2))
    assert up[0].tolist() == [84, 16] and up[1].tolist() == [80, 4, 16]   # caps doubled: upsampling


def test_choice_inside_leaves_by_rows_tokens_and_repeats():
    leaf = np.array([0, 0, 0, 0, 1, 1])
    dist = np.array([0.4, 0.1, 0.3, 0.2, 0.5, 0.6])
    hashes = np.arange(6, dtype=np.uint64)
    ones = np.ones(6, dtype=np.int64)
    closest = choose_in_leaves(leaf, dist, ones, hashes, np.array([2, 1]), "closest")
    assert closest.tolist() == [0, 1, 0, 1, 1, 0]
    farthest = choose_in_leaves(leaf, dist, ones, hashes, np.array([1, 1]), "farthest")
    assert farthest.tolist() == [1, 0, 0, 0, 0, 1]
    repeated = choose_in_leaves(leaf, dist, ones, hashes, np.array([6, 3]), "closest")
    assert repeated.tolist() == [1, 2, 1, 2, 2, 1] and repeated.sum() == 9
    tokens = np.array([100, 10, 30, 20, 5, 5])
    by_tokens = choose_in_leaves(leaf, dist, tokens, hashes, np.array([35, 0]), "closest")
    # closest first: 10 (10), 20 (30), then 30 would reach 60: further from 35 than 30 is -> stop
    assert by_tokens.tolist() == [0, 1, 0, 1, 0, 0]


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(1, 399), max_size=6, unique=True))
def test_level_totals_are_the_same_summed_over_any_partitioning(cuts):
    rng = np.random.default_rng(4)
    leaf = rng.integers(0, 12, 400)
    paths = np.stack([leaf % 3, leaf], axis=1)
    dists = rng.uniform(0, 1, (400, 2))
    units = rng.integers(1, 9, 400)
    bounds = [0, *sorted(cuts), 400]
    parts = [totals_partial(paths[a:b], dists[a:b], units[a:b]) for a, b in zip(bounds, bounds[1:])]
    merged = {k: np.concatenate([p[k] for p in parts[::-1]]) for k in parts[0]}   # any order
    for whole, summed in zip(level_totals(paths, dists, units), combine_totals(merged, 2)):
        for name in ("units", "rows", "spread", "parent"):
            assert np.array_equal(getattr(whole, name), getattr(summed, name))
