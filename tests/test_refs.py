"""Reference resolution and strict JSON as properties (hypothesis): whatever a record says, a resolved
reference lies inside the root, and strict JSON either round-trips or refuses with ValueError."""
from __future__ import annotations

import json
import math
import os

import pytest
from hypothesis import given, settings, strategies as st

from curate.readers import refs
from curate.readers.jsonl import MAX_JSON_DEPTH, strict_json
from curate.readers.sources import BadSample, SourceSpec

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


# --- streamed JSON arrays and lines ---------------------------------------------------------------
import io  # noqa: E402

from curate.readers import jsonl as J  # noqa: E402
from curate.readers.sources import BadSample as _Bad  # noqa: E402

records = st.lists(st.dictionaries(st.sampled_from(["id", "a", "b"]), json_values, max_size=3), max_size=6)


@settings(max_examples=150, deadline=None)
@given(recs=records, indent=st.sampled_from([None, 0, 2]), bom=st.booleans(), chunk=st.integers(1, 64))
def test_streamed_array_reads_what_json_loads_reads(recs, indent, bom, chunk):
    raw = (b"\xef\xbb\xbf" if bom else b"") + json.dumps(recs, indent=indent).encode()
    saved, J.READ_CHUNK = J.READ_CHUNK, chunk     # tiny windows: values cut at every position
    try:
        got = list(J._iter_array(io.BytesIO(raw)))
    finally:
        J.READ_CHUNK = saved
    assert [v for _, v in got] == recs


def test_streamed_array_rejects_one_bad_record_and_keeps_the_rest(monkeypatch):
    monkeypatch.setattr(J, "READ_CHUNK", 5)
    raw = b'[{"id": 1}, {"id": 2, "x": 1e999999}, {"id": 3, "x": NaN}, {"id": 4}]'
    got = list(J._iter_array(io.BytesIO(raw)))
    assert got[0][1] == {"id": 1} and got[3][1] == {"id": 4}
    assert isinstance(got[1][1], _Bad) and got[1][1].reason == "invalid_json_record"
    assert isinstance(got[2][1], _Bad)


def test_broken_array_keeps_records_before_the_break():
    got = list(J._iter_array(io.BytesIO(b'[{"id": 1}, {"id": 2} {"id": 3}]')))
    assert got[0][1] == {"id": 1} and got[1][1] == {"id": 2}
    assert isinstance(got[2][1], _Bad) and got[2][1].reason == "invalid_json_file"


def test_oversized_jsonl_line_is_one_rejection(monkeypatch):
    monkeypatch.setattr(J, "MAX_RECORD_BYTES", 100)
    raw = b'{"id": 1}\n{"id": "' + b"x" * 500 + b'"}\n{"id": 3}\n'
    got = list(J.iter_lines(io.BytesIO(raw)))
    assert got[0] == (1, {"id": 1}) and got[2] == (3, {"id": 3})
    assert isinstance(got[1][1], _Bad)


@pytest.mark.parametrize("chunk", range(1, 12))
def test_numbers_cut_by_the_read_window_are_whole(chunk):
    raw = b"[1.5e10, -12, 3.25, 7]"
    saved, J.READ_CHUNK = J.READ_CHUNK, chunk
    try:
        assert [v for _, v in J._iter_array(io.BytesIO(raw))] == [1.5e10, -12, 3.25, 7]
    finally:
        J.READ_CHUNK = saved


def test_a_large_json_array_is_streamed_in_bounded_memory(tmp_path):
    import tracemalloc
    rec = json.dumps({"id": "x" * 10, "conversations": [{"from": "human", "value": "y" * 1000}]})
    path = tmp_path / "big.json"
    with open(path, "w") as fh:
        fh.write("[\n" + ",\n".join([rec] * 12000) + "\n]")      # ~12 MB
    tracemalloc.start()
    try:
        n = sum(1 for _ in J.iter_json_records(str(path)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 12000
    assert peak < 6 << 20, f"peak {peak / 2**20:.1f} MiB for a 12 MB file: not streamed"  # window: read chunk + its text
