"""text_filter: each rule at its boundary, rule order, captions vs assistant answers, the stage."""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.base import records as R
from curate import base as S
from curate.filters import text_rules as TR
from curate.filters.presets import TEXT_PRESETS, TextThresholds

DEFAULT = TEXT_PRESETS["default"]
HEAD = ("This photograph shows a quiet harbour at dawn where fishing boats rest beside weathered wooden piers "
        "while gulls circle above calm grey water and distant hills fade into morning mist.")


def reason(text, kind="caption", th: TextThresholds = DEFAULT, **kw):
    drop = TR.check_text(text, th, kind, **kw)
    return drop.reason if drop else None


# --- empty and length ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [None, "", "   ", " \n\t "])
@pytest.mark.parametrize("kind", ["caption", "answer"])
def test_empty(text, kind):
    assert reason(text, kind) == "text:empty"


@pytest.mark.parametrize("text,expected", [
    ("big cat", None), ("cat", "text:too_short"),             # 2 words is the minimum
    ("a b c", "text:too_short"), ("ab cde", None),            # 5 non-space characters is the minimum
    ("一只猫坐在沙发上", None), ("一只猫", "text:too_short"),     # CJK characters count as words
])
def test_caption_length_minimums(text, expected):
    assert reason(text) == expected


def test_answers_are_exempt_from_minimum_length():
    assert reason("B", "answer") is None
    assert reason("Yes", "answer") is None


def test_max_chars_boundary():
    th = dataclasses.replace(DEFAULT, max_chars=100)
    words = " ".join(f"w{i:02d}" for i in range(25))    # 99 characters
    assert reason(words + "x", th=th) is None           # 100
    assert reason(words + "xy", th=th) == "text:too_long"


# --- non-linguistic ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("ab cd!!!!!!", None),                        # 6/10 symbols = the limit
    ("ab c!!!!!!!", "text:symbol_ratio"),         # 7/10
    ("$$$ ### !!! %%% &&& *** @@@ ^^^ ~~~", "text:symbol_ratio"),
    ("$$$ ### !!! 12345", "text:symbol_ratio"),   # named non-linguistic, not "too short"
])
def test_symbol_ratio_boundary(text, expected):
    assert reason(text, "answer") == expected
    assert reason(text, "caption") == expected


def test_ratio_rules_skip_short_texts():
    assert reason("!!!!!!!!!", "answer") is None          # 9 characters < ratio_min_chars=10
    assert reason("!!!!!!!!!!", "answer") == "text:symbol_ratio"
    assert reason("12.5%", "answer") is None


@pytest.mark.parametrize("text,expected", [("ab 12345678", None), ("a 123456789", "text:digit_ratio")])
def test_digit_ratio_boundary_on_captions(text, expected):
    assert reason(text) == expected


def test_digit_ratio_does_not_judge_answers():
    assert reason("555-123-4567 and 555-987-6543", "answer") is None
    assert reason("12.5%, 13.7%, 15.2%", "answer") is None


def test_tables_and_formulas_are_linguistic_enough():
    table = "| Year | Sales |\n|------|:-----:|\n| 2020 | 15 |\n| 2021 | 17 |\n| 2022 | 21 |"
    assert reason(table, "answer") is None
    assert reason(r"$\int_0^1 x^2 dx = \frac{1}{3}$", "answer") is None
    assert reason("f(x) = (x+1)^2 - 3(x-1)", "answer") is None


# --- boilerplate -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "Click here to subscribe. All rights reserved. Stock photo, royalty free image, download now.",
    "Click here to subscribe", "stock photo image", "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "IMG_0042.jpg photo", "Shutterstock royalty free vector", "No image available for this product",
])
def test_boilerplate_captions(text):
    assert reason(text) == "text:boilerplate"


def test_descriptive_captions_that_mention_stock_stay():
    assert reason("A stock photo of a cat sleeping on a sofa") is None


def test_boilerplate_only_condemns_short_texts():
    filler = " ".join(f"w{i}" for i in range(38))
    assert reason("click here " + filler) == "text:boilerplate"          # 40 words
    assert reason("click here " + filler + " more") is None             # 41 words


def test_boilerplate_is_off_for_answers_by_default():
    assert reason("Click here to subscribe", "answer") is None
    assert reason("Click here to subscribe", "answer", boilerplate=True) == "text:boilerplate"


# --- loops and repetition ------------------------------------------------------------------------------
def test_looping_answer_is_a_tail_loop():
    text = ("This is a cup of coffee on a saucer. The foam forms a leaf pattern and a spoon rests beside it. "
            + "And then the coffee. " * 40)
    drop = TR.check_text(text, DEFAULT, "answer")
    assert drop.reason == "text:tail_loop" and "40 copies" in drop.detail


@pytest.mark.parametrize("copies,expected", [(3, "text:tail_loop"), (2, None)])
def test_tail_loop_min_repeats_boundary(copies, expected):
    # unit "and so on ." is 4 tokens: 3 copies = 12 tokens = tail_loop_min_tokens
    assert reason(HEAD + " and so on." * copies, "answer") == expected


def test_tail_loop_min_tokens_boundary():
    # unit "so on ." is 3 tokens: 4 copies = 12 tokens, 3 copies = 9 tokens
    assert reason(HEAD + " so on." * 4, "answer") == "text:tail_loop"
    assert reason(HEAD + " so on." * 3, "answer") is None


def test_cjk_character_loop():
    assert reason("这是一张照片，里面有一只猫在睡觉。" + "哈" * 20, "answer") == "text:tail_loop"


def test_whole_text_loops_are_repeated_ngrams():
    assert reason(("an astronaut in space " * 30).strip()) == "text:repeated_ngrams"
    assert reason("the cat the cat the cat") == "text:repeated_ngrams"
    # long unit, few copies: n-gram coverage stays low, the loop detector names it
    unit = " ".join(f"w{i}" for i in range(20))
    drop = TR.check_text(" ".join([unit] * 3), DEFAULT, "answer")
    assert drop.reason == "text:repeated_ngrams" and "whole text" in drop.detail


def test_ngram_needs_enough_repeats():
    assert reason("A dog sitting next to a dog bed") is None
    th = dataclasses.replace(DEFAULT, ngram_min_repeats=2)
    assert reason("A dog sitting next to a dog bed", th=th) == "text:repeated_ngrams"


def test_top_ngram_coverage_is_gopher_style():
    words = "the cat sat on the cat mat".split()
    top = TR.top_ngram(words, 2)
    assert top.ngram == ("the", "cat") and top.count == 2
    assert top.coverage == pytest.approx(2 * 6 / sum(len(w) for w in words))


@pytest.mark.parametrize("dups,expected", [(3, None), (4, "text:duplicate_lines")])
def test_duplicate_lines_boundary(dups, expected):
    unique = ["Open the lid of the kettle carefully", "Pour fresh cold water up to the marked line",
              "Close the lid until it clicks into place", "Press the switch at the base of the handle",
              "Wait about three minutes for the water", "Pour the boiling water over the tea leaves"]
    lines = []
    for i in range(10 - dups - 1):        # one repeated line interleaved with the unique ones (no tail loop)
        lines.append(unique[i])
        if len(lines) < 2 * (dups + 1):
            lines.append("Careful!")
    lines += ["Careful!"] * (dups + 1 - lines.count("Careful!"))
    assert len(lines) == 10 and lines.count("Careful!") == dups + 1
    assert TR.duplicate_line_ratio("\n".join(lines)) == (pytest.approx(dups / 10), 10)
    assert reason("\n".join(lines), "answer") == expected


def test_find_tail_loop_extends_over_partial_copies():
    toks = TR.tokenize("cat the cat the cat the cat")
    loop = TR.find_tail_loop(toks, 3, 4)
    assert (loop.period, loop.start) == (2, 0)
    assert TR.find_tail_loop(TR.tokenize("one two three four"), 2, 2) is None


@settings(max_examples=60, deadline=None)
@given(unit=st.lists(st.sampled_from("alpha beta gamma delta eps zeta eta theta".split()), min_size=1, max_size=6),
       copies=st.integers(3, 8))
def test_property_any_exact_tail_loop_is_found(unit, copies):
    toks = HEAD.lower().replace(".", " .").split() + unit * copies
    loop = TR.find_tail_loop(toks, 3, len(unit) * copies)
    assert loop is not None and len(toks) - loop.start >= len(unit) * copies


@settings(max_examples=200, deadline=None)
@given(words=st.lists(st.sampled_from("a dog cat on the mat big red".split()), max_size=30), times=st.integers(2, 5))
def test_property_the_ngram_gate_skips_only_texts_no_ngram_rule_could_reject(words, times):
    """Skipping the n-gram rule when no word occurs `times` times never changes a verdict."""
    if not TR.some_word_occurs(words, times):
        for n in (2, 3, 4):
            top = TR.top_ngram(words, n)
            assert top is None or top.count < times
    text = " ".join(words)
    ungated = dataclasses.replace(DEFAULT, ngram_min_repeats=times)
    verdict = TR.check_text(text, ungated)
    if verdict is not None and verdict.reason == "text:repeated_ngrams" and "whole text" not in (verdict.detail or ""):
        assert TR.some_word_occurs(TR.words_of(TR.tokenize(text)), times)


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=300))
def test_property_rules_never_raise_and_are_deterministic(text):
    for kind in ("caption", "answer"):
        a, b = TR.check_text(text, DEFAULT, kind), TR.check_text(text, DEFAULT, kind)
        assert a == b
        assert a is None or a.reason.startswith("text:")


# --- samples and the stage ---------------------------------------------------------------------------
def conv(*turns):
    return [{"role": r, "content": c} for r, c in turns]


def test_check_sample_judges_every_assistant_turn():
    good = conv(("user", "<image>\nWhat is this?"), ("assistant", "A cup of coffee."),
                ("user", "Is it hot?"), ("assistant", "Yes"))
    assert TR.check_sample(None, good, DEFAULT) is None
    bad = good[:3] + conv(("assistant", HEAD + " and so on." * 5))
    drop = TR.check_sample(None, bad, DEFAULT)
    assert drop.reason == "text:tail_loop" and drop.detail.startswith("turn 4 (assistant)")
    assert TR.check_sample(None, conv(("user", "hi")), DEFAULT).reason == "text:empty"
    assert TR.check_sample(None, conv(("user", "q"), ("assistant", "  ")), DEFAULT).reason == "text:empty"
    assert TR.check_sample("   ", None, DEFAULT).reason == "text:empty"


def test_stage_rejects_planted_cases_and_keeps_good_ones():
    cases = {
        "good": ("An astronaut in a white spacesuit posing in front of an American flag.", None),
        "empty": ("", None), "blank": ("   \n\t ", None),
        "symbols": ("$$$ ### !!! %%% &&& *** @@@ ^^^ ~~~", None),
        "loop": (("an astronaut in space " * 30).strip(), None),
        "boiler": ("Click here to subscribe. All rights reserved. Stock photo, royalty free image, download now.", None),
        "qa": (None, conv(("user", "<image>\nWhat is it?"), ("assistant", "A cat."))),
        "qa-loop": (None, conv(("user", "<image>\nExplain."), ("assistant", HEAD + " And then the coffee." * 40))),
        "no-text": (None, None),
    }
    rows = []
    for i, (key, (text, turns)) in enumerate(cases.items()):
        rows.append(R.Sample(key=key, source="s", category="caption", text=text, conversations=turns,
                             ordinal=i).to_row())
    result = S.build("text_filter", {}).run(R.rows_to_table(rows), batch_size=4)
    got = dict(zip(result.dropped.column("key").to_pylist(), result.dropped.column(R.REASON).to_pylist()))
    assert got == {"empty": "text:empty", "blank": "text:empty", "symbols": "text:symbol_ratio",
                   "loop": "text:repeated_ngrams", "boiler": "text:boilerplate", "qa-loop": "text:tail_loop",
                   "no-text": "text:empty"}
    assert sorted(result.kept.column("key").to_pylist()) == ["good", "qa"]
    assert set(result.dropped.column(R.STATUS).to_pylist()) == {R.REJECTED}


def test_presets_and_overrides():
    assert TR.TextFilter(preset="datacomp_basic").thresholds.min_caption_words == 3
    stage = TR.TextFilter(preset="datacomp_basic", min_caption_words=1)
    assert stage.thresholds.min_caption_words == 1
    assert reason("two words", th=TR.TextFilter(preset="datacomp_basic").thresholds) == "text:too_short"
    with pytest.raises(ValueError, match="preset"):
        TR.TextFilter(preset="strict-ish")
    with pytest.raises(ValueError, match="max_chars"):
        TR.TextFilter(max_chars=-5)


def test_grounding_markup_is_not_judged_as_language():
    detection = ", ".join(f"<|object_ref_start|>{o}<|object_ref_end|><|box_start|>({a:03d},{b:03d}),({c:03d},{d:03d})"
                          "<|box_end|>" for o, a, b, c, d in [("chair", 563, 315, 758, 647), ("cat", 106, 67, 345, 245),
                                                              ("cup", 315, 689, 576, 928)])
    assert reason(detection, "answer") is None
    assert reason("<ref>the cat</ref><box>[[120, 44, 380, 290]]</box>", "answer") is None
    assert reason("<|box_start|><|box_end|>", "answer") is None          # nothing left to judge: the grounding check's job
    assert reason("<|box_start|><|box_end|>", "caption") == "text:empty"


# --- settings declared once, choices checked in one place ------------------------------------------------
def test_every_threshold_is_a_setting_with_its_doc_and_configs_pickle():
    import pickle
    from curate.filters import image_rules as IR
    from curate.filters.presets import ImageThresholds
    for stage_cls, thresholds in ((TR.TextFilter, TextThresholds), (IR.ImageFilter, ImageThresholds)):
        props = stage_cls.settings_schema()["properties"]
        for f in dataclasses.fields(thresholds):
            assert props[f.name]["description"].startswith(f.metadata["doc"]) and props[f.name]["default"] is None
        assert props["preset"]["enum"] == ["default", "datacomp_basic", "lenient"]
        config = stage_cls(preset="lenient").config
        assert pickle.loads(pickle.dumps(config)) == config


def test_literal_choices_are_checked_for_every_stage_naming_the_setting():
    from curate.base.config_schema import check_config as check_choices

    @dataclasses.dataclass
    class Cfg:
        mode: Literal["a", "b"] = "a"
        maybe: Optional[Literal["x"]] = None
        n: Optional[int] = None
    check_choices(Cfg())
    check_choices(Cfg(maybe="x", n=3))
    with pytest.raises(ValueError, match=r"mode: 'c' is not one of \['a', 'b'\]"):
        check_choices(Cfg(mode="c"))
    with pytest.raises(ValueError, match="maybe"):
        check_choices(Cfg(maybe="y"))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.tuples(st.sampled_from(["r1", "r2"]), st.sampled_from([R.REJECTED, R.QUARANTINED]))),
                min_size=0, max_size=20))
def test_split_drops_partitions_rows_by_their_verdicts(verdicts):
    from curate.base import Drop, split_drops
    table = R.rows_to_table([R.Sample(key=f"k{i}", source="s", category="caption", ordinal=i).to_row()
                             for i in range(len(verdicts))])
    drops = [None if v is None else Drop(v[0], f"d{i}", v[1]) for i, v in enumerate(verdicts)]
    res = split_drops(table, drops)
    assert res.kept.column("key").to_pylist() == [f"k{i}" for i, v in enumerate(verdicts) if v is None]
    want = [(f"k{i}", d.status, d.reason, d.detail) for status in (R.REJECTED, R.QUARANTINED)
            for i, d in enumerate(drops) if d is not None and d.status == status]
    assert [(r["key"], r[R.STATUS], r[R.REASON], r[R.DETAIL]) for r in res.dropped.to_pylist()] == want


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_fast_path_counts_like_the_unicode_loop(text):
    fast = TR.count_chars(text)
    slow = TR.count_chars(text + "\u00e9")           # one non-ASCII letter forces the per-character loop
    assert (fast.letters + 1, fast.digits, fast.symbols, fast.nonspace + 1) == (
        slow.letters, slow.digits, slow.symbols, slow.nonspace)


# --- shortcuts that must not change a verdict ------------------------------------------------------
_SPAMMY = ("click here", "Click HERE", "subscribe now", "sign up today", "lorem ipsum", "all rights reserved",
           "copyright (c)", "Copyright 2024", "free download", "add to cart", "buy now", "no photo available",
           "image not found", "we use cookies", "click_here", "1click here", "free", "no", "image", "we",
           "stock photo", "IMG_0042.jpg", "Shutterstock", "of the", "hd wallpaper 4k", "dsc0042")


@settings(max_examples=300)
@given(parts=st.lists(st.one_of(st.sampled_from(_SPAMMY), st.sampled_from("a dog . , ! - _ ( ) 42 cat".split()),
                                st.text(alphabet="abcdefghijklmnopqrstuvwxyz _-!.,()0123456789ſK", max_size=12)),
                      max_size=8),
       sep=st.sampled_from([" ", "", "-", "_", "\n"]))
def test_property_the_spam_word_gate_never_changes_boilerplate_match(parts, sep):
    """Skipping the phrase search when no token is a phrase's first word, and the generic-word scan when
    a plain word is not generic (ASCII only), finds the same."""
    text = sep.join(parts)
    assert TR.boilerplate_match(text, TR.tokenize(text)) == TR.boilerplate_match(text)


def _tail_loop_without_gate(tokens, min_repeats, min_tokens, max_period=TR.TAIL_LOOP_MAX_PERIOD):
    """find_tail_loop scanning every period, without the last-token gate."""
    min_repeats = max(min_repeats, 2)
    for p in range(1, min(max_period, len(tokens) // min_repeats) + 1):
        r, start = TR.loop_at_period(tokens, p)
        if r >= min_repeats and r * p >= min_tokens:
            return TR.Loop(p, r, start)
    return None


@settings(max_examples=300)
@given(tokens=st.lists(st.sampled_from("a b c d .".split()), max_size=40), min_repeats=st.integers(0, 5),
       min_tokens=st.integers(0, 12))
def test_property_the_tail_loop_gate_finds_what_the_full_scan_finds(tokens, min_repeats, min_tokens):
    assert TR.find_tail_loop(tokens, min_repeats, min_tokens) == _tail_loop_without_gate(tokens, min_repeats, min_tokens)


@given(words=st.lists(st.sampled_from("a dog cat on the mat".split()), max_size=40))
def test_property_a_longer_ngram_never_occurs_more_often_than_the_top_shorter_one(words):
    """Why the n-gram rule stops at the first n whose top n-gram is below the repeat count."""
    for n in (2, 3):
        short, longer = TR.top_ngram(words, n), TR.top_ngram(words, n + 1)
        assert longer is None or (short is not None and longer.count <= short.count)
