"""Packing: exact FFD against a textbook FFD, planner validity, never more bins than FFD, budgets."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import pack
from pack.packing import OverlongError, first_fit_decreasing, lower_bound, pack_stats, plan_packs
from tests.packing_oracle import naive_first_fit_decreasing


def _check_valid(bins: np.ndarray, lengths: np.ndarray, capacity: int) -> None:
    assert bins.dtype == np.int64 and bins.shape == lengths.shape
    if lengths.size:
        assert bins.min() == 0
        # bins are numbered 0..k-1 with none empty
        assert np.array_equal(np.unique(bins), np.arange(bins.max() + 1))
        assert np.bincount(bins, weights=lengths).max() <= capacity


@st.composite
def instances(draw, max_n=80, max_c=120, few_values=False):
    capacity = draw(st.integers(1, max_c))
    if few_values:
        values = draw(st.lists(st.integers(0, capacity), min_size=1, max_size=5))
        lengths = draw(st.lists(st.sampled_from(values), max_size=max_n * 4))
    else:
        lengths = draw(st.lists(st.integers(0, capacity), max_size=max_n))
    return np.asarray(lengths, dtype=np.int64), capacity


@settings(max_examples=300, deadline=None)
@given(instances())
def test_ffd_equals_textbook_ffd(inst):
    lengths, capacity = inst
    got = first_fit_decreasing(lengths, capacity)
    assert np.array_equal(got, naive_first_fit_decreasing(lengths, capacity))
    _check_valid(got, lengths, capacity)


@settings(max_examples=200, deadline=None)
@given(instances(few_values=True))
def test_ffd_equals_textbook_ffd_with_many_equal_lengths(inst):
    # many equal lengths exercise the bulk repetition of identical bins
    lengths, capacity = inst
    assert np.array_equal(first_fit_decreasing(lengths, capacity), naive_first_fit_decreasing(lengths, capacity))


@settings(max_examples=300, deadline=None)
@given(st.one_of(instances(), instances(few_values=True)))
def test_plan_is_valid_and_never_worse_than_ffd(inst):
    lengths, capacity = inst
    plan = plan_packs(lengths, capacity)
    _check_valid(plan, lengths, capacity)
    ffd = first_fit_decreasing(lengths, capacity)
    nplan = plan.max() + 1 if plan.size else 0
    nffd = ffd.max() + 1 if ffd.size else 0
    assert lower_bound(lengths, capacity) <= nplan <= nffd


@st.composite
def constrained(draw):
    lengths, capacity = draw(instances(max_n=60))
    n = lengths.size
    imgs = np.asarray(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=np.int64)
    toks = np.asarray(draw(st.lists(st.integers(0, 40), min_size=n, max_size=n)), dtype=np.int64)
    max_images = draw(st.integers(3, 8))
    max_tokens = draw(st.integers(40, 120))
    return lengths, capacity, imgs, toks, max_images, max_tokens


@settings(max_examples=250, deadline=None)
@given(constrained())
def test_constrained_ffd_equals_textbook_and_plan_respects_budgets(inst):
    lengths, capacity, imgs, toks, ma, mt = inst
    kw = dict(num_images=imgs, image_tokens=toks, max_images_per_pack=ma, max_image_tokens_per_pack=mt)
    ffd = first_fit_decreasing(lengths, capacity, **kw)
    assert np.array_equal(ffd, naive_first_fit_decreasing(lengths, capacity, imgs, toks, ma, mt))
    plan = plan_packs(lengths, capacity, **kw)
    _check_valid(plan, lengths, capacity)
    if lengths.size:
        nb = plan.max() + 1
        assert np.bincount(plan, weights=imgs, minlength=nb).max() <= ma
        assert np.bincount(plan, weights=toks, minlength=nb).max() <= mt
        assert nb <= ffd.max() + 1


def test_long_context_with_many_distinct_lengths():
    # hundreds of distinct lengths spread over a 1M-token capacity: the sparse-set path
    rng = np.random.default_rng(11)
    lengths = rng.integers(1, 1_000_001, 900)
    ffd = first_fit_decreasing(lengths, 1_000_000)
    assert np.array_equal(ffd, naive_first_fit_decreasing(lengths, 1_000_000))
    plan = plan_packs(lengths, 1_000_000)
    _check_valid(plan, lengths, 1_000_000)
    assert plan.max() <= ffd.max()


def test_overlong_items_raise_with_count_and_longest():
    with pytest.raises(OverlongError, match=r"2 items are longer than the capacity 100 \(longest: 250\)"):
        first_fit_decreasing([10, 101, 250, 3], 100)
    with pytest.raises(OverlongError):
        plan_packs([10, 101], 100)
    with pytest.raises(OverlongError, match="per-pack budget"):
        plan_packs([10, 20], 100, num_images=[1, 5], max_images_per_pack=4)


@pytest.mark.parametrize("bad", [[-1, 3], [1.5, 2], ["a"]])
def test_bad_lengths_raise(bad):
    with pytest.raises(ValueError):
        first_fit_decreasing(bad, 10)


def test_bad_capacity_and_algorithm_raise():
    with pytest.raises(ValueError):
        first_fit_decreasing([1], 0)
    with pytest.raises(ValueError, match="algorithm"):
        plan_packs([1], 4, algorithm="magic")
    with pytest.raises(ValueError, match="num_images is required"):
        plan_packs([1], 4, max_images_per_pack=2)


def test_empty_and_zero_length_items():
    assert first_fit_decreasing([], 8).shape == (0,)
    assert plan_packs(np.zeros(0, dtype=np.int64), 8).dtype == np.int64
    # zero-length items go to the first bin, as FFD puts them
    assert first_fit_decreasing([0, 8, 0, 8], 8).tolist() == [0, 0, 0, 1]


def test_ffd_ties_go_in_index_order():
    # equal lengths: the earlier item takes the earlier bin
    assert first_fit_decreasing([6, 6, 6], 10).tolist() == [0, 1, 2]
    assert first_fit_decreasing([3, 5, 3, 5], 8).tolist() == [0, 0, 1, 1]


def test_plan_closes_the_ffd_gap_on_caption_like_data():
    # every item >= 149 tokens, capacity 4096: FFD's largest-first leaves gaps nothing fits in
    rng = np.random.default_rng(0)
    lengths = 144 + np.clip(np.rint(rng.lognormal(np.log(30), 0.6, 50_000)), 5, 300).astype(np.int64)
    ffd = first_fit_decreasing(lengths, 4096)
    plan = plan_packs(lengths, 4096)
    _check_valid(plan, lengths, 4096)
    s_ffd, s_plan = pack_stats(lengths, ffd, 4096), pack_stats(lengths, plan, 4096)
    assert s_ffd.padding > 0.01
    assert s_plan.fill >= 0.995
    assert s_plan.packs < s_ffd.packs


def test_plan_is_deterministic_and_ffd_algorithm_switch():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 500, 5000)
    a, b = plan_packs(lengths, 1024), plan_packs(lengths.copy(), 1024)
    assert np.array_equal(a, b)
    assert np.array_equal(plan_packs(lengths, 1024, algorithm="ffd"), first_fit_decreasing(lengths, 1024))


def test_public_api_is_exported():
    assert pack.first_fit_decreasing is first_fit_decreasing
    assert pack.plan_packs is plan_packs


def test_pack_stats():
    s = pack_stats([3, 3, 2], np.array([0, 0, 1]), 6)
    assert (s.packs, s.tokens, s.lower_bound) == (2, 8, 2)
    assert s.fill == pytest.approx(8 / 12)
    assert s.as_dict()["packs_over_lower_bound"] == 0
