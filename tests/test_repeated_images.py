"""repeated_images: the global count of every document image's content hash, and the removal of the images
seen more than max_image_repeats times from every document — exact at the limit, recorded per image,
the same on Ray Data (a local Ray, 2 CPUs) as in one process."""
from __future__ import annotations

import hashlib
from collections import Counter

import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from curate import base as S
from curate.base import records as R
from curate.base.global_data import InlineData
from curate.base.inline import global_input, with_bookkeeping
from curate.documents import record as D
from curate.documents import repeated_images as RI


def img(name: str, sha: str | None = "auto", uri: str = "docs.tar") -> dict:
    digest = hashlib.sha256(name.encode()).hexdigest() if sha == "auto" else sha
    return R.image_ref(uri=uri, member=name, width=640, height=480, format="JPEG", sha256=digest)


def on_disk(path) -> dict:
    """A plain file without a recorded sha256 (the step reads and hashes its bytes)."""
    return R.image_ref(uri=str(path), width=640, height=480, format="PNG")


def doc_row(n: int, parts: list) -> dict:
    doc = D.build_document(parts)
    return {"key": f"d/{n}", "source": "d", "category": "interleaved", **doc, R.ORDINAL: n, R.STATUS: R.KEPT,
            "image_tokens": [100 + i for i in range(len(doc["images"]))]}


def table_of(rows: list[dict]) -> pa.Table:
    return R.rows_to_table(rows, R.schema_with({"image_tokens": R.WELL_KNOWN_COLUMNS["image_tokens"]}))


def members(row: dict) -> list[str]:
    return [D.image_ref_name(im).rsplit("/", 1)[-1] for im in row["images"] or []]


def test_an_image_seen_more_than_the_limit_leaves_every_document_and_one_at_the_limit_stays():
    rows = [doc_row(0, ["Intro", img("logo.png"), "text", img("photo0.jpg"), img("icon.png")]),
            doc_row(1, ["Second", img("logo.png"), img("icon.png")]),
            doc_row(2, ["Third", img("photo2.jpg"), img("logo.png"), img("icon.png")]),
            doc_row(3, ["Fourth", img("logo.png")]),
            # a caption with the logo: not a document, neither counted nor changed
            {**R.Sample(key="c/4", source="c", category="caption", text="a logo", ordinal=4).to_row(),
             "images": [img("logo.png")]}]
    out = S.build("repeated_images", {"max_image_repeats": 3}).run(table_of(rows))
    assert out.dropped.num_rows == 0 and out.kept.num_rows == 5
    got = {r["key"]: r for r in out.kept.to_pylist()}
    # logo: 4 times in documents > 3 -> gone from all four; icon: 3 times = the limit -> stays
    assert {k: members(r) for k, r in got.items()} == {
        "d/0": ["photo0.jpg", "icon.png"], "d/1": ["icon.png"], "d/2": ["photo2.jpg", "icon.png"], "d/3": [],
        "c/4": ["logo.png"]}
    # the aligned column lost the same entries; segments renumbered, text untouched
    assert got["d/0"]["image_tokens"] == [101, 102] and got["d/2"]["image_tokens"] == [100, 102]
    assert list(D.document_parts(got["d/0"]["text"], got["d/0"]["segments"])) == [
        ("text", "Intro"), ("text", "text"), ("image", 0), ("image", 1)]
    assert got["d/2"]["images_removed"] == [{
        "position": 1, "ref": "logo.png", "stage": "repeated_images", "reason": "image:repeated",
        "detail": "seen 4 times across the documents (> max_image_repeats 3)"}]
    assert got["c/4"]["images_removed"] is None
    assert D.removed_image_counts(out.kept, "repeated_images") == {"image:repeated": 4}


def test_the_report_counts_without_holding_images():
    rows = [doc_row(n, [f"page {n}", img("pixel.gif"), img(f"own{n}.jpg")]) for n in range(6)]
    stage = S.build("repeated_images", {"max_image_repeats": 2})
    res = stage.run(table_of(rows))
    assert res.report == {"repeated_images": {
        "max_image_repeats": 2, "images_counted": 12, "unhashed_images": 0, "repeated_images": 1,
        "images_removed": 6, "most_seen": 6, "documents_changed": 6}}
    untouched = S.build("repeated_images", {"max_image_repeats": 6})
    out = untouched.run(table_of(rows))
    assert out.report["repeated_images"]["images_removed"] == 0
    assert [members(r) for r in out.kept.to_pylist()] == [["pixel.gif", f"own{n}.jpg"] for n in range(6)]


def test_references_without_a_sha256_are_hashed_from_their_bytes_and_unreadable_ones_stay(tmp_path):
    same = b"\x89PNG same bytes under two names"
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(same)
    (tmp_path / "c.png").write_bytes(b"other bytes")
    rows = [doc_row(0, ["x", on_disk(tmp_path / "a.png"), on_disk(tmp_path / "gone.png")]),
            doc_row(1, ["y", on_disk(tmp_path / "b.png"), on_disk(tmp_path / "c.png")]),
            doc_row(2, ["z", img("a.png", sha=hashlib.sha256(same).hexdigest())])]   # recorded digest, same bytes
    stage = S.build("repeated_images", {"max_image_repeats": 2})
    out = stage.run(table_of(rows))
    assert [members(r) for r in out.kept.to_pylist()] == [["gone.png"], ["c.png"], []]
    assert out.report["repeated_images"]["unhashed_images"] == 1
    assert out.report["repeated_images"]["images_removed"] == 3


POOL = [f"i{k}.jpg" for k in range(8)]


@settings(max_examples=60, deadline=None)
@given(docs=st.lists(st.lists(st.one_of(st.sampled_from(POOL), st.just("para")), max_size=8), min_size=1, max_size=10),
       limit=st.integers(1, 5), chunk=st.integers(1, 4))
def test_any_corpus_removes_exactly_the_images_counted_over_the_limit(docs, limit, chunk):
    rows = [doc_row(n, [p if p == "para" else img(p) for p in parts]) for n, parts in enumerate(docs)]
    counts = Counter(p for parts in docs for p in parts if p != "para")
    stage = S.build("repeated_images", {"max_image_repeats": limit})
    inputs = global_input(stage, with_bookkeeping(table_of(rows)))
    decided = InlineData([inputs.slice(i, chunk) for i in range(0, inputs.num_rows, chunk)])
    step = stage.global_step(decided)
    out = step.decisions.gather().sort_by(R.ORDINAL).to_pylist()
    if all(c <= limit for c in counts.values()):
        assert [r[R.ORDINAL] for r in out] == list(range(len(docs))) and set(out[0]) == {R.ORDINAL, R.STATUS, R.REASON, R.DETAIL}
        return
    for parts, row in zip(docs, out):
        images = [p for p in parts if p != "para"]
        assert row[R.STATUS] == R.KEPT
        assert members(row) == [p for p in images if counts[p] <= limit]
        removed = row["images_removed"] or []
        assert [(r["position"], r["ref"]) for r in removed] == [(i, p) for i, p in enumerate(images) if counts[p] > limit]
        assert row["image_tokens"] == [100 + i for i, p in enumerate(images) if counts[p] <= limit]
    assert step.report["repeated_images"]["images_removed"] == sum(c for c in counts.values() if c > limit)


@pytest.mark.parametrize("settings_,message", [({"max_image_repeats": 0}, "max_image_repeats: must be >= 1"),
                                               ({"partitions": -1}, "partitions: must be >= 0")])
def test_bad_settings_are_named(settings_, message):
    with pytest.raises(ValueError, match=message):
        S.build("repeated_images", settings_)


def _corpus() -> pa.Table:
    rows = []
    for n in range(60):
        parts = [f"page {n}", img("logo.png"), f"body {n}", img(f"photo{n % 23}.jpg")]
        if n % 3 == 0:
            parts += [img("share.png")]
        rows.append(doc_row(n, parts))
    rows.append({**R.Sample(key="c/60", source="c", category="caption", text="cap", ordinal=60).to_row(),
                 "images": [img("logo.png")]})
    return with_bookkeeping(table_of(rows))


def test_on_ray_data_the_documents_are_the_same_as_in_one_process(monkeypatch):
    """Several blocks, several shuffle partitions, a real Ray shuffle: the same decisions, byte for byte."""
    ray = pytest.importorskip("ray")
    from pipelines.engine.ray_data import RayData
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    stage = S.build("repeated_images", {"max_image_repeats": 2, "partitions": 3})
    inputs = global_input(stage, _corpus())
    chunks = [inputs.slice(i, 13) for i in range(0, inputs.num_rows, 13)]
    inline_step = stage.global_step(InlineData(chunks))
    inline, inline_report = inline_step.decisions.gather().sort_by(R.ORDINAL), inline_step.report
    assert inline_report["repeated_images"]["images_removed"] == 60 + 20 + 3 * 14   # logo, share, photos 0..13 (3 times each)
    started = not ray.is_initialized()
    if started:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        import ray.data
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        monkeypatch.setattr(ctx, "shuffle_strategy", "sort_shuffle_pull_based")
        ray_step = stage.global_step(RayData(ray.data.from_arrow(chunks)))
        on_ray = ray_step.decisions.gather().sort_by(R.ORDINAL)
        assert on_ray.equals(inline.select(on_ray.column_names)) and on_ray.column_names == inline.column_names
        assert ray_step.report == inline_report
    finally:
        if started:
            ray.shutdown()


def test_the_step_never_brings_the_images_or_the_documents_to_the_driver():
    """On a driver that may not gather and whose aggregates may hand it fewer rows than the corpus has
    documents: the same decisions (the count and the join are shuffles; the driver gets sums)."""
    from tests.test_global_steps import BoundedDriver
    stage = S.build("repeated_images", {"max_image_repeats": 2, "partitions": 4})
    inputs = global_input(stage, _corpus())
    chunks = [inputs.slice(i, 7) for i in range(0, inputs.num_rows, 7)]
    free_step = stage.global_step(InlineData(chunks))
    free, report = free_step.decisions.gather().sort_by(R.ORDINAL), free_step.report
    bounded_step = stage.global_step(BoundedDriver(chunks, limit=inputs.num_rows // 4))
    bounded = bounded_step.decisions
    assert pa.concat_tables([t for t in bounded.tables if t.num_rows]).sort_by(R.ORDINAL).equals(free)
    assert bounded_step.report == report
