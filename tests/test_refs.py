"""Reference resolution and strict JSON as properties (hypothesis): whatever a record says, a resolved
reference lies inside the root, and strict JSON either round-trips or refuses with ValueError."""
from __future__ import annotations

import json
import math
import os

import pytest
from hypothesis import given, settings, strategies as st

from curate import refs
from curate.json_reader import MAX_JSON_DEPTH, strict_json
from curate.sources import BadSample, SourceSpec

SPEC = SourceSpec(name="s", path="x", format="llava")
segments = st.sampled_from(["..", ".", "a", "b", "", "/", "~", "%2e%2e", "a/../..", "\\..", "c.jpg"])


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(segments, max_size=8), absolute=st.booleans(), scheme=st.sampled_from(["", "file://"]))
def test_resolved_references_stay_inside_the_root(tmp_path_factory, parts, absolute, scheme):
    root = str(tmp_path_factory.getbasetemp() / "root")
    os.makedirs(root, exist_ok=True)
    value = scheme + ("/" if absolute else "") + "/".join(parts)
    try:
        resolved = refs.resolve_reference(value, root, SPEC)
    except BadSample as bad:
        assert bad.reason in ("image:outside_root", "image:invalid_reference")
        return
    real_root = os.path.realpath(root)
    assert resolved == real_root or resolved.startswith(real_root + os.sep)


@pytest.mark.parametrize("value,reason", [
    (None, "image:invalid_reference"), (3, "image:invalid_reference"), ({"a": 1}, "image:invalid_reference"),
    ("", "image:invalid_reference"), ("a\x00b", "image:invalid_reference"),
    ("https://example.org/a.jpg", "image:remote_not_allowed"), ("ftp://h/a.jpg", "image:unsupported_protocol"),
    ("s3://bucket/a.jpg", "image:unsupported_protocol"),
])
def test_reference_rejections_are_named(tmp_path, value, reason):
    with pytest.raises(BadSample) as err:
        refs.resolve_reference(value, str(tmp_path), SPEC)
    assert err.value.reason == reason


def test_remote_root_keeps_references_below_it():
    assert refs.resolve_reference("x/a.jpg", "s3://b/data", SPEC) == "s3://b/data/x/a.jpg"
    with pytest.raises(BadSample, match="outside"):
        refs.resolve_reference("../../other/a.jpg", "s3://b/data", SPEC)
    with pytest.raises(BadSample, match="outside"):
        refs.resolve_reference("s3://b/elsewhere/a.jpg", "s3://b/data", SPEC)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**18, 10**18) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20)


@given(json_values)
def test_strict_json_round_trips_finite_json(value):
    assert strict_json(json.dumps(value)) == value


@given(st.sampled_from(["1e999999", "-1e400", "NaN", "Infinity", "-Infinity"]))
def test_strict_json_refuses_non_finite_numbers(number):
    with pytest.raises(ValueError):
        strict_json('{"x": [' + number + "]}")


@given(st.integers(MAX_JSON_DEPTH + 1, 20000))
@settings(max_examples=20, deadline=None)
def test_strict_json_refuses_deep_nesting_without_recursion_error(depth):
    with pytest.raises(ValueError, match="nested deeper"):
        strict_json("[" * depth + "]" * depth)


def test_big_finite_floats_pass():
    assert math.isclose(strict_json("1e308"), 1e308)
