"""Rule-based text filtering of captions and of every assistant turn of conversations.

Rules, in the order they run (the first that fails names the reason):

* ``text:empty`` — missing, empty or whitespace-only (also: no caption and no assistant turn).
* ``text:symbol_ratio`` / ``text:digit_ratio`` — non-linguistic text: symbols (Unicode P* and S*)
  and digits, each as a fraction of the non-space characters, on texts of at least
  ``ratio_min_chars`` non-space characters (short chart answers like "12.5%" stay). The digit rule
  judges captions only: a chart or OCR answer may be all digits ("555-123-4567"). Markdown table
  rules (``|---|:--|``) and pipes are removed first so that tables are judged on their cells. These
  run before the length rules so that "$$$ ### !!!" is named non-linguistic rather than short.
* ``text:too_short`` — captions only: fewer words (CJK characters count as words) or non-space
  characters than the minimum. Answers are exempt: "Yes", "B" or "42" are correct VQA answers.
* ``text:too_long`` — more characters than the maximum.
* ``text:boilerplate`` — short texts (<= ``boilerplate_max_words``) that contain web boilerplate
  ("click here", "subscribe now", "lorem ipsum", "all rights reserved", "add to cart"...) or that
  consist only of generic words ("stock photo image", "Shutterstock", "IMG_0042.jpg"). "A stock photo
  of a cat on a sofa" stays: it still describes the image. A long text that quotes one
  such phrase is not boilerplate. Captions only unless ``boilerplate_in_answers``: OCR and GUI
  answers legitimately quote "Click here" or "Subscribe" from the screen.
* ``text:tail_loop`` — the text ends in a loop (InternVL 2.5's "loop-like" degeneration): at
  least ``tail_loop_min_repeats`` exact copies of a unit of up to 64 tokens, covering at least
  ``tail_loop_min_tokens`` tokens, *after some content that is not part of the loop*.
* ``text:duplicate_lines`` — fraction of repeated non-empty lines above the limit (Gopher).
* ``text:repeated_ngrams`` — the most frequent 2/3/4-gram covers more than 0.20/0.18/0.16 of the
  characters (Gopher's thresholds, the base is configurable) and occurs at least
  ``ngram_min_repeats`` times (so "a dog next to a dog bed" stays). A text that is *entirely* one
  repeated unit ("an astronaut in space an astronaut in space ...") also lands here: it is
  repetition, not a tail that degenerated.

Special tokens and tags (``<|box_start|>``, ``<ref>``, ``<image>``) are removed before every rule:
grounding answers are markup around coordinates, and the grounding checks judge that grammar.

Tokens for the loop and n-gram rules: words (``\\w+``), single CJK characters, and single
punctuation marks, lower-cased — so CJK loops and "!!!!!!!!" are seen too.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import pyarrow as pa

from curate.base import Drop, split_drops
from curate.filters.presets import TEXT_PRESETS, TextThresholds, preset_settings, thresholds_of
from curate.filters.text_lexicon import (GENERIC_OR_STOP, GENERIC_WORDS, MARKUP, PLACEHOLDERS, SPAM_FIRST_WORDS, SPAM_RE,
                                         TAIL_LOOP_MAX_PERIOD, ngram_limits)
from curate.filters.answer_screen import answers_cleared
from curate.filters.text_screen import cleared
from curate.base import BatchResult, Resources, Stage, register

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]", re.UNICODE)
_TABLE_RULE_ROW = re.compile(r"^\s*\|?(?:\s*:?-{2,}:?\s*\|)+\s*:?-{0,}:?\s*\|?\s*$", re.MULTILINE)



# --- measurements ---------------------------------------------------------------------------------
def tokenize(text: str) -> list[str]:
    """Lower-cased words, single CJK characters and single punctuation marks."""
    return _TOKEN.findall(text.lower())


def words_of(tokens: Sequence[str]) -> list[str]:
    return [t for t in tokens if t[0].isalnum() or t[0] == "_"]


@dataclass(frozen=True)
class CharCounts:
    letters: int
    digits: int
    symbols: int
    nonspace: int

    @property
    def symbol_ratio(self) -> float:
        return self.symbols / self.nonspace if self.nonspace else 0.0

    @property
    def digit_ratio(self) -> float:
        return self.digits / self.nonspace if self.nonspace else 0.0


def count_chars(text: str) -> CharCounts:
    """Letters (incl. combining marks), digits, symbols/punctuation among the non-space characters,
    after removing markdown table rules and pipes."""
    text = _TABLE_RULE_ROW.sub("", text).replace("|", " ")
    if text.isascii():
        return _count_ascii(text.encode("ascii"))
    letters = digits = symbols = nonspace = 0
    for ch in text:
        if ch.isspace():
            continue
        nonspace += 1
        cat = unicodedata.category(ch)[0]
        if cat in ("L", "M"):
            letters += 1
        elif cat == "N":
            digits += 1
        elif cat in ("P", "S"):
            symbols += 1
    return CharCounts(letters, digits, symbols, nonspace)


# ASCII classes by Unicode category, so that the fast path counts exactly what the loop above counts.
_ASCII = [chr(c) for c in range(128)]
_ASCII_SPACE = bytes(c for c in range(128) if _ASCII[c].isspace())
_ASCII_LETTERS = bytes(c for c in range(128) if unicodedata.category(_ASCII[c])[0] in "LM")
_ASCII_DIGITS = bytes(c for c in range(128) if unicodedata.category(_ASCII[c])[0] == "N")
_ASCII_SYMBOLS = bytes(c for c in range(128) if unicodedata.category(_ASCII[c])[0] in "PS")


def _count_ascii(data: bytes) -> CharCounts:
    """``count_chars`` for ASCII text in C (bytes.translate deletes a class; the length drop counts it)."""
    n = len(data)
    return CharCounts(letters=n - len(data.translate(None, _ASCII_LETTERS)),
                      digits=n - len(data.translate(None, _ASCII_DIGITS)),
                      symbols=n - len(data.translate(None, _ASCII_SYMBOLS)),
                      nonspace=len(data.translate(None, _ASCII_SPACE)))




def boilerplate_match(text: str, tokens: Sequence[str] | None = None) -> str | None:
    """The boilerplate phrase in `text`, or a note that it holds only generic words; None otherwise.
    `tokens`: ``tokenize(text)`` when the caller has it (lets ASCII text skip the phrase search)."""
    ascii_tokens = tokens is not None and text.isascii()
    m = None if ascii_tokens and SPAM_FIRST_WORDS.isdisjoint(tokens) else SPAM_RE.search(text)
    if m:
        return f"contains {m.group(0)!r}"
    # An all-letter ASCII token is a whole letter run of the text: one that is neither generic nor a
    # stopword already means "not only generic words", without the second scan below.
    if ascii_tokens and any(t.isalpha() and t not in GENERIC_OR_STOP for t in tokens):
        return None
    words = re.findall(r"[^\W\d_]+", text.lower())
    if any(w in GENERIC_WORDS for w in words) and all(w in GENERIC_OR_STOP for w in words):
        return "only generic words"
    return None


@dataclass(frozen=True)
class TopNgram:
    n: int
    ngram: tuple[str, ...]
    count: int
    coverage: float  # characters of all occurrences / characters of all words


def top_ngram(words: Sequence[str], n: int) -> TopNgram | None:
    if len(words) < n:
        return None
    counts = Counter(zip(*(words[i:] for i in range(n))))  # the n-grams in order, built in C
    # most_common is stable for ties (first seen wins), which keeps the detail text deterministic
    gram, count = counts.most_common(1)[0]
    total = sum(map(len, words))
    return TopNgram(n, gram, count, count * sum(map(len, gram)) / total if total else 0.0)


def some_word_occurs(words: Sequence[str], times: int) -> bool:
    """Whether a word occurs at least `times` (>= 2) times. An n-gram that occurs c times starts with a
    word that occurs at least c times, so without one no n-gram can reach the repeat count: the
    n-gram rule is skipped without changing any verdict (most captions repeat no word that often)."""
    if len(set(words)) == len(words):
        return False
    return max(Counter(words).values()) >= times


def duplicate_line_ratio(text: str) -> tuple[float, int]:
    """(fraction of non-empty lines that repeat an earlier line, number of non-empty lines)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return 0.0, 0
    return (len(lines) - len(set(lines))) / len(lines), len(lines)


@dataclass(frozen=True)
class Loop:
    period: int    # tokens in the repeated unit
    repeats: int   # whole copies at the end of the text
    start: int     # token index where the repetition starts (partial copies included)


def loop_at_period(tokens: Sequence[str], p: int) -> tuple[int, int]:
    """(whole copies of the last `p` tokens that end the sequence, token index where the repetition
    starts, partial copies included)."""
    n = len(tokens)
    unit = list(tokens[n - p:])
    r = 1
    while n - (r + 1) * p >= 0 and list(tokens[n - (r + 1) * p:n - r * p]) == unit:
        r += 1
    start = n - r * p
    while start > 0 and tokens[start - 1] == tokens[start - 1 + p]:
        start -= 1
    return r, start


def find_tail_loop(tokens: Sequence[str], min_repeats: int, min_tokens: int,
                   max_period: int = TAIL_LOOP_MAX_PERIOD) -> Loop | None:
    """Shortest unit whose exact copies end the token sequence, if there are enough of them."""
    n = len(tokens)
    if min_repeats < 2:
        min_repeats = 2
    last = tokens[n - 1] if n else None
    for p in range(1, min(max_period, n // min_repeats) + 1):
        if tokens[n - 1 - p] != last:   # a second copy of the unit would end with `last`: no loop of period p
            continue
        r, start = loop_at_period(tokens, p)
        if r >= min_repeats and r * p >= min_tokens:
            return Loop(p, r, start)
    return None




# --- rules ----------------------------------------------------------------------------------------
def check_text(text: str | None, th: TextThresholds, kind: str = "caption", boilerplate: bool | None = None) -> Drop | None:
    """All rules for one caption (kind="caption") or assistant answer (kind="answer").

    `boilerplate` turns the boilerplate rule on or off; None: on for captions, off for answers."""
    if boilerplate is None:
        boilerplate = kind == "caption"
    if text is None or not text.strip():
        return Drop("text:empty", "empty or whitespace-only")
    text = strip_markup(text).strip()
    if not text:
        return None if kind == "answer" else Drop("text:empty", "only markup")
    tokens = tokenize(text)
    words = words_of(tokens)
    counts = count_chars(text)
    if counts.nonspace >= th.ratio_min_chars:
        if th.max_symbol_ratio and counts.symbol_ratio > th.max_symbol_ratio:
            return Drop("text:symbol_ratio", f"symbols/characters {counts.symbol_ratio:.2f} > {th.max_symbol_ratio:g}")
        if kind == "caption" and th.max_digit_ratio and counts.digit_ratio > th.max_digit_ratio:
            return Drop("text:digit_ratio", f"digits/characters {counts.digit_ratio:.2f} > {th.max_digit_ratio:g}")
    if kind == "caption":
        if th.min_caption_words and len(words) < th.min_caption_words:
            return Drop("text:too_short", f"{len(words)} words < {th.min_caption_words}")
        if th.min_caption_chars and counts.nonspace < th.min_caption_chars:
            return Drop("text:too_short", f"{counts.nonspace} characters < {th.min_caption_chars}")
    if th.max_chars and len(text) > th.max_chars:
        return Drop("text:too_long", f"{len(text)} characters > {th.max_chars}")
    if boilerplate and th.boilerplate_max_words and len(words) <= th.boilerplate_max_words:
        hit = boilerplate_match(text, tokens)
        if hit:
            return Drop("text:boilerplate", hit)
    loop = None
    if th.tail_loop_min_repeats and th.tail_loop_min_tokens:
        loop = find_tail_loop(tokens, th.tail_loop_min_repeats, th.tail_loop_min_tokens)
        if loop is not None and loop.start > 0:
            unit = " ".join(tokens[len(tokens) - loop.period:])
            return Drop("text:tail_loop", f"ends with {loop.repeats} copies of {unit[:80]!r} "
                                          f"after {loop.start} tokens of content")
    if th.max_duplicate_line_ratio:
        ratio, lines = duplicate_line_ratio(text)
        if lines >= th.duplicate_lines_min_lines and ratio > th.max_duplicate_line_ratio:
            return Drop("text:duplicate_lines", f"{ratio:.2f} of {lines} lines repeat > {th.max_duplicate_line_ratio:g}")
    if th.max_top_ngram_ratio and some_word_occurs(words, max(2, th.ngram_min_repeats)):
        for n, limit in ngram_limits(th):
            top = top_ngram(words, n)
            if top is None or top.count < max(2, th.ngram_min_repeats):
                break   # an n+1-gram occurs at most as often as its leading n-gram: none can reach the count
            if top.coverage > limit:
                return Drop("text:repeated_ngrams", f"{' '.join(top.ngram)!r} x{top.count} covers "
                                                    f"{top.coverage:.2f} of the characters > {limit:.2f}")
    if loop is not None:  # the whole text is one repeated unit
        unit = " ".join(tokens[len(tokens) - loop.period:])
        return Drop("text:repeated_ngrams", f"the whole text is {loop.repeats} copies of {unit[:80]!r}")
    return None


def strip_markup(text: str) -> str:
    """`text` with special tokens and tag-like markers replaced by spaces."""
    return MARKUP.sub(" ", text)


def strip_placeholders(content: str | None) -> str | None:
    return None if content is None else PLACEHOLDERS.sub(" ", content)


def check_sample(text: str | None, conversations: Sequence[Mapping[str, Any]] | None, th: TextThresholds,
                 boilerplate_in_answers: bool = False) -> Drop | None:
    """Caption rules on `text` (when there is a caption) and answer rules on every assistant turn."""
    turns = list(conversations or [])
    if not turns:
        drop = check_text(text, th, "caption")
        return None if drop is None else Drop(drop.reason, "caption: " + (drop.detail or ""), drop.status)
    if text is not None and text.strip():
        drop = check_text(text, th, "caption")
        if drop is not None:
            return Drop(drop.reason, "caption: " + (drop.detail or ""), drop.status)
    answers = [(i, t) for i, t in enumerate(turns) if (t.get("role") or "") == "assistant"]
    if not answers:
        return Drop("text:empty", "conversation without an assistant turn")
    for i, turn in answers:
        drop = check_text(strip_placeholders(turn.get("content")), th, "answer", boilerplate_in_answers)
        if drop is not None:
            return Drop(drop.reason, f"turn {i + 1} (assistant): " + (drop.detail or ""), drop.status)
    return None


# --- the stage ------------------------------------------------------------------------------------
@register
class TextFilter(Stage):
    name: ClassVar[str] = "text_filter"
    description: ClassVar[str] = ("Rule-based text filtering of captions and assistant turns: empty, length, symbol "
                                  "and digit ratios, boilerplate, tail loops, duplicate lines, repeated n-grams.")
    requires: ClassVar[tuple[str, ...]] = ("text", "conversations")
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=1024, kind="task")

    Config = preset_settings("TextFilter", __name__, TextThresholds, TEXT_PRESETS, extra=[
        ("boilerplate_in_answers", bool, field(default=False, metadata={
            "doc": "Also apply the boilerplate rule to assistant turns (off: OCR/GUI answers quote page text)."}))])

    def validate_config(self) -> None:
        self.thresholds: TextThresholds = thresholds_of(self.config, TextThresholds, TEXT_PRESETS)

    def process_batch(self, batch: pa.Table) -> BatchResult:
        return split_drops(batch, batch_verdicts(batch, self.thresholds, self.config.boilerplate_in_answers))


def batch_verdicts(batch: pa.Table, th: TextThresholds, boilerplate_in_answers: bool = False,
                   screen: bool = True) -> list[Drop | None]:
    """``check_sample`` for every row; with `screen`, only for the rows the vectorised screens
    (curate.filters.text_screen, curate.filters.answer_screen) cannot clear: the same verdicts, most rows never reach Python."""
    drops: list[Drop | None] = [None] * batch.num_rows
    rows = np.arange(batch.num_rows)
    if screen:   # captions (text_screen), then conversations (answer_screen)
        text, conversations = batch.column("text"), batch.column("conversations")
        rows = np.flatnonzero(~(cleared(text, conversations, th)
                                | answers_cleared(text, conversations, th, boilerplate_in_answers)))
    if len(rows) == 0:
        return drops
    at = pa.array(rows, pa.int64())
    texts, convs = batch.column("text").take(at).to_pylist(), batch.column("conversations").take(at).to_pylist()
    for i, text, conversations in zip(rows.tolist(), texts, convs):
        drops[i] = check_sample(text, conversations, th, boilerplate_in_answers)
    return drops
