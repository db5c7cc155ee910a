"""join_annotations: precomputed per-sample columns joined by key / original key / metadata, and filtered."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, strategies as st

from curate.base import records as R
from curate.filters.annotations import JoinAnnotations, parse_condition
from pipelines.recipe import RecipeError, parse


def samples(n: int = 6, source: str = "dc") -> pa.Table:
    rows = [{"key": f"{source}/u{i}", "source": source, "category": "caption", R.ORDINAL: i, R.STATUS: R.KEPT,
             "meta": json.dumps({"url": f"http://x/{i}.jpg"})} for i in range(n)]
    return R.rows_to_table(rows)


def test_dfn_id_list_keeps_listed_samples_only(tmp_path: Path):
    pq.write_table(pa.table({"uid": ["u1", "u3", "u9"], "dfn": [True, True, True]}), tmp_path / "dfn.parquet")
    stage = JoinAnnotations(path=str(tmp_path / "dfn.parquet"), key_field="uid", match="original_key",
                            columns={"dfn": "bool"}, keep_if=["dfn == true"])
    res = stage.run(samples())
    assert res.kept.column("key").to_pylist() == ["dc/u1", "dc/u3"]
    assert set(res.dropped.column(R.REASON).to_pylist()) == {"annotation:not_listed"}


def test_scores_by_url_from_jsonl_filter_with_the_failing_value_in_detail(tmp_path: Path):
    lines = [{"url": f"http://x/{i}.jpg", "su": 80 + 2 * i} for i in range(6)]
    (tmp_path / "su.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    stage = JoinAnnotations(path=str(tmp_path / "su.jsonl"), key_field="url", match="meta.url",
                            columns={"su": "float"}, keep_if=["su >= 85"])
    res = stage.run(samples())
    assert res.kept.column("su").to_pylist() == [86.0, 88.0, 90.0]
    assert res.dropped.column(R.REASON).to_pylist() == ["annotation:su"] * 3
    assert "su=80.0 fails su >= 85.0" in res.dropped.column(R.DETAIL).to_pylist()[0]


def test_union_of_an_id_list_and_an_upstream_score(tmp_path: Path):
    """Open-Qwen2VL: DFN top-15% ids OR MLM-Filter SU >= 85 (scores joined by an earlier stage)."""
    pq.write_table(pa.table({"key": ["dc/u0", "dc/u1"], "su": [90.0, 10.0]}), tmp_path / "su.parquet")
    pq.write_table(pa.table({"key": ["dc/u1", "dc/u2"], "dfn": [True, True]}), tmp_path / "dfn.parquet")
    t = JoinAnnotations(path=str(tmp_path / "su.parquet"), columns={"su": "float"}, missing="keep").run(samples(4)).kept
    union = JoinAnnotations(path=str(tmp_path / "dfn.parquet"), columns={"dfn": "bool"},
                            keep_if=["dfn == true", "su >= 85"], combine="any")
    assert union.requires[-1] == "su"
    assert union.run(t).kept.column("key").to_pylist() == ["dc/u0", "dc/u1", "dc/u2"]


def test_scope_and_missing_keep_leave_other_rows_untouched(tmp_path: Path):
    pq.write_table(pa.table({"key": ["dc/u0"], "clip": [0.1]}), tmp_path / "c.parquet")
    t = pa.concat_tables([samples(2, "dc"), samples(2, "other")])
    stage = JoinAnnotations(path=str(tmp_path / "c.parquet"), columns={"clip": "float"}, keep_if=["clip >= 0.3"],
                            sources=["dc"])
    res = stage.run(t)
    assert res.kept.column("key").to_pylist() == ["other/u0", "other/u1"]
    res = JoinAnnotations(path=str(tmp_path / "c.parquet"), columns={"clip": "float"}, keep_if=["clip >= 0.3"],
                          missing="keep").run(samples(2))
    assert res.kept.column("key").to_pylist() == ["dc/u1"]


def test_duplicate_ids_in_the_file_are_an_error(tmp_path: Path):
    pq.write_table(pa.table({"key": ["a", "a"], "s": [1.0, 2.0]}), tmp_path / "d.parquet")
    with pytest.raises(ValueError, match="duplicate"):
        JoinAnnotations(path=str(tmp_path / "d.parquet"), columns={"s": "float"}).run(samples(1))


def test_recipe_refuses_a_condition_on_a_column_nobody_adds(tmp_path: Path):
    data = {"name": "x", "seed": 1, "sources": [{"name": "s", "path": "x.parquet", "format": "parquet"}],
            "stages": [{"name": "join_annotations", "settings": {"path": "a.parquet", "columns": {"a": "float"},
                                                                  "keep_if": ["b >= 1"]}}]}
    with pytest.raises(RecipeError, match=r"needs column\(s\) \['b'\]"):
        parse(data)


@given(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), st.sampled_from([">=", ">", "<=", "<", "==", "!="]),
       st.one_of(st.integers(-10**6, 10**6), st.floats(-1e6, 1e6, allow_nan=False), st.booleans()))
def test_condition_parser_round_trips(column, op, value):
    text = f"{column} {op} {str(value).lower() if isinstance(value, bool) else value}"
    cond = parse_condition(text)
    assert (cond.column, cond.op) == (column, op)
    assert cond.value == (value if isinstance(value, bool) else float(value))


@given(st.text(max_size=20))
def test_condition_parser_refuses_garbage_with_a_message(text):
    try:
        cond = parse_condition(text)
    except ValueError as exc:
        assert "cannot parse condition" in str(exc)
    else:
        assert cond.column and (cond.op == "present" or cond.op in (">=", ">", "<=", "<", "==", "!="))
