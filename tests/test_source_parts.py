"""Large source files are read by several ingest tasks (parquet row groups, JSONL byte ranges), and
the records — keys, ordinals, statuses, bytes — are the ones a whole-file read gives."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from curate.readers import read as readers
from curate.base import StageContext, build
from curate.readers.jsonl import plan_line_parts
from curate.readers.read import SourceSpec, read_file


def _ingest(sources: list[dict]):
    return build("ingest", {"sources": sources}, StageContext(seed=1))


def _read_all(stage) -> pa.Table:
    tasks = stage.input_table()
    return pa.concat_tables([stage.read_tasks(tasks.slice(i, 1)) for i in range(tasks.num_rows)])


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


# "{id}" becomes the line's position: ids are unique, so the reader's within-file duplicate check (which
# a part only applies within itself; ingest's whole-run step covers the rest) plays no part here.
record = st.one_of(
    st.builds(lambda t: json.dumps({"id": "{id}", "conversations": [{"from": "human", "value": t},
                                                                  {"from": "gpt", "value": t[::-1]}]}),
              st.text(min_size=1, max_size=40)),
    st.builds(lambda t: json.dumps({"conversations": [{"from": "human", "value": t}, {"from": "gpt", "value": "ok"}]}),
              st.text(min_size=1, max_size=40)),
    st.just(""), st.just("{not json"), st.just("[1, 2]"))


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(record, min_size=1, max_size=40), st.integers(1, 400))
def test_jsonl_byte_ranges_read_the_same_records_as_the_whole_file(tmp_path, monkeypatch, lines, part_bytes):
    path = _jsonl(tmp_path / "c.jsonl", [line.replace('"{id}"', f'"r{i}"') for i, line in enumerate(lines)])
    spec = SourceSpec(name="c", path=str(path), format="llava", category="vqa")
    whole = read_file(spec, str(path), 0, 0)
    parts = plan_line_parts(str(path), part_bytes)
    if parts is None:   # small, or a JSON array (streamed by one task)
        assert path.stat().st_size <= part_bytes or path.read_bytes().lstrip().startswith(b"[")
        return
    # the ranges tile the file, each starts after a newline, and carries its first line number
    assert parts[0][0] == 0 and parts[-1][1] == path.stat().st_size
    raw = path.read_bytes()
    for (a, b, before), nxt in zip(parts, parts[1:] + [None]):
        assert a < b and (nxt is None or nxt[0] == b)
        assert raw[:a].count(b"\n") == before and (a == 0 or raw[a - 1:a] == b"\n")
    split = pa.concat_tables([read_file(spec, str(path), 0, 0, p) for p in parts])
    assert split.equals(whole)


def test_ingest_splits_large_files_into_tasks_and_reads_the_same_rows(tmp_path, monkeypatch):
    n = 1000
    table = pa.table({"key": [f"k{i}" for i in range(n)], "text": [f"caption number {i}" for i in range(n)]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=64)
    _jsonl(tmp_path / "c.jsonl", [json.dumps({"id": f"c{i}", "conversations": [
        {"from": "human", "value": f"q {i}"}, {"from": "gpt", "value": f"a {i}"}]}) for i in range(n)])
    sources = [{"name": "t", "path": str(tmp_path / "t.parquet"), "format": "parquet", "category": "text",
                "key_column": "key"},
               {"name": "c", "path": str(tmp_path / "c.jsonl"), "format": "llava", "category": "vqa"}]
    whole = _read_all(_ingest(sources))
    assert _ingest(sources).input_table().num_rows == 2
    monkeypatch.setattr(readers, "PARQUET_ROWS_PER_PART", 200)
    monkeypatch.setattr(readers, "BYTES_PER_PART", 10_000)
    stage = _ingest(sources)
    tasks = stage.input_table()
    assert tasks.num_rows > 8 and tasks.column("uri").to_pylist().count(str(tmp_path / "t.parquet")) == 4   # 256-row parts (4 groups of 64)
    split = _read_all(stage)
    assert split.equals(whole)
    # the fingerprint names each file once, whatever the number of parts
    assert len(stage.input_identity()) == 2
