"""The vectorised text screen (curate.filters.text_screen): it clears only captions that no text rule
drops, so text_filter's verdicts, reasons and details are the same with and without it — and it does
clear ordinary captions (a screen that clears nothing would pass the first check and save nothing)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.base import records as R
from curate.filters import text_rules as TR
from curate.filters.presets import TEXT_PRESETS, TextThresholds
from curate.filters.text_screen import cleared

DEFAULT = TEXT_PRESETS["default"]
CONVERSATIONS = R.BASE_SCHEMA.field("conversations").type
# Words that reach every rule: spam phrases' first words and their continuations, generic words and
# stopwords, digits, an underscore word, marks; and what the screen must leave to the rules.
WORDS = ("dog cat red bus a the of photo stock image free click here download now buy shop all rights "
         "reserved 4k 2024 12 x_y lorem ipsum no preview available").split()
MARKS = list("!.,$#%&*()-_'\"?:;@[]^`{}~+=/\\")
ODD = ["\n", "\t", "<b>", "</b>", "|", "é", "日本", "  ", "\x1c", "<|box_start|>", "---|---"]


def _batch(texts: list[str | None], turns: list[list[dict] | None] | None = None) -> pa.Table:
    return pa.table({"text": pa.array(texts, pa.string()),
                     "conversations": pa.array(turns or [None] * len(texts), CONVERSATIONS)})


def _same_verdicts(batch: pa.Table, th: TextThresholds) -> np.ndarray:
    """The screened and unscreened verdicts agree, and every cleared row is kept by the rules."""
    screened = TR.batch_verdicts(batch, th, screen=True)
    plain = TR.batch_verdicts(batch, th, screen=False)
    assert screened == plain
    sure = cleared(batch.column("text"), batch.column("conversations"), th)
    assert all(plain[i] is None for i in np.flatnonzero(sure)), [plain[i] for i in np.flatnonzero(sure)]
    return sure


piece = st.one_of(st.sampled_from(WORDS), st.sampled_from(MARKS), st.sampled_from(ODD),
                  st.text(alphabet="abcXYZ09 _!.", max_size=6))


@st.composite
def captions(draw) -> str:
    head = draw(st.lists(piece, max_size=25))
    unit = draw(st.lists(st.one_of(st.sampled_from(WORDS), st.sampled_from(MARKS)), min_size=1, max_size=5))
    loop = unit * draw(st.integers(0, 6))       # often a tail loop, of any period, after any head
    seps = draw(st.sampled_from([" ", "", "  ", " , "]))
    return draw(st.sampled_from([" ", ""])) + seps.join(head + loop) + draw(st.sampled_from(["", " ", "."]))


thresholds = st.one_of(
    st.sampled_from(list(TEXT_PRESETS.values())),
    st.builds(TextThresholds, min_caption_words=st.integers(0, 5), min_caption_chars=st.integers(0, 12),
              max_chars=st.integers(0, 200), max_symbol_ratio=st.sampled_from([0.0, 0.1, 0.3, 0.5]),
              max_digit_ratio=st.sampled_from([0.0, 0.2, 0.5]), ratio_min_chars=st.integers(0, 15),
              boilerplate_max_words=st.integers(0, 50), max_top_ngram_ratio=st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3]),
              ngram_min_repeats=st.integers(0, 4), max_duplicate_line_ratio=st.sampled_from([0.0, 0.3]),
              duplicate_lines_min_lines=st.integers(0, 3), tail_loop_min_repeats=st.integers(0, 4),
              tail_loop_min_tokens=st.integers(0, 20)))


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.one_of(captions(), st.none()), min_size=1, max_size=30), th=thresholds,
       with_turns=st.lists(st.booleans(), min_size=30, max_size=30))
def test_property_screened_verdicts_equal_the_rules_verdicts(texts, th, with_turns):
    turns = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": t or "Yes"}] if w else None
             for t, w in zip(texts, with_turns)]
    _same_verdicts(_batch(texts, turns), th)


@settings(max_examples=100, deadline=None)
@given(unit=st.lists(st.sampled_from(WORDS + MARKS), min_size=1, max_size=8), copies=st.integers(1, 8),
       head=st.lists(st.sampled_from(WORDS), max_size=8), th=thresholds)
def test_property_tail_loops_of_every_period_reach_the_rules(unit, copies, head, th):
    """The tail-loop screen is exact: any text find_tail_loop flags is left uncleared."""
    text = " ".join(head + unit * copies)
    if not text.strip():
        return
    sure = _same_verdicts(_batch([text]), th)
    tokens = TR.tokenize(text.strip().lower())
    if th.tail_loop_min_repeats and th.tail_loop_min_tokens and \
            TR.find_tail_loop(tokens, th.tail_loop_min_repeats, th.tail_loop_min_tokens) is not None:
        assert not sure[0]


def test_ordinary_captions_are_cleared_without_the_rules():
    texts = ["A red double-decker bus parked near an old stone bridge at sunset.",
             "Two dogs playing fetch on a sandy beach, with waves in the background!",
             "Chart: monthly sales (2019-2023) for the north and south regions; Q3 peaks at 41%.",
             "a cat sleeping on a sofa next to a window"]
    assert _same_verdicts(_batch(texts), DEFAULT).all()


OFF = dataclasses.replace(DEFAULT, min_caption_words=0, min_caption_chars=0, max_chars=0, max_symbol_ratio=0.0,
                          max_digit_ratio=0.0, boilerplate_max_words=0, max_top_ngram_ratio=0.0,
                          max_duplicate_line_ratio=0.0, tail_loop_min_repeats=0)
ONE_RULE = [   # (the one rule on, its limits as in the default preset, a caption it drops)
    ("text:symbol_ratio", {"max_symbol_ratio": DEFAULT.max_symbol_ratio}, "$$$ ### !!! %%% &&& *** dog"),
    ("text:digit_ratio", {"max_digit_ratio": DEFAULT.max_digit_ratio}, "a 123456789 987654321"),
    ("text:too_short", {"min_caption_words": 3}, "two dogs"),
    ("text:too_short", {"min_caption_chars": 5}, "a b c"),
    ("text:too_long", {"max_chars": 20}, "a dog on a sofa by a window"),
    ("text:boilerplate", {"boilerplate_max_words": 40}, "Click here to enlarge the dog"),
    ("text:boilerplate", {"boilerplate_max_words": 40}, "stock photo wallpaper"),
    ("text:tail_loop", {"tail_loop_min_repeats": 3, "tail_loop_min_tokens": 12},
     "A dog in a park and then and then and then and then and then and then"),
    ("text:repeated_ngrams", {"max_top_ngram_ratio": 0.2},
     "an astronaut in space an astronaut in space an astronaut in space an astronaut in space"),
]


def test_each_rules_screen_leaves_what_that_rule_drops_to_it():
    """One rule on at a time, so no other rule's screen can be what sends the caption to the rules."""
    for reason, limits, text in ONE_RULE:
        th = dataclasses.replace(OFF, **limits)
        batch = _batch([text, "two dogs on a sofa"])
        sure = _same_verdicts(batch, th)
        assert list(sure) == [False, True], (reason, text)
        assert TR.batch_verdicts(batch, th)[0].reason == reason


def test_rows_the_screen_does_not_model_go_to_the_rules():
    texts = ["A dog\non a sofa", "<ref>a dog</ref> on a sofa", "| a | b |\n|---|---|", "Un café sur la table",
             None, "   ", "a dog on a sofa"]
    turns = [None] * 6 + [[{"role": "assistant", "content": "a dog on a sofa"}]]
    sure = _same_verdicts(_batch(texts, turns), DEFAULT)
    assert not sure.any()


def test_rules_turned_off_by_zero_stay_off_in_the_screen():
    off = dataclasses.replace(DEFAULT, min_caption_words=0, min_caption_chars=0, boilerplate_max_words=0,
                              tail_loop_min_repeats=0, max_top_ngram_ratio=0.0, max_symbol_ratio=0.0)
    texts = ["dog", "Click here to buy now", "$$$ ### !!! %%% &&& ***", "and then " * 10]
    assert _same_verdicts(_batch(texts), off).all()


def test_all_null_columns_typed_null_are_left_to_the_rules_or_read_as_no_turns():
    """Ray may type an all-null column as null: no texts means no screen; no turns means captions."""
    nothing = pa.table({"text": pa.nulls(2), "conversations": pa.nulls(2)})
    assert not cleared(nothing.column("text"), nothing.column("conversations"), DEFAULT).any()
    assert [d.reason for d in TR.batch_verdicts(nothing, DEFAULT)] == ["text:empty", "text:empty"]
    captions_only = pa.table({"text": ["a dog on a sofa", "dog"], "conversations": pa.nulls(2)})
    assert list(cleared(captions_only.column("text"), captions_only.column("conversations"), DEFAULT)) == [True, False]
    assert TR.batch_verdicts(captions_only, DEFAULT) == TR.batch_verdicts(captions_only, DEFAULT, screen=False)
