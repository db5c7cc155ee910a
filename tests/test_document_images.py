"""Image rules inside documents (#25 item 3): every image judged on its own, a failing image removed
from its document (recorded, counted in the report, named in images_removed.parquet), the document
kept; single-image samples keep the old behaviour (rejected with the image's reason)."""
from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.base import records as R
from curate.documents.record import build_document, document_parts, removed_image_counts
from curate.filters.image_rules import ImageFilter
from curate.readers.read import read_source


def photo(seed: int, size=(160, 128)) -> bytes:
    import numpy as np
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def corrupt_jpeg() -> bytes:
    """A JPEG cut in half with its end marker put back: the header probes (ingest keeps it), the
    decode fills the rest with grey (image_filter: image:truncated)."""
    good = photo(5)
    return good[:len(good) // 2] + b"\xff\xd9"


def write_docs(tmp_path) -> str:
    (tmp_path / "ok1.jpg").write_bytes(photo(1))
    (tmp_path / "ok2.jpg").write_bytes(photo(2))
    (tmp_path / "tiny.jpg").write_bytes(photo(3, (8, 8)))
    (tmp_path / "broken.jpg").write_bytes(corrupt_jpeg())
    records = [
        {"id": "mixed", "texts": ["Before.", None, "Between.", None, None, "After."],
         "images": [None, "ok1.jpg", None, "tiny.jpg", "broken.jpg", None]},
        {"id": "clean", "texts": [None, "Only text after."], "images": ["ok2.jpg", None]},
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_image_filter_removes_failing_images_from_a_document_and_keeps_it(tmp_path):
    read = read_source(write_docs(tmp_path), "obelics", source="doc")
    result = ImageFilter(preset="default").run(read.kept)
    assert result.dropped.num_rows == 0 and result.kept.num_rows == 2
    mixed = {r["key"]: r for r in result.kept.to_pylist()}["doc/mixed"]
    removed = [(r["position"], r["ref"].rsplit("/", 1)[-1], r["stage"], r["reason"]) for r in mixed["images_removed"]]
    assert removed == [(1, "tiny.jpg", "image_filter", "image:min_side"), (2, "broken.jpg", "image_filter", "image:truncated")]
    assert [im["uri"].rsplit("/", 1)[-1] for im in mixed["images"]] == ["ok1.jpg"]
    assert [(k, v) for k, v in document_parts(mixed["text"], mixed["segments"])] == [
        ("text", "Before."), ("image", 0), ("text", "Between."), ("text", "After.")]
    assert [s["position"] for s in mixed["segments"] if s["kind"] == "image"] == [0]
    assert len(mixed["image_facts"]) == 1   # the facts column stays aligned with the images left
    assert removed_image_counts(result.kept, "image_filter") == {"image:min_side": 1, "image:truncated": 1}


def test_single_image_samples_are_still_rejected_whole(tmp_path):
    (tmp_path / "tiny.jpg").write_bytes(photo(3, (8, 8)))
    rows = [{"key": "s", "source": "s", "category": "caption", "images": [R.image_ref(str(tmp_path / "tiny.jpg"),
             width=8, height=8, format="JPEG")], "text": "a caption", R.ORDINAL: 0, R.STATUS: R.KEPT}]
    table = R.conform(pa.Table.from_pylist(rows), R.BASE_SCHEMA)
    result = ImageFilter(preset="default").run(table)
    assert result.kept.num_rows == 0 and result.dropped.column(R.REASON).to_pylist() == ["image:min_side"]


def test_runner_reports_and_lists_every_removed_image(tmp_path):
    from pipelines.recipe import parse
    from pipelines.runner import run
    source = write_docs(tmp_path)
    recipe = parse({"name": "docs", "seed": 0,
                    "sources": [{"name": "doc", "path": source, "format": "obelics", "category": "interleaved"}],
                    "stages": [{"name": "image_filter", "settings": {"preset": "default"}}]})
    result = run(recipe, tmp_path / "out", executor="inline", progress=False)
    entry = {e["name"]: e for e in result.report["stages"]}["image_filter"]
    assert entry["images_removed"] == {"image:min_side": 1, "image:truncated": 1}
    assert entry["in"] == entry["out"] == 2 and entry["balanced"]
    listed = pq.read_table(tmp_path / "out" / "images_removed.parquet").to_pylist()
    assert [(r["key"], r["position"], r["ref"].rsplit("/", 1)[-1], r["stage"], r["reason"]) for r in listed] == [
        ("doc/mixed", 1, "tiny.jpg", "image_filter", "image:min_side"),
        ("doc/mixed", 2, "broken.jpg", "image_filter", "image:truncated")]
    assert "images_removed" not in {e["name"]: e for e in result.report["stages"]}["ingest"]
    # the same recipe again, fresh and resumed: the same bytes
    first = (tmp_path / "out" / "images_removed.parquet").read_bytes()
    run(recipe, tmp_path / "again", executor="inline", progress=False)
    assert (tmp_path / "again" / "images_removed.parquet").read_bytes() == first
    resumed = run(recipe, tmp_path / "out", executor="inline", progress=False)
    assert (tmp_path / "out" / "images_removed.parquet").read_bytes() == first
    assert {e["name"]: e for e in resumed.report["stages"]}["image_filter"]["images_removed"] == entry["images_removed"]


def test_build_document_round_trips_through_the_filter_unchanged_when_all_pass(tmp_path):
    (tmp_path / "ok.jpg").write_bytes(photo(9))
    doc = build_document(["One.", R.image_ref(str(tmp_path / "ok.jpg"), width=160, height=128, format="JPEG",
                                              size=(tmp_path / "ok.jpg").stat().st_size), "Two."])
    row = {"key": "d", "source": "d", "category": "interleaved", R.ORDINAL: 0, R.STATUS: R.KEPT,
           "images_removed": [], **doc}
    table = R.conform(pa.Table.from_pylist([row]), R.BASE_SCHEMA)
    (out,) = ImageFilter(preset="default").run(table).kept.to_pylist()
    assert out["segments"] == doc["segments"] and out["images_removed"] == [] and out["text"] == doc["text"]


def skimage_photo(name: str) -> dict:
    import os
    skimage = pytest.importorskip("skimage")
    path = os.path.join(os.path.dirname(skimage.__file__), "data", name)
    return R.image_ref(path, width=512, height=512, format="PNG")


def document_table(parts_by_key: dict[str, list]) -> pa.Table:
    rows = []
    for i, (key, parts) in enumerate(parts_by_key.items()):
        rows.append({"key": key, "source": "d", "category": "interleaved", R.ORDINAL: i, R.STATUS: R.KEPT,
                     "images_removed": [], **build_document(parts)})
    return R.conform(pa.Table.from_pylist(rows), R.BASE_SCHEMA)


def test_nsfw_filter_removes_the_unsafe_image_and_rejects_only_on_the_page(tmp_path):
    """The classifier path proven with a class the detector finds in a benign photo (FACE_FEMALE on the
    astronaut, as tests/test_safety.py does); a keyword in the page's text rejects the document."""
    pytest.importorskip("nudenet")
    from curate.base import build
    (tmp_path / "caption.txt").write_text("explicit content\n")
    table = document_table({
        "d/page": ["A page about space.", skimage_photo("astronaut.png"), "And coffee.", skimage_photo("coffee.png")],
        "d/bad-words": ["This holds explicit content.", skimage_photo("coffee.png")],
        "d/missing": ["Text.", R.image_ref(str(tmp_path / "gone.png"), width=512, height=512, format="PNG")],
    })
    stage = build("nsfw_filter", {"unsafe_classes": ["FACE_FEMALE"], "threshold": 0.5,
                                  "caption_keywords_file": str(tmp_path / "caption.txt")})
    result = stage.run(table)
    kept = {r["key"]: r for r in result.kept.to_pylist()}
    assert result.dropped.column(R.REASON).to_pylist() == ["nsfw:caption_keyword"]
    page = kept["d/page"]
    assert [(r["position"], r["reason"]) for r in page["images_removed"]] == [(0, "nsfw:classifier")]
    assert [im["uri"].rsplit("/", 1)[-1] for im in page["images"]] == ["coffee.png"]
    assert page["nsfw_score"] == 0.0   # the highest score among the images left
    missing = kept["d/missing"]
    assert missing["images"] == [] and missing["images_removed"][0]["reason"].startswith("image:unreadable")


def file_ref(path, data: bytes) -> dict:
    path.write_bytes(data)
    from curate.media.images import probe
    header = probe(data)
    return R.image_ref(str(path), width=header.width, height=header.height, format=header.format, size=len(data))


def test_image_dedup_removes_an_image_repeated_inside_a_document_only(tmp_path):
    from curate.base import build
    a, b = file_ref(tmp_path / "a.jpg", photo(1)), file_ref(tmp_path / "b.jpg", photo(2))
    a_again = file_ref(tmp_path / "a2.jpg", photo(1))              # the same bytes under another name
    gone = R.image_ref(str(tmp_path / "gone.jpg"), width=160, height=128, format="JPEG")
    table = document_table({"d/one": ["Intro.", a, "Text.", b, a_again, gone],
                            "d/two": ["Another page with the same pictures.", a, b]})
    result = build("image_dedup", {}).run(table)
    assert result.dropped.num_rows == 0   # pages sharing pictures are not duplicate pages
    kept = {r["key"]: r for r in result.kept.to_pylist()}
    one = kept["d/one"]
    assert [(r["position"], r["reason"]) for r in one["images_removed"]] == [
        (2, "dedup:image_repeated_in_document"), (3, "image:unreadable:missing_file")]
    assert len(one["images"]) == 2 and kept["d/two"]["images_removed"] == []
    # with image_filter's facts carried, the same verdicts without reading again
    filtered = ImageFilter(preset="default").run(table.filter(pa.compute.equal(table.column("key"), "d/two")))
    again = build("image_dedup", {}).run(filtered.kept)
    assert again.kept.column("images_removed").to_pylist() == [[]]


def test_exact_and_text_dedup_work_on_documents(tmp_path):
    from curate.base import build
    a, b = file_ref(tmp_path / "a.jpg", photo(1)), file_ref(tmp_path / "b.jpg", photo(2))
    words = "A long paragraph about the history of the harbour and its lighthouses, " * 3
    table = document_table({"d/1": [words, a, "Second paragraph.", b],
                            "d/2": [words, a, "Second paragraph.", b],         # the same page again
                            "d/3": [words, "Second paragraph.", a, b],         # same parts, other layout
                            "d/4": [words + "Extra words.", b, "Second paragraph!", a]})
    exact = build("exact_dedup", {}).run(table)
    assert exact.dropped.column("key").to_pylist() == ["d/2"]
    assert exact.dropped.column(R.REASON).to_pylist() == ["dedup:exact"]
    near = build("text_dedup", {}).run(exact.kept)   # MinHash over the joined paragraphs
    # the same words make one near-duplicate group; the longest text survives (survivor_by text_length)
    assert sorted(near.dropped.column("key").to_pylist()) == ["d/1", "d/3"]
    assert near.kept.column("key").to_pylist() == ["d/4"]
    assert set(near.dropped.column(R.REASON).to_pylist()) == {"dedup:near_text"}


def test_a_stage_run_twice_counts_each_removal_under_the_run_that_made_it(tmp_path):
    """Two image_filter stages, the second stricter: each reports and lists only its own removals."""
    from pipelines.recipe import parse
    from pipelines.runner import run
    source = write_docs(tmp_path)
    recipe = parse({"name": "twice", "seed": 0,
                    "sources": [{"name": "doc", "path": source, "format": "obelics", "category": "interleaved"}],
                    "stages": [{"name": "image_filter", "settings": {"preset": "default"}},
                               {"name": "text_filter", "settings": {"preset": "default"}},
                               {"name": "image_filter", "settings": {"preset": "default", "min_side": 150}}]})
    result = run(recipe, tmp_path / "out", executor="inline", progress=False)
    first, second = [e for e in result.report["stages"] if e["name"] == "image_filter"]
    assert first["images_removed"] == {"image:min_side": 1, "image:truncated": 1}
    assert second["images_removed"] == {"image:min_side": 2}   # both 160x128 photos: short side < 150
    listed = pq.read_table(tmp_path / "out" / "images_removed.parquet").to_pylist()
    assert [(r["key"], r["position"], r["stage"], r["reason"]) for r in listed] == [
        ("doc/mixed", 1, "image_filter", "image:min_side"), ("doc/mixed", 2, "image_filter", "image:truncated"),
        ("doc/mixed", 0, "image_filter@3", "image:min_side"), ("doc/clean", 0, "image_filter@3", "image:min_side")]
