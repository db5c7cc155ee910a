"""The column path for LLaVA JSONL gives the row path's records, byte for byte (issue 31), on
generated files full of the traps that separate Arrow's JSON reader from ``json.loads``, and on
each trap by itself."""
from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from curate.base import records as R
from curate.readers.jsonl import LlavaTask, plan_line_parts, read_llava
from curate.readers import jsonl_columns
from curate.readers.jsonl_blocks import plain_block
from curate.readers.jsonl_columns import ColumnBlocks, read_llava_tables
from curate.readers.read import read_file
from curate.readers.sources import SourceSpec
from tests.corpus import jpeg, png

ROLES = ["human", "gpt", "USER", "Assistant", "system", "bot", "model", "robot", "", "none", "ＧＰＴ", "ASSİSTANT"]
CONTENTS = st.one_of(st.text(max_size=6), st.sampled_from(["<image>\nWhat is it?", "<video> v", "é" * 5, "a\x00b",
                                                           "😀", "a null", "\\u00e9", "<image><image>", "2020-01-01",
                                                           "2020-01-01 10:00:00"]))
# Number texts whose value or type two parsers may read differently.
NUMBERS = ["1", "1.0", "1e2", "1E5", "-0", "-0.0", "0.5", "2.5e-3", "0.1", "123456789012345678901234",
           "9223372036854775807", "9223372036854775808", "1e400", "1e-400", "01", "1."]
# Lines that are not a clean record: blank, padded, not an object, broken, and each parser trap.
TRAP_LINES = [b"", b"   ", b"\t", b"\r", b"[1, 2]", b"5", b'"text"', b"nul", b"{", b"{}",
              b'{"id": "x", "id": "y", "conversations": [{"from": "human", "value": "q"}]}',
              b'{"conversations": [{"from": "human", "value": "q", "from": "gpt"}]}',
              b'{"conversations": [{"from": "human", "value": "\\ud800"}]}',
              b'{"conversations": [{"from": "human", "value": "\\ud83d\\ude00"}]}',
              b'{"conversations": [{"from": "human", "value": "\xff\xfe"}]}',
              b'{"conversations": [{"from": "human", "value": "q"}], "s": NaN}',
              b'{"conversations": [{"from": "human", "value": "q", "x": Infinity}]}',
              b'{"conversations": [{"from": "human", "value": "q", "x": -Inf}]}',
              b'{"conversations": [{"from": "human", "value": "q"}, null]}',
              b'{"id": null, "conversations": [{"from": "human", "value": "q"}], "w": null}',
              b'{"conversations": [{"from": null, "role": "user", "value": "q"}]}',
              b'{"conversations": [{"from": "gpt", "value": null, "content": "c"}]}',
              b'{"image": null, "images": ["a.jpg"], "conversations": [{"from": "human", "value": "q"}]}',
              b'\xef\xbb\xbf{"conversations": [{"from": "human", "value": "q"}]}',
              b'{"conversations": [{"from": "human", "value": "q"}]} {"conversations": []}',
              b'{"conversations": [{"from": "human", "value": "q"}]}\r{"id": "cr"}',
              b'{"conversations": [{"from": "human", "value": "q"}], "deep": ' + b"[" * 70 + b"]" * 70 + b"}",
              b'{"conversations": [{"from": "human", "value": "tab\there"}]}',
              b'{"conversations": "not a list"}', b'{"conversations": [], "id": 3.5}',
              b'{"conversations": [{"from": "human", "value": "q"}], "id": true}',
              b'{"image": "a.jpg", "conversations": [{"from": "human", "value": "q"}]}',
              b'{"image": "missing.jpg", "conversations": [{"from": "human", "value": "<image>q"}]}',
              b'{"conversations": [{"from": "human", "value": "q"}], "meta": {"a": 1, "b": [1, 2.0]}}']


@st.composite
def turn(draw, clean: bool):
    fields = {}
    shapes = [("from", "value")] * 4 + [("role", "content")] * 2 + [("from", "role", "value", "content"),
                                                                    ("from", "content"), ("value",), ("from",), ()]
    for name in draw(st.sampled_from(shapes)):
        if name in ("from", "role"):   # mostly a known role, so that whole conversations are often valid
            fields[name] = draw(st.sampled_from(ROLES[:7] * 4 + ROLES))
        else:
            fields[name] = draw(CONTENTS)
        if not clean and draw(st.integers(0, 9)) == 0:
            fields[name] = draw(st.one_of(st.none(), st.integers(0, 3), st.lists(st.integers(0, 1), max_size=1)))
    if draw(st.booleans()):
        fields["weight"] = draw(st.one_of(st.integers(0, 2), st.floats(0, 1)))
    return fields


@st.composite
def record_line(draw, clean: bool, meta_kinds: dict[str, str]) -> bytes:
    rec: dict = {}
    if draw(st.integers(0, 4)):
        rec["id"] = draw(st.sampled_from(["a", "b", "c", "é/1", "", "x" * 600])) if meta_kinds["id"] == "str" else \
            draw(st.integers(-2, 2 ** 70 if not clean else 3))
    if draw(st.integers(0, 6)):
        rec["conversations"] = draw(st.lists(turn(clean), min_size=draw(st.sampled_from([0, 1, 1, 1])), max_size=3))
    image_field = meta_kinds["image_field"]
    if image_field != "none" and draw(st.booleans()):
        paths = st.sampled_from(IMAGE_PATHS)
        rec[image_field] = draw(paths) if image_field == "image" else draw(st.lists(paths, max_size=3))
        if draw(st.booleans()) and meta_kinds["both"]:
            rec["images"] = draw(st.lists(paths, min_size=1, max_size=2))
    for name, kind in meta_kinds.items():
        if name in ("id", "image_field", "both") or not draw(st.booleans()):
            continue
        rec[name] = draw({"int": st.integers(-5, 10 ** 6), "float": st.floats(allow_nan=False, allow_infinity=False),
                          "frac": st.floats(0.01, 0.99), "bool": st.booleans(), "str": st.text(max_size=5),
                          "category": st.sampled_from(["ocr", "chart", "é"])}[kind])
    text = json.dumps(rec, ensure_ascii=draw(st.booleans()), indent=None,
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    if not clean and draw(st.integers(0, 3)) == 0:   # a number as written, not as Python writes it
        text = text[:-1] + ("," if rec else "") + f'"n": {draw(st.sampled_from(NUMBERS))}}}'
    return text.encode("utf-8", "surrogatepass")


@st.composite
def jsonl_file(draw) -> bytes:
    clean = draw(st.booleans())
    meta_kinds = {"id": draw(st.sampled_from(["str", "int"])), "width": "int",
                  "score": draw(st.sampled_from(["frac", "float"])), "nsfw": "bool", "caption": "str",
                  "category": draw(st.sampled_from(["category", "int"])),
                  "image_field": draw(st.sampled_from(["none", "image", "images"])), "both": draw(st.booleans())}
    lines = draw(st.lists(st.one_of(record_line(clean, meta_kinds), st.sampled_from(TRAP_LINES)) if not clean
                          else record_line(clean, meta_kinds), max_size=30))
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    body = newline.join(lines)
    return body + (newline if draw(st.booleans()) else b"")


def spec_for(path, **options) -> SourceSpec:
    return SourceSpec(name="s", path=str(path), format="llava", category="vqa", **options)


def assert_same(spec: SourceSpec, uri: str, part=None, block_bytes: int = 1 << 20) -> pa.Table:
    rows = R.rows_to_table(list(read_llava(spec, uri, 1, 3, part)))
    columns = pa.concat_tables([R.empty_table(), *read_llava_tables(spec, uri, 1, 3, part, rows_per_table=7,
                                                                    block_bytes=block_bytes)])
    assert columns.equals(rows), (columns.to_pylist(), rows.to_pylist())
    return columns


# Image paths: good ones (one twice through "./"), a missing file, a cut JPEG, one outside the root
# (refused before any read), "".
IMAGE_PATHS = ["a.jpg", "b.png", "./a.jpg", "missing.jpg", "cut.jpg", "../outside.jpg", ""]


def image_files(folder):
    (folder / "a.jpg").write_bytes(jpeg(20, 10, seed=1))
    (folder / "b.png").write_bytes(png(12, 8, seed=2))
    (folder / "cut.jpg").write_bytes(jpeg(20, 10, seed=3)[:-2])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(jsonl_file(), st.sampled_from([64, 300, 1 << 20]), st.sampled_from([12, 40, 1 << 20]),
       st.sampled_from([None, "shard"]), st.sampled_from([1, 2, 1024]), st.sampled_from([100, 64 << 10]))
def test_column_path_equals_row_path(tmp_path, body, block_bytes, max_text_bytes, key_prefix, max_images, split_min):
    with pytest.MonkeyPatch.context() as mp:   # declined blocks tried again in pieces, from this size on
        mp.setattr(jsonl_columns, "SPLIT_MIN_BYTES", split_min)
        column_path_equals_row_path(tmp_path, body, block_bytes, max_text_bytes, key_prefix, max_images)


def column_path_equals_row_path(tmp_path, body, block_bytes, max_text_bytes, key_prefix, max_images):
    path = tmp_path / "part-0.jsonl"
    path.write_bytes(body)
    image_files(tmp_path)
    spec = spec_for(tmp_path / "*.jsonl", max_text_bytes=max_text_bytes, key_prefix=key_prefix,
                    max_images_per_record=max_images)
    whole = assert_same(spec, str(path), block_bytes=block_bytes)
    parts = plan_line_parts(str(path), 100) or []
    for part in parts:   # each byte range as its own task; together they read every record once
        assert_same(spec, str(path), part, block_bytes)
    if parts:
        ordinals = [o for part in parts for o in read_file(spec, str(path), 1, 3, part).column(R.ORDINAL).to_pylist()]
        assert ordinals == whole.column(R.ORDINAL).to_pylist()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(jsonl_file(), st.sampled_from([300, 4096, 1 << 20]), st.integers(0, 100), st.integers(1, 4))
def test_gzip_column_path_equals_row_path_whole_and_cut(tmp_path, body, block_bytes, cut_percent, repeat):
    """A gzip file, whole or cut anywhere (a stream cut short: truncated_file after the last whole line)."""
    packed = gzip.compress(body * repeat * 12, mtime=0)   # some are longer than the row path's 4 KiB sniff
    path = tmp_path / "part-0.jsonl.gz"
    image_files(tmp_path)
    spec = spec_for(tmp_path / "*.jsonl.gz")
    for data in (packed, packed[:len(packed) * cut_percent // 100]):
        path.write_bytes(data)
        assert_same(spec, str(path), block_bytes=block_bytes)


def block_table(tmp_path, lines: list[str | bytes], **options) -> pa.Table | None:
    """The column path's table of one block of these lines, or None where it declines the block."""
    data = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    spec = spec_for(path, **options)
    assert_same(spec, str(path))
    return ColumnBlocks(LlavaTask(spec, str(path), 1, 3)).table(data, 0) if plain_block(data) else None


CONV = '"conversations": [{"from": "human", "value": "Where is the cat?"}, {"from": "gpt", "value": "(1,2),(3,4)"}]'


def test_common_shapes_take_the_column_path(tmp_path):
    for lines in ([f'{{"id": "g-{i}", {CONV}}}' for i in range(5)],   # LLaVA from/value, string ids
                  [f'{{"id": {i}, "conversations": [{{"role": "user", "content": "q"}}]}}' for i in range(3)],
                  # date-like texts (Arrow's inference makes them timestamps) in ids, turns and metadata
                  [f'{{"id": "2024-01-0{i}", "date": "2024-01-0{i} 10:00:00", "conversations": [{{"from": "human", '
                   f'"value": "2020-01-01"}}, {{"from": "gpt", "value": "1999-12-31T23:59:59"}}]}}' for i in range(1, 4)],
                  ['{"conversations": [{"role": "system", "content": "s"}, {"from": "human", "value": "q"}]}',
                   f'{{"width": 5, "score": 0.25, "nsfw": false, "source": "x", {CONV}}}', "",
                   '{"id": "k", "category": "ocr", "conversations": []}', '{"other": 1}'],
                  # the word null in a text, and sparse fields (nulls to Arrow): those lines are looked at
                  ['{"id": "c1", "conversations": [{"from": "human", "value": "Why is it null?"}]}',
                   '{"id": "c2", "source": "web", "conversations": [{"from": "gpt", "value": "nullable"}]}']):
        assert block_table(tmp_path, lines) is not None, lines


@pytest.mark.parametrize("line", [
    '{"conversations": [{"from": null, "role": "user", "value": "q"}]}',        # explicit null vs missing
    '{"id": "a", "id": "b", "conversations": [{"from": "human", "value": "q"}]}',   # duplicate keys
    '{"conversations": [{"from": "human", "value": "q"}], "score": 1.0}',          # 1.0 vs 1
    '{"conversations": [{"from": "human", "value": "q"}], "big": 9223372036854775808}',
    '{"conversations": [{"from": "human", "value": "\\ud800"}]}',                  # lone surrogate
    b'{"conversations": [{"from": "human", "value": "\xc3"}]}',                    # invalid UTF-8
    '{"conversations": [{"from": "human", "value": "q"}], "meta": {"a": [1]}}',     # nested metadata
    '[{"from": "human", "value": "q"}]', '5',                                      # not objects
    '  {"conversations": [{"from": "human", "value": "q"}]}',                      # padded
    '{"conversations": [{"from": "human", "value": "q"}]} {"id": "2"}',            # two objects, one line
    '{"video": "v.mp4", "conversations": [{"from": "human", "value": "q"}]}',      # video
    '{"images": ["a.jpg", 5], "conversations": [{"from": "human", "value": "q"}]}',  # an image value not text
    '{"conversations": [{"from": "human", "value": "q"}], "x": NaN}',
    '{"conversations": [{"from": "human", "value": "q", "w": Inf}]}',                # Arrow reads Inf
    '{"conversations": [{"from": "human", "value": "q"}, null]}',                   # a null turn
])
def test_each_trap_falls_back_to_the_row_path(tmp_path, line):
    image_files(tmp_path)
    assert block_table(tmp_path, [f'{{"id": "z", {CONV}}}', line]) is None


def test_non_ascii_roles_and_placeholders_without_media(tmp_path):
    lines = ['{"conversations": [{"from": "ASSİSTANT", "value": "a"}]}',   # Arrow's lower case maps it to an alias
             '{"conversations": [{"from": "ＧＰＴ", "value": "a"}]}',
             '{"conversations": [{"from": "human", "value": "<image>\\nq"}]}',
             '{"conversations": [{"from": "human", "value": "<video><image>q"}]}']
    table = block_table(tmp_path, lines, max_text_bytes=4)
    assert table is not None
    assert table.column(R.REASON).to_pylist() == ["invalid_conversations", "invalid_conversations",
                                                  "image_placeholder_mismatch", "video_placeholder_mismatch"]
    escaped = block_table(tmp_path, ['{"conversations": [{"from": "human", "value": "\\u003cimage>q"}]}'])
    assert escaped is not None and escaped.column(R.REASON).to_pylist() == ["image_placeholder_mismatch"]


def test_byte_ranges_read_every_record_once(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text("".join(f'{{"id": "r{i}", {CONV}}}\n' + ("\n" if i % 7 == 0 else "") for i in range(500)))
    spec = spec_for(path)
    parts = plan_line_parts(str(path), 2000)
    assert parts and len(parts) > 5
    tables = [assert_same(spec, str(path), part, block_bytes=700) for part in parts]
    keys = [k for t in tables for k in t.column("key").to_pylist()]
    assert keys == [f"s/r{i}" for i in range(500)]
    assert all(s == R.KEPT for t in tables for s in t.column(R.STATUS).to_pylist())


def test_long_lines_and_a_last_line_without_newline(tmp_path):
    path = tmp_path / "f.jsonl"
    long = '{"id": "long", "conversations": [{"from": "human", "value": "' + "w" * 5000 + '"}]}'
    path.write_text(f'{{"id": "a", {CONV}}}\n{long}\n{{"id": "b", {CONV}}}\n{{"id": "c", {CONV}}}')
    table = assert_same(spec_for(path, max_text_bytes=100), str(path), block_bytes=200)
    assert table.column(R.REASON).to_pylist() == [None, "text_too_long", None, None]


def test_gzip_files_through_the_column_path_and_arrays_by_rows(tmp_path):
    lines = "".join(f'{{"id": "r{i}", {CONV}}}\n' for i in range(2000))
    packed = gzip.compress(lines.encode(), mtime=0)
    (tmp_path / "f.jsonl.gz").write_bytes(packed)
    (tmp_path / "cut.jsonl.gz").write_bytes(packed[:len(packed) // 2])
    (tmp_path / "a.json").write_text("[" + ",".join(lines.splitlines()) + "]")
    whole = assert_same(spec_for(tmp_path / "f.jsonl.gz"), str(tmp_path / "f.jsonl.gz"), block_bytes=4096)
    assert whole.num_rows == 2000 and set(whole.column(R.STATUS).to_pylist()) == {R.KEPT}
    cut = assert_same(spec_for(tmp_path / "cut.jsonl.gz"), str(tmp_path / "cut.jsonl.gz"), block_bytes=4096)
    assert cut.column(R.REASON).to_pylist()[-1] == "truncated_file"
    assert 0 < cut.num_rows - 1 < 2000 and set(cut.column(R.STATUS).to_pylist()[:-1]) == {R.KEPT}
    assert assert_same(spec_for(tmp_path / "a.json"), str(tmp_path / "a.json")).num_rows == 2000


def test_images_through_the_column_path(tmp_path):
    image_files(tmp_path)
    lines = ['{"id": "placed", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\\nq"}, '
             '{"from": "gpt", "value": "a"}]}',
             '{"id": "inserted", "images": ["a.jpg", "b.png"], "conversations": [{"from": "gpt", "value": "x"}, '
             '{"from": "human", "value": "q"}]}',
             '{"id": "missing", "image": "missing.jpg", "conversations": [{"from": "human", "value": "q"}]}',
             '{"id": "outside", "image": "../outside.jpg", "conversations": [{"from": "human", "value": "q"}]}',
             '{"id": "two-tags", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image><image>"}]}',
             '{"id": "text-only", "conversations": [{"from": "human", "value": "q"}]}']
    table = block_table(tmp_path, lines, max_images_per_record=1)
    assert table is not None
    got = {r["key"]: r for r in table.to_pylist()}
    assert got["s/placed"]["images"][0]["width"] == 20 and got["s/placed"][R.STATUS] == R.KEPT
    assert got["s/inserted"][R.REASON] == "too_many_images"
    assert got["s/missing"][R.STATUS] == R.QUARANTINED and got["s/missing"][R.REASON] == "image:missing_file"
    assert got["s/outside"][R.REASON] == "image:outside_root"
    assert got["s/two-tags"][R.REASON] == "image_placeholder_mismatch"
    assert got["s/text-only"][R.STATUS] == R.KEPT and got["s/text-only"]["images"] == []
    inserted = block_table(tmp_path, lines[1:2])
    assert [t["content"] for t in inserted.column("conversations")[0].as_py()] == ["x", "<image>\n<image>\nq"]


def test_a_declined_block_is_tried_again_in_pieces(tmp_path):
    """One explicit null (or one line Arrow refuses) costs its piece of the block, not the block."""
    path = tmp_path / "f.jsonl"
    lines = [f'{{"id": "r{i}", {CONV}}}' for i in range(3000)]
    lines[1500] = '{"id": "n", "source": null, "conversations": [{"from": "human", "value": "q"}]}'
    lines[2500] = '{"id": "bad" "conversations": []}'
    path.write_text("\n".join(lines) + "\n")
    went = []
    table = ColumnBlocks.table

    def counted(self, block, lines_before):
        out = table(self, block, lines_before)
        went.append(out is not None)
        return out
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ColumnBlocks, "table", counted)
        got = assert_same(spec_for(path), str(path))
    assert went[0] is False and len(went) == 1 + jsonl_columns.SPLIT_PIECES and sum(went) == len(went) - 3
    assert got.column(R.REASON).to_pylist()[2500] == "invalid_json_line"
    assert got.column("meta").to_pylist()[1500] == '{"source":null}'
