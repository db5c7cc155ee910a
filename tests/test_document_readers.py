"""The interleaved-document readers (#25 item 2): ``obelics`` (parquet, JSONL) and ``mint1t`` (tars).

Real files on disk, read through the same entry point a recipe uses (curate.readers.read)."""
from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from curate.base import records as R
from curate.documents.record import document_parts
from curate.media.images import read_image_bytes
from curate.readers.documents import aligned_parts
from curate.readers.read import read_source
from curate.readers.sources import BadSample


def jpeg(color=(200, 10, 10), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def rows_by_key(result) -> dict:
    return {r["key"]: r for r in result.kept.to_pylist() + result.dropped.to_pylist()}


def in_order(row) -> list:
    return [(kind, value if kind == "text" else row["images"][value]["sha256"][:8])
            for kind, value in document_parts(row["text"], row["segments"])]


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_obelics_jsonl_documents_and_rejections(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg())
    (tmp_path / "b.jpg").write_bytes(jpeg((0, 0, 200)))
    write_jsonl(tmp_path / "docs.jsonl", [
        {"id": "good", "texts": ["Intro.", None, "Middle.", None, "End."], "images": [None, "a.jpg", None, "b.jpg", None],
         "general_metadata": "{\"url\": \"https://example.org/p\"}"},
        {"id": "lost-image", "texts": ["Text.", None], "images": [None, "gone.jpg"]},
        {"id": "short", "texts": ["x"], "images": [None, "a.jpg"]},
        {"id": "both", "texts": ["x", "y"], "images": [None, "a.jpg"]},
        {"id": "empty", "texts": ["", None], "images": [None, None]},
        {"id": "not-lists", "texts": "x", "images": None},
    ])
    got = rows_by_key(read_source(str(tmp_path / "docs.jsonl"), "obelics", source="ob"))
    good = got["ob/good"]
    assert good[R.STATUS] == R.KEPT and good["category"] == "interleaved"
    assert good["text"] == "Intro.\n\nMiddle.\n\nEnd."
    assert [k for k, _ in in_order(good)] == ["text", "image", "text", "image", "text"]
    assert [im["uri"].rsplit("/", 1)[-1] for im in good["images"]] == ["a.jpg", "b.jpg"]
    assert json.loads(good["meta"])["general_metadata"].startswith("{")
    assert good["images_removed"] == []
    # an image that cannot be read is removed from a good document and named, the document kept
    lost = got["ob/lost-image"]
    assert lost[R.STATUS] == R.KEPT and lost["images"] == [] and lost["text"] == "Text."
    assert [(r["position"], r["ref"], r["stage"], r["reason"]) for r in lost["images_removed"]] == [
        (0, "gone.jpg", "ingest", "image:missing_file")]
    assert [s["kind"] for s in lost["segments"]] == ["text"]
    for key in ("short", "both", "not-lists"):
        assert (got[f"ob/{key}"][R.STATUS], got[f"ob/{key}"][R.REASON]) == (R.REJECTED, "document:misaligned"), key
    assert got["ob/empty"][R.REASON] == "document:misaligned"   # position 1 holds neither
    write_jsonl(tmp_path / "empty.jsonl", [{"id": "e", "texts": ["", ""], "images": [None, None]}])
    (empty,) = rows_by_key(read_source(str(tmp_path / "empty.jsonl"), "obelics", source="ob")).values()
    assert empty[R.REASON] == "document:empty"


def test_obelics_parquet_bytes_are_referenced_by_cell_and_read_back(tmp_path):
    a, b = jpeg(), jpeg((10, 200, 10), (80, 40))
    table = pa.table({"key": ["p1", "p2"], "texts": [["A", None, "B", None], [None]],
                      "images": [[None, a, None, b], [None]],
                      "source_url": ["u1", "u2"]})
    pq.write_table(table, tmp_path / "docs.parquet")
    got = rows_by_key(read_source(str(tmp_path / "docs.parquet"), "obelics", source="pq"))
    doc = got["pq/p1"]
    assert [im["member"] for im in doc["images"]] == ["row=0;column=images;item=1", "row=0;column=images;item=3"]
    assert [read_image_bytes(im) for im in doc["images"]] == [a, b]
    assert [(im["width"], im["height"]) for im in doc["images"]] == [(64, 48), (80, 40)]
    assert json.loads(doc["meta"]) == {"source_url": "u1"}
    assert got["pq/p2"][R.REASON] == "document:misaligned"
    hf = pa.table({"texts": [[None, "caption"]], "images": [[{"bytes": b, "path": "x.jpg"}, None]]})
    pq.write_table(hf, tmp_path / "hf.parquet")   # the HF datasets Image feature: {bytes, path} structs
    (row,) = read_source(str(tmp_path / "hf.parquet"), "obelics", source="hf").kept.to_pylist()
    assert [read_image_bytes(im) for im in row["images"]] == [b] and row["key"] == "hf/0"


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_mint1t_tar_documents_members_in_order_and_rejections(tmp_path):
    first, second = jpeg(), jpeg((0, 0, 200))
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        add_member(tar, "doc1.json", json.dumps({"texts": ["p1", None, "p2", None], "url": "https://x.org",
                                                 "images": [None, "doc1.1.jpg", None, "0.jpg"]}).encode())
        add_member(tar, "doc1.0.jpg", first)
        add_member(tar, "doc1.1.jpg", second)
        add_member(tar, "doc2.json", json.dumps({"texts": ["p", None], "images": [None, "3.jpg"]}).encode())
        add_member(tar, "doc2.0.jpg", first)
        add_member(tar, "doc3.json", json.dumps({"texts": ["p", None], "images": [None]}).encode())
        add_member(tar, "doc4.0.jpg", first)
    got = rows_by_key(read_source(str(tmp_path / "shard.tar"), "mint1t", source="mt", category="interleaved"))
    doc = got["mt/doc1"]
    assert doc[R.STATUS] == R.KEPT and doc["text"] == "p1\n\np2"
    assert [im["member"] for im in doc["images"]] == ["doc1.1.jpg", "doc1.0.jpg"]   # the JSON's order
    assert [read_image_bytes(im) for im in doc["images"]] == [second, first]
    assert json.loads(doc["meta"]) == {"url": "https://x.org"}
    assert (got["mt/doc2"][R.STATUS], got["mt/doc2"][R.REASON]) == (R.REJECTED, "document:missing_member")
    assert got["mt/doc3"][R.REASON] == "document:misaligned"
    assert got["mt/doc4"][R.REASON] == "document:missing_json"
    assert len(got) == 4   # every key accounted for


def test_llava_multi_image_conversations_are_not_documents(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg())
    write_jsonl(tmp_path / "c.jsonl", [{"id": 1, "images": ["a.jpg", "a.jpg"], "conversations": [
        {"from": "human", "value": "<image><image>Compare."}, {"from": "gpt", "value": "Same."}]}])
    (row,) = read_source(str(tmp_path / "c.jsonl"), "llava", source="c").kept.to_pylist()
    assert len(row["images"]) == 2 and row["segments"] is None and row["images_removed"] is None


entries = st.lists(st.one_of(st.none(), st.text(max_size=3), st.just("img")), max_size=6)


@settings(max_examples=200, deadline=None)
@given(texts=entries, images=entries)
def test_aligned_parts_accepts_exactly_the_aligned_lists(texts, images):
    """Property: aligned_parts returns the parts in order exactly when the lists have equal length and
    one non-null entry per position; otherwise a document:misaligned rejection, never another error."""
    aligned = len(texts) == len(images) and all((t is None) != (i is None) for t, i in zip(texts, images))
    try:
        parts = aligned_parts(texts, images)
    except BadSample as bad:
        assert bad.reason == "document:misaligned" and not aligned
        return
    assert aligned
    assert parts == [("text", t) if t is not None else ("image", i) for t, i in zip(texts, images)]


def test_large_obelics_files_are_read_in_parts_with_the_same_rows(tmp_path, monkeypatch):
    """Ingest splits a large JSONL file by byte ranges and a large parquet file by row groups; the
    documents, keys and ordinals are those of a whole-file read (a JSON array keeps 0-based rows)."""
    from curate.readers import read as RD
    from curate.readers.sources import SourceSpec
    (tmp_path / "a.jpg").write_bytes(jpeg())
    records = [{"id": f"d{i}", "texts": [f"Paragraph {i}.", None], "images": [None, "a.jpg"]} for i in range(40)]
    write_jsonl(tmp_path / "docs.jsonl", records)
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "docs.parquet", row_group_size=7)
    (tmp_path / "docs.json").write_text(json.dumps(records))
    monkeypatch.setattr(RD, "BYTES_PER_PART", 512)
    monkeypatch.setattr(RD, "PARQUET_ROWS_PER_PART", 10)
    for name in ("docs.jsonl", "docs.parquet", "docs.json"):
        spec = SourceSpec(name="ob", path=str(tmp_path / name), format="obelics")
        uri = str(tmp_path / name)
        whole = RD.read_file(spec, uri, 0, 0).to_pylist()
        parts = RD.plan_file_parts(spec, uri)
        assert (len(parts) > 1) == (name != "docs.json"), name
        pieces = [r for part in parts for r in RD.read_file(spec, uri, 0, 0, part=part).to_pylist()]
        assert pieces == whole and len(whole) == 40, name
        assert [r[R.ORDINAL] & ((1 << 31) - 1) for r in whole] == list(range(40)), name
        assert all(r[R.STATUS] == R.KEPT and len(r["images"]) == 1 for r in whole), name
