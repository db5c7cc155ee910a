"""The interleaved-document record: building segments, and taking images out while keeping every
image-aligned column, the segment order and the removal record consistent."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from curate.base import records as R
from curate.documents import record as D


def _img(name: str) -> dict:
    return R.image_ref(uri="docs.tar", member=name, width=64, height=48, format="JPEG")


def _table(parts_per_doc):
    rows = []
    for n, parts in enumerate(parts_per_doc):
        doc = D.build_document(parts)
        rows.append({"key": f"d/{n}", "source": "d", "category": "interleaved", **doc,
                     R.ORDINAL: n, R.STATUS: R.KEPT, "image_tokens": [7] * len(doc["images"])})
    return R.rows_to_table(rows, R.schema_with({"image_tokens": R.WELL_KNOWN_COLUMNS["image_tokens"]}))


def test_a_document_reads_back_in_order_with_its_paragraphs_and_images():
    doc = D.build_document(["Intro.", _img("a.jpg"), "", "Body text.", _img("b.png")])
    assert doc["text"] == "Intro.\n\nBody text."
    assert list(D.document_parts(doc["text"], doc["segments"])) == [
        ("text", "Intro."), ("image", 0), ("text", "Body text."), ("image", 1)]


def test_removing_an_image_keeps_the_other_columns_aligned_and_records_the_removal():
    t = _table([["p1", _img("a.jpg"), "p2", _img("b.jpg"), _img("c.jpg")], ["only text"]])
    out = D.remove_images(t, [[D.Removal(1, "blurry", "var=3.1")], []], stage="image_filter")
    row = out.to_pylist()[0]
    assert [im["member"] for im in row["images"]] == ["a.jpg", "c.jpg"]
    assert row["image_tokens"] == [7, 7]
    assert [(s["kind"], s["image"], s["position"]) for s in row["segments"]] == [
        ("text", None, None), ("image", 0, 0), ("text", None, None), ("image", 1, 2)]
    assert row["images_removed"] == [{"position": 1, "ref": "b.jpg", "stage": "image_filter",
                                      "reason": "blurry", "detail": "var=3.1"}]
    # a second removal reports the position the document gave, not the current index
    again = D.remove_images(out, [[D.Removal(1, "repeated_image")], []], stage="repeated_images")
    assert [r["position"] for r in again.to_pylist()[0]["images_removed"]] == [1, 2]
    assert D.removed_image_counts(again) == {"blurry": 1, "repeated_image": 1}
    assert out.to_pylist()[1] == t.to_pylist()[1]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=5), st.just(None)), max_size=12), st.data())
def test_any_removal_keeps_order_and_accounts_for_every_image(layout, data):
    parts = [_img(f"{i}.jpg") if p is None else p for i, p in enumerate(layout)]
    t = _table([parts])
    n = t.column("images")[0].as_py().__len__()
    drop = sorted(data.draw(st.sets(st.integers(0, max(n - 1, 0)), max_size=n)) if n else [])
    out = D.remove_images(t, [[D.Removal(i, "r") for i in drop]], stage="s").to_pylist()[0]
    before = [im["member"] for im in t.column("images")[0].as_py()]
    assert [im["member"] for im in out["images"]] == [m for i, m in enumerate(before) if i not in drop]
    assert sorted(r["position"] for r in out["images_removed"] or []) == drop
    kept_positions = [s["position"] for s in out["segments"] if s["kind"] == "image"]
    assert kept_positions == [i for i in range(n) if i not in drop]
    assert [s["image"] for s in out["segments"] if s["kind"] == "image"] == list(range(n - len(drop)))
    assert [p for k, p in D.document_parts(out["text"], out["segments"]) if k == "text"] == [p for p in parts if isinstance(p, str) and p]
