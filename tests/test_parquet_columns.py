"""The column path for metadata-only parquet gives the row path's records, byte for byte."""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from curate.readers import refs
from curate.base import records as R
from curate.readers.parquet_columns import open_plain, plain_schema
from curate.readers.parquet import read_parquet, read_parquet_tables
from curate.readers.sources import SourceSpec
from tests.corpus import jpeg, png

# Image-path cells: good files, repeated ones, a missing file, a truncated JPEG, paths outside the
# root (``..``, absolute, through a symlink), a symlink inside, a directory, an empty string.
IMAGE_PATHS = ["img/a.jpg", "img/b.png", "img/a.jpg", "img/./a.jpg", "img/../img/b.png", "img/missing.jpg",
               "img/cut.jpg", "../outside.jpg", "/etc/hostname", "img/link-in.jpg", "img/link-out.jpg", "img",
               "", "img/sub/c.jpg", "ABS"]


def image_files(sub):
    """The files IMAGE_PATHS point at, below the parquet file's folder (the source root)."""
    img = sub / "img"
    if img.exists():
        return
    (img / "sub").mkdir(parents=True)
    (img / "a.jpg").write_bytes(jpeg(40, 30, seed=1))
    (img / "b.png").write_bytes(png(20, 10, seed=2))
    (img / "cut.jpg").write_bytes(jpeg(40, 30, seed=3)[:-2])   # no end-of-image marker
    (img / "sub" / "c.jpg").write_bytes(jpeg(16, 16, seed=4))
    (sub.parent / "outside.jpg").write_bytes(jpeg(8, 8, seed=5))
    os.symlink(img / "a.jpg", img / "link-in.jpg")
    os.symlink(sub.parent / "outside.jpg", img / "link-out.jpg")

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
    if draw(st.booleans()):
        cols["image"] = draw(st.lists(st.one_of(st.none(), st.sampled_from(IMAGE_PATHS)), min_size=n, max_size=n))
    return pa.table(cols), draw(st.integers(1, 8)), draw(st.sampled_from([None, "shard"]))


def _uncached_image(self, spec, root, value, make_ref):
    """The reference reader as it was before ReferenceMemo: resolve, then read, every row."""
    uri = refs.resolve_reference(value, root, spec)
    return make_ref(refs.read_reference(uri, spec), uri)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corpus())
def test_column_path_equals_row_path(tmp_path, case):
    table, group_rows, key_prefix = case
    path = tmp_path / "sub" / "part-0.parquet"
    path.parent.mkdir(exist_ok=True)
    image_files(path.parent)
    if "image" in table.column_names:
        cells = [str(path.parent / "img" / "a.jpg") if v == "ABS" else v for v in table.column("image").to_pylist()]
        table = table.set_column(table.schema.get_field_index("image"), "image", pa.array(cells, pa.string()))
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
    with pytest.MonkeyPatch.context() as mp:   # each distinct path read once == every row read
        mp.setattr(refs.ReferenceMemo, "image", _uncached_image)
        assert R.rows_to_table(list(read_parquet(spec, str(path), 2, 5))).equals(rows)
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
    assert plain_schema(spec, pa.schema([("text", pa.string()), ("image", pa.string())]))   # paths: columns
    assert not plain_schema(spec, pa.schema([("text", pa.string()), ("conversations", pa.string())]))
    assert not plain_schema(spec, pa.schema([("text", pa.string()), ("when", pa.timestamp("s"))]))
    assert not plain_schema(spec, pa.schema([("text", pa.large_string())]))
    assert plain_schema(spec, pa.schema([("key", pa.int32()), ("text", pa.string()), ("w", pa.int16())]))


def test_image_path_cells_through_the_column_path(tmp_path):
    """Every kind of image-path cell once, through the column path: the same rows as the row path
    reading each row's file again, and each refusal named."""
    sub = tmp_path / "sub"
    sub.mkdir()
    image_files(sub)
    cells = [str(sub / "img" / "a.jpg") if v == "ABS" else v for v in IMAGE_PATHS] + [None]
    path = sub / "part-0.parquet"
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(len(cells))], "text": ["a caption"] * len(cells),
                             "image": pa.array(cells, pa.string())}), path, row_group_size=4)
    spec = SourceSpec(name="s", path=str(path), format="parquet", category="caption")
    columns = pa.concat_tables([R.BASE_SCHEMA.empty_table(), *read_parquet_tables(spec, str(path), 0, 0)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(refs.ReferenceMemo, "image", _uncached_image)
        assert columns.equals(R.rows_to_table(list(read_parquet(spec, str(path), 0, 0))))
    got = dict(zip(cells, zip(columns.column(R.STATUS).to_pylist(), columns.column(R.REASON).to_pylist())))
    assert got["img/a.jpg"] == got["img/./a.jpg"] == got["img/link-in.jpg"] == got["img/b.png"] == (R.KEPT, None)
    assert got["img/missing.jpg"] == (R.QUARANTINED, "image:missing_file")
    assert got["img/cut.jpg"] == (R.QUARANTINED, "image:truncated_image")
    assert got["../outside.jpg"][1] == got["img/link-out.jpg"][1] == got["/etc/hostname"][1] == "image:outside_root"
    assert got["img"][1] == "image:not_regular_file" and got[""][1] == "image:unsupported_value"
    refs_of = dict(zip(cells, columns.column("images").to_pylist()))
    assert refs_of["img/./a.jpg"] == refs_of["img/a.jpg"] and refs_of["img/a.jpg"][0]["width"] == 40
    assert refs_of["img/link-in.jpg"][0]["uri"] == str((sub / "img" / "a.jpg").resolve())
    assert refs_of[None] == []


# Conversations (issue 31): LLaVA from/value and role/content turns, with nulls, empty lists, null
# turns, unknown and non-ASCII roles, null contents, and texts long enough for a small max_text_bytes.
ROLES = st.one_of(st.none(), st.sampled_from(["human", "GPT", "User", "assistant", "system", "bot", "model",
                                              "robot", "", "none", "Ｕser", "ＧＰＴ"]))
CONTENTS = st.one_of(st.none(), st.text(max_size=8), st.sampled_from(["<image>\nWhat is it?", "é" * 9]))


@st.composite
def conversation_corpus(draw):
    n = draw(st.integers(0, 25))
    shape = draw(st.sampled_from([("from", "value"), ("role", "content"), ("from", "role", "value", "content")]))
    turn_type = pa.struct([(f, pa.string()) for f in shape])
    ascii_only = draw(st.booleans())   # a batch with a non-ASCII role goes row by row: both kinds drawn
    roles = ROLES.filter(lambda r: r is None or r.isascii()) if ascii_only else ROLES
    turn = st.one_of(st.none(), st.fixed_dictionaries({f: roles if f in ("from", "role") else CONTENTS
                                                       for f in shape}))
    convs = draw(st.lists(st.one_of(st.none(), st.lists(turn, max_size=4)), min_size=n, max_size=n))
    cols: dict[str, pa.Array] = {"conversations": pa.array(convs, pa.list_(turn_type))}
    if draw(st.booleans()):
        cols["text"] = pa.array(draw(st.lists(texts, min_size=n, max_size=n)), pa.string())
    if draw(st.booleans()):
        cols["key"] = pa.array(draw(st.lists(keys, min_size=n, max_size=n)), pa.string())
    if draw(st.booleans()):
        cols["similarity"] = pa.array(draw(st.lists(floats, min_size=n, max_size=n)), pa.float64())
    if draw(st.booleans()):
        cols["image"] = pa.array(draw(st.lists(st.one_of(st.none(), st.sampled_from(IMAGE_PATHS[:8])), min_size=n,
                                               max_size=n)), pa.string())
    return pa.table(cols), draw(st.integers(1, 8)), draw(st.sampled_from([8, 20, 1 << 20]))


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conversation_corpus())
def test_conversation_column_path_equals_row_path(tmp_path, case):
    table, group_rows, max_text_bytes = case
    path = tmp_path / "sub" / "part-0.parquet"
    path.parent.mkdir(exist_ok=True)
    image_files(path.parent)
    pq.write_table(table, path, row_group_size=group_rows)
    spec = SourceSpec(name="s", path=str(tmp_path / "*" / "*.parquet"), format="parquet", category="vqa",
                      max_text_bytes=max_text_bytes)
    assert plain_schema(spec, pq.read_schema(path))
    rows = R.rows_to_table(list(read_parquet(spec, str(path), 1, 3)))
    columns = pa.concat_tables([R.BASE_SCHEMA.empty_table(), *read_parquet_tables(spec, str(path), 1, 3,
                                                                                rows_per_table=4)])
    assert columns.equals(rows), (columns.to_pylist(), rows.to_pylist())


def test_conversation_shapes_the_column_path_takes():
    spec = SourceSpec(name="s", path="x", format="parquet")
    turns = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
    assert plain_schema(spec, pa.schema([("id", pa.string()), ("conversations", turns)]))
    assert plain_schema(spec, pa.schema([("conversations", pa.list_(pa.struct([("role", pa.string()),
                                                                               ("content", pa.string())])))]))
    assert not plain_schema(spec, pa.schema([("conversations", pa.list_(pa.struct([("from", pa.string())])))]))
    assert not plain_schema(spec, pa.schema([("conversations", pa.list_(pa.struct([("from", pa.int64()),
                                                                                   ("value", pa.string())])))]))
    assert not plain_schema(spec, pa.schema([("conversations", turns), ("image", pa.binary())]))
    assert not plain_schema(SourceSpec(name="s", path="x", format="parquet", max_images_per_record=0),
                            pa.schema([("conversations", turns), ("image", pa.string())]))
