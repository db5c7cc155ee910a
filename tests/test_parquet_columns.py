"""The column path for metadata-only parquet gives the row path's records, byte for byte."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings, strategies as st

from curate.base import records as R
from curate.parquet_columns import open_plain, plain_schema
from curate.parquet_reader import read_parquet, read_parquet_tables
from curate.sources import SourceSpec

texts = st.one_of(st.none(), st.text(max_size=12))
keys = st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "é/1"]))   # duplicates likely
floats = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=64))


@st.composite
def corpus(draw):
    n = draw(st.integers(0, 30))
    cols: dict[str, pa.Array] = {"text": pa.array(draw(st.lists(texts, min_size=n, max_size=n)), pa.string())}
    key_kind = draw(st.sampled_from(["string", "int", "absent"]))
    if key_kind == "string":
        cols["key"] = pa.array(draw(st.lists(keys, min_size=n, max_size=n)), pa.string())
    elif key_kind == "int":
        cols["key"] = pa.array(draw(st.lists(st.one_of(st.none(), st.integers(-3, 3)), min_size=n, max_size=n)),
                               pa.int64())
    if draw(st.booleans()):
        cols["width"] = pa.array(draw(st.lists(st.one_of(st.none(), st.integers(0, 10**12)), min_size=n, max_size=n)),
                                 pa.int64())
    if draw(st.booleans()):
        cols["similarity"] = pa.array(draw(st.lists(floats, min_size=n, max_size=n)), pa.float64())
    if draw(st.booleans()):
        cols["nsfw"] = pa.array(draw(st.lists(st.one_of(st.none(), st.booleans()), min_size=n, max_size=n)), pa.bool_())
    if draw(st.booleans()):
        cols["category"] = pa.array(draw(st.lists(st.one_of(st.none(), st.sampled_from(["ocr", "chart"])),
                                                  min_size=n, max_size=n)), pa.string())
    return pa.table(cols), draw(st.integers(1, 8)), draw(st.sampled_from([None, "shard"]))


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corpus())
def test_column_path_equals_row_path(tmp_path, case):
    table, group_rows, key_prefix = case
    path = tmp_path / "sub" / "part-0.parquet"
    path.parent.mkdir(exist_ok=True)
    pq.write_table(table, path, row_group_size=group_rows)
    spec = SourceSpec(name="s", path=str(tmp_path / "*" / "*.parquet"), format="parquet", category="caption",
                      key_prefix=key_prefix)
    assert plain_schema(spec, pq.read_schema(path))
    opened = open_plain(spec, str(path))
    assert opened is not None
    opened[0].close()
    rows = R.rows_to_table(list(read_parquet(spec, str(path), 2, 5)))
    columns = pa.concat_tables([R.BASE_SCHEMA.empty_table(), *read_parquet_tables(spec, str(path), 2, 5,
                                                                                rows_per_table=3)])
    assert columns.equals(rows), (columns.to_pylist(), rows.to_pylist())
    # a part of the file (row groups) too
    groups = pq.ParquetFile(path).metadata.num_row_groups
    if groups > 1:
        part = (1, groups)
        rows = R.rows_to_table(list(read_parquet(spec, str(path), 2, 5, part)))
        columns = pa.concat_tables([R.BASE_SCHEMA.empty_table(), *read_parquet_tables(spec, str(path), 2, 5, part)])
        assert columns.equals(rows)


def test_files_with_images_or_conversations_take_the_row_path(tmp_path):
    spec = SourceSpec(name="s", path=str(tmp_path / "*.parquet"), format="parquet", category="caption")
    assert not plain_schema(spec, pa.schema([("text", pa.string()), ("image", pa.binary())]))
    assert not plain_schema(spec, pa.schema([("text", pa.string()), ("conversations", pa.string())]))
    assert not plain_schema(spec, pa.schema([("text", pa.string()), ("when", pa.timestamp("s"))]))
    assert not plain_schema(spec, pa.schema([("text", pa.large_string())]))
    assert plain_schema(spec, pa.schema([("key", pa.int32()), ("text", pa.string()), ("w", pa.int16())]))
