"""Matching logic of the ocr stage: normalisation keys, word cutting along lines, the one-to-one and
split/merge matching, and the agreement metrics (hypothesis properties plus worked examples)."""
from __future__ import annotations


from hypothesis import given, settings, strategies as st

from curate.ocr.engines import OcrWord, quad_from_box, words_along_line
from curate.ocr.matching import MatchSettings, agreement_metrics, match_words
from curate.ocr.normalize import split_words, word_key

WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
S = MatchSettings(min_overlap=0.5, min_similarity=0.8)


def grid_words(texts: list[str], dx: float = 0.0, dy: float = 0.0, cell: float = 100.0) -> list[OcrWord]:
    """Words in separate grid cells (never overlapping each other), optionally shifted a little."""
    out = []
    for k, t in enumerate(texts):
        x, y = (k % 5) * cell + dx, (k // 5) * cell + dy
        out.append(OcrWord(t, quad_from_box(x, y, x + 60, y + 20), 0.9, k // 5))
    return out


def test_word_key_folds_width_case_punctuation():
    assert word_key("Ｉｎｖｏｉｃｅ:") == word_key("invoice") == "invoice"
    assert word_key("$45.99") == "$4599"          # currency symbols stay: "$45" and "45" differ
    assert word_key("lnvoice", True) == word_key("Invoice", True)
    assert word_key("lnvoice") != word_key("Invoice")


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=30), st.booleans())
def test_word_key_is_idempotent(text, fold):
    assert word_key(word_key(text, fold), fold) == word_key(text, fold)


@given(st.text(alphabet="ab \t", max_size=30))
def test_split_words_offsets_point_at_the_words(text):
    words = split_words(text)
    assert [w for _, _, w in words] == text.split()
    assert all(text[s:e] == w for s, e, w in words)


@given(st.lists(WORD, min_size=1, max_size=6), st.floats(-0.5, 0.5))
def test_words_along_line_tile_the_line_in_order(words, slope):
    text = " ".join(words)
    width = 10.0 * len(text)
    quad = ((0.0, 0.0), (width, slope * width), (width, slope * width + 20), (0.0, 20.0))
    cut = words_along_line(text, quad, 0.8, 3)
    assert [w.text for w in cut] == words and all(w.line == 3 for w in cut)
    xs = [w.quad[0][0] for w in cut]
    assert xs == sorted(xs) and cut[0].quad[0] == quad[0]
    assert abs(cut[-1].quad[1][0] - width) < 1e-6 and abs(cut[-1].quad[1][1] - slope * width) < 1e-6


@settings(max_examples=150, deadline=None)
@given(st.lists(WORD, min_size=1, max_size=15), st.floats(-8, 8), st.floats(-4, 4))
def test_same_words_at_slightly_shifted_boxes_all_agree(texts, dx, dy):
    a, b = grid_words(texts), grid_words(texts, dx, dy)
    agreed = match_words(a, b, S)
    m = agreement_metrics(a, b, agreed)
    assert [(g.first, g.second) for g in agreed] == [((k,), (k,)) for k in range(len(texts))]
    assert m.precision == m.recall == m.f1 == 1.0 and m.char_coverage == 1.0


@settings(max_examples=150, deadline=None)
@given(st.lists(WORD, min_size=1, max_size=10), st.lists(WORD, min_size=1, max_size=10))
def test_words_in_disjoint_places_never_agree(ta, tb):
    a, b = grid_words(ta), grid_words(tb, dy=1000.0)
    assert match_words(a, b, S) == []
    m = agreement_metrics(a, b, [])
    assert m.f1 == 0.0 and m.char_coverage == 0.0


@settings(max_examples=200, deadline=None)
@given(st.lists(WORD, min_size=1, max_size=12), st.lists(st.booleans(), min_size=12, max_size=12),
       st.randoms(use_true_random=False))
def test_matching_is_one_to_one_thresholded_and_symmetric(texts, garble, rnd):
    """Each word agrees at most once, every 1:1 agreement passes both thresholds, swapping the engines
    swaps precision and recall, and the order the second engine lists its words in does not matter."""
    other = [t if not g else t[::-1] + "x" for t, g in zip(texts, garble)]
    a, b = grid_words(texts), grid_words(other, dx=3.0)
    agreed = match_words(a, b, S)
    firsts = [i for g in agreed for i in g.first]
    seconds = [j for g in agreed for j in g.second]
    assert len(firsts) == len(set(firsts)) and len(seconds) == len(set(seconds))
    assert all(g.similarity >= S.min_similarity for g in agreed)
    m = agreement_metrics(a, b, agreed)
    swapped = agreement_metrics(b, a, match_words(b, a, S))
    assert (swapped.precision, swapped.recall, swapped.f1) == (m.recall, m.precision, m.f1)
    order = list(range(len(b)))
    rnd.shuffle(order)
    shuffled = [b[k] for k in order]
    again = match_words(a, shuffled, S)
    assert sorted((g.first, tuple(order[j] for j in g.second)) for g in again) == \
        sorted((g.first, g.second) for g in agreed)


def test_a_merged_word_agrees_with_the_split_words_inside_it():
    merged = [OcrWord("Invoicetotal:", quad_from_box(0, 0, 200, 30), 0.9, 0)]
    split = [OcrWord("Invoice", quad_from_box(2, 4, 110, 26), 0.9, 0),
             OcrWord("total:", quad_from_box(120, 4, 198, 26), 0.9, 0)]
    for first, second in ((merged, split), (split, merged)):
        agreed = match_words(first, second, S)
        assert len(agreed) == 1
        m = agreement_metrics(first, second, agreed)
        assert m.precision == m.recall == 1.0


def test_thresholds_are_respected_at_their_edges():
    a = [OcrWord("abcde", quad_from_box(0, 0, 100, 20), 0.9, 0)]
    b = [OcrWord("abcdf", quad_from_box(50, 0, 150, 20), 0.9, 0)]   # overlap 0.5, similarity 0.8
    assert len(match_words(a, b, MatchSettings(0.5, 0.8))) == 1
    assert match_words(a, b, MatchSettings(0.51, 0.8)) == []
    assert match_words(a, b, MatchSettings(0.5, 0.81)) == []


def test_punctuation_only_words_take_no_part():
    a = [OcrWord("-", quad_from_box(0, 0, 10, 10), 0.9, 0), OcrWord("word", quad_from_box(20, 0, 80, 10), 0.9, 0)]
    b = [OcrWord("word", quad_from_box(20, 0, 80, 10), 0.9, 0)]
    m = agreement_metrics(a, b, match_words(a, b, S))
    assert (m.first_words, m.precision, m.recall) == (1, 1.0, 1.0)


def test_partial_agreement_counts():
    a = grid_words(["alpha", "beta", "gamma", "delta"])
    b = grid_words(["alpha", "beta", "zzzzz"])
    m = agreement_metrics(a, b, match_words(a, b, S))
    assert (m.precision, m.recall) == (0.5, 2 / 3)
    assert abs(m.f1 - 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)) < 1e-12
    assert m.char_coverage == (9 + 9) / (19 + 14)


def test_no_words_gives_no_ratios():
    m = agreement_metrics([], [], [])
    assert (m.precision, m.recall, m.f1, m.char_coverage) == (None, None, None, None)
