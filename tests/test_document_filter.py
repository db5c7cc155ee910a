"""document_filter: the document rules (no text, image count range, images per word, text rules on the
joined text) at their boundaries, in their order, with exact arithmetic, and the stage's accounting."""
from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from curate import base as S
from curate.base import records as R
from curate.documents import document_filter as DF
from curate.documents import record as D
from curate.filters import text_rules as TR
from curate.filters.presets import TEXT_PRESETS


def img(name: str) -> dict:
    return R.image_ref(uri="docs.tar", member=name, width=640, height=480, format="JPEG")


def doc_row(n: int, parts: list, key: str | None = None) -> dict:
    return {"key": key or f"d/{n}", "source": "d", "category": "interleaved", **D.build_document(parts),
            R.ORDINAL: n, R.STATUS: R.KEPT}


def caption_row(n: int, text: str) -> dict:
    return {**R.Sample(key=f"c/{n}", source="c", category="caption", text=text, ordinal=n).to_row(),
            "images": [img(f"c{n}.jpg")]}


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def run(rows: list[dict], **settings_) -> S.BatchResult:
    return S.build("document_filter", settings_).run(R.rows_to_table(rows))


def reasons(result: S.BatchResult) -> dict[str, str]:
    return dict(zip(result.dropped.column("key").to_pylist(), result.dropped.column(R.REASON).to_pylist()))


# --- images per word: exact, inclusive, a partition of every document --------------------------------
# Limits as a recipe writes them (decimals); the oracle reads the decimal, the stage gets the float.
DECIMALS = st.one_of(st.just("0"), st.sampled_from(["0.1", "0.2", "0.3", "0.25", "0.05", "0.3333", "1", "1.5"]),
                     st.builds(lambda n, d: f"{n / d:.6g}", st.integers(1, 60), st.integers(1, 60)))
LIMITS = DECIMALS.map(float)


@settings(max_examples=300, deadline=None)
@given(images=st.integers(0, 40), n_words=st.integers(0, 400), lo=DECIMALS, hi=DECIMALS)
def test_images_per_word_is_exact_and_inclusive(images, n_words, lo, hi):
    limits = DF.DocumentLimits(min_images_per_word=float(lo), max_images_per_word=float(hi))
    ratio = Fraction(images, max(n_words, 1))
    expected_out = (Fraction(lo) and ratio < Fraction(lo)) or (Fraction(hi) and ratio > Fraction(hi))
    drop = DF.ratio_drop(images, n_words, limits)
    assert (drop is not None) == bool(expected_out)
    if drop is not None:
        assert drop.reason == "document:images_per_word" and f"{images} images / {n_words} words" in drop.detail


def test_a_document_exactly_at_the_ratio_limit_stays():
    # float(0.3) lies just below 3/10: the limit is read as the decimal written, so 3/10 is at it
    assert DF.ratio_drop(3, 10, DF.DocumentLimits(max_images_per_word=0.3)) is None
    assert DF.ratio_drop(4, 10, DF.DocumentLimits(max_images_per_word=0.3)) is not None
    assert DF.ratio_drop(1, 10, DF.DocumentLimits(min_images_per_word=0.1)) is None
    assert DF.ratio_drop(1, 11, DF.DocumentLimits(min_images_per_word=0.1)) is not None
    assert DF.ratio_drop(1, 0, DF.DocumentLimits(max_images_per_word=1.0)) is None     # max(words, 1)


DOC_PARTS = st.lists(st.one_of(st.integers(0, 30).map(words), st.builds(lambda i: img(f"{i}.jpg"), st.integers(0, 99))),
                     max_size=10)


@settings(max_examples=80, deadline=None)
@given(docs=st.lists(DOC_PARTS, min_size=1, max_size=12), captions=st.integers(0, 3),
       min_images=st.integers(0, 4), max_images=st.sampled_from([0, 2, 5]), lo=LIMITS, hi=LIMITS)
def test_every_row_is_kept_or_rejected_once_and_kept_documents_satisfy_every_limit(
        docs, captions, min_images, max_images, lo, hi):
    if max_images and min_images > max_images:
        min_images = max_images
    if lo and hi and lo > hi:
        lo, hi = hi, lo
    rows = [doc_row(n, parts) for n, parts in enumerate(docs)]
    rows += [caption_row(len(docs) + i, "") for i in range(captions)]     # not documents: never judged
    out = run(rows, min_images=min_images, max_images=max_images, min_images_per_word=lo, max_images_per_word=hi)
    assert out.kept.num_rows + out.dropped.num_rows == len(rows)
    assert sorted(out.kept.column(R.ORDINAL).to_pylist() + out.dropped.column(R.ORDINAL).to_pylist()) == \
        list(range(len(rows)))
    assert set(out.dropped.column("category").to_pylist()) <= {"interleaved"}
    assert set(reasons(out).values()) <= {"document:no_text", "document:too_few_images",
                                          "document:too_many_images", "document:images_per_word"}
    for row in out.kept.to_pylist():
        if row["category"] != "interleaved":
            continue
        n_images, n_words = len(row["images"]), len(TR.words_of(TR.tokenize(row["text"])))
        ratio = Fraction(n_images, max(n_words, 1))
        assert row["text"].strip()
        assert n_images >= min_images and (not max_images or n_images <= max_images)
        assert (not lo or ratio >= Fraction(repr(lo))) and (not hi or ratio <= Fraction(repr(hi)))


# --- order, counts, reasons -----------------------------------------------------------------------------
def test_rules_run_in_order_and_name_the_first_failure():
    rows = [doc_row(0, [img("a.jpg"), img("b.jpg")]),                   # no text: named before the count
            doc_row(1, ["one two three", img("a.jpg")]),               # too few
            doc_row(2, ["one", img("a.jpg"), img("b.jpg"), img("c.jpg"), img("d.jpg")]),   # too many before ratio
            doc_row(3, ["one two", img("a.jpg"), img("b.jpg")]),       # 2 images / 2 words > 0.5
            doc_row(4, [words(10), img("a.jpg"), words(10), img("b.jpg")])]   # 2/20 = 0.1: stays
    out = run(rows, min_images=2, max_images=3, max_images_per_word=0.5)
    assert reasons(out) == {"d/0": "document:no_text", "d/1": "document:too_few_images",
                            "d/2": "document:too_many_images", "d/3": "document:images_per_word"}
    assert out.kept.column("key").to_pylist() == ["d/4"]
    detail = dict(zip(out.dropped.column("key").to_pylist(), out.dropped.column(R.DETAIL).to_pylist()))
    assert detail["d/1"] == "1 images < 2" and detail["d/3"] == "2 images / 2 words = 1 > 0.5"


def test_by_default_only_a_document_without_text_is_rejected():
    rows = [doc_row(0, [img("a.jpg")]), doc_row(1, ["x", *[img(f"{i}.jpg") for i in range(50)]]), caption_row(2, "")]
    out = run(rows)
    assert reasons(out) == {"d/0": "document:no_text"}
    assert run(rows, require_text=False).dropped.num_rows == 0


def test_images_removed_upstream_are_not_counted():
    """The count is of the images still in the document, after a per-image rule removed some."""
    table = R.rows_to_table([doc_row(0, ["text here", img("a.jpg"), img("b.jpg"), img("c.jpg")])])
    thinned = D.remove_images(table, [[D.Removal(0, "image:blurry"), D.Removal(2, "image:qr_code")]], "image_filter")
    stage = S.build("document_filter", {"min_images": 2})
    assert stage.run(table).kept.num_rows == 1
    out = stage.run(thinned)
    assert reasons(out) == {"d/0": "document:too_few_images"}
    assert len(out.dropped.column("images_removed")[0].as_py()) == 2     # the removal record travels with it


def test_cjk_characters_count_as_words_in_the_ratio():
    assert DF.word_count("天气很好 and sunny") == 6
    rows = [doc_row(0, ["今天天气很好我们去公园散步", img("a.jpg")])]      # 12 characters = 12 words
    assert run(rows, max_images_per_word=0.1).kept.num_rows == 1
    assert run(rows, max_images_per_word=0.05).dropped.num_rows == 1


# --- the text rules are text_filter's, on the joined text ---------------------------------------------
def test_text_rules_judge_the_joined_text_as_text_filter_judges_a_caption():
    repeated = "The same paragraph about the harbour at dawn."
    docs = {"repeat": [repeated, img("a.jpg"), repeated, repeated, img("b.jpg"), repeated],
            "spam": ["Click here to subscribe now", img("a.jpg")],
            "good": ["A harbour at dawn, boats leaving for the day.", img("a.jpg"),
                     "Gulls follow the boats out past the breakwater."]}
    rows = [doc_row(n, parts, key=f"d/{k}") for n, (k, parts) in enumerate(docs.items())]
    assert run(rows).dropped.num_rows == 0                                   # off by default
    out = run(rows, text_rules=True)
    got = reasons(out)
    # text_filter's verdict on a caption with the same text is the document's
    captions = R.rows_to_table([{**caption_row(i, row["text"]), "key": row["key"]} for i, row in enumerate(rows)])
    by_text_filter = reasons(S.build("text_filter", {}).run(captions))
    assert got == by_text_filter and got == {"d/repeat": "text:duplicate_lines", "d/spam": "text:boilerplate"}
    details = out.dropped.column(R.DETAIL).to_pylist()
    assert all(d.startswith("document text: ") for d in details)
    # the preset and overrides are text_filter's own
    without = reasons(run(rows, text_rules=True, max_duplicate_line_ratio=0, max_top_ngram_ratio=0,
                           tail_loop_min_repeats=0))
    assert without == {"d/spam": "text:boilerplate"}
    assert S.build("document_filter", {"text_rules": True, "preset": "lenient"}).text_thresholds == TEXT_PRESETS["lenient"]


@pytest.mark.parametrize("settings_,message", [
    ({"min_images": 3, "max_images": 2}, "min_images: 3 > max_images 2"),
    ({"min_images_per_word": 0.5, "max_images_per_word": 0.1}, "min_images_per_word"),
    ({"max_images": -1}, "max_images: must be >= 0"),
    ({"max_chars": 100}, "max_chars: a text rule setting without text_rules: true has no effect"),
])
def test_bad_settings_are_named(settings_, message):
    with pytest.raises(ValueError, match=message):
        S.build("document_filter", settings_)
