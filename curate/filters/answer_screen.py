"""The vectorised text screen for conversations: rows whose every assistant answer no rule can drop.

``curate.filters.text_screen`` clears captions; rows with turns went through ``check_sample`` in
Python, one row at a time (issue 31: most of the per-row cost of a conversation corpus). This screen
clears a conversation row when ``check_sample`` certainly returns None for it:

* no caption (a null or empty ``text``: with one, the caption rules run first, in Python), at least
  one turn, no null turn, and at least one ``assistant`` turn (without one the row is dropped);
* every assistant answer, after ``strip_placeholders`` and ``strip_markup`` (the same patterns, run
  by RE2: on printable ASCII their classes match the same characters), is either empty (an answer
  of only markup passes) or screenable text that ``text_screen``'s answer-rule screen clears:
  the caption-only rules (digit ratio, too short, and boilerplate unless ``boilerplate_in_answers``)
  are off, as ``check_text`` turns them off for answers.

An answer is judged only when it is printable ASCII (0x20-0x7e: one line, so the duplicate-line rule
cannot fire, and ``\\s`` is the space alone) before the markup is removed, and holds no ``<`` or
``|`` after; everything else goes to the rules.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.filters.presets import TextThresholds
from curate.filters.text_lexicon import MARKUP, PLACEHOLDERS
from curate.filters.text_screen import _may_drop


def answers_cleared(texts: pa.Array | pa.ChunkedArray | None, conversations: pa.Array | pa.ChunkedArray | None,
                    th: TextThresholds, boilerplate_in_answers: bool = False) -> np.ndarray:
    """Per row: True when no text rule can drop its conversation (module docstring); False: unknown."""
    if conversations is None:
        return np.zeros(0 if texts is None else len(texts), dtype=bool)
    conv = conversations.combine_chunks() if isinstance(conversations, pa.ChunkedArray) else conversations
    n = len(conv)
    out = np.zeros(n, dtype=bool)
    if n == 0 or pa.types.is_null(conv.type) or th.max_duplicate_line_ratio < 0:
        return out
    lengths = np.asarray(pc.fill_null(pc.list_value_length(conv), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    flat = pc.list_flatten(conv)
    if len(flat) == 0:
        return out
    parent = np.repeat(np.arange(n, dtype=np.int64), lengths)
    turn_ok = flat.is_valid().to_numpy(zero_copy_only=False)
    answer = turn_ok & np.asarray(pc.fill_null(pc.equal(pc.struct_field(flat, "role"), "assistant"), False)
                                  .to_numpy(zero_copy_only=False), dtype=bool)
    rows_ok = (lengths > 0) & (np.bincount(parent, weights=~turn_ok, minlength=n) == 0) & \
        (np.bincount(parent, weights=answer, minlength=n) > 0)
    if texts is not None and not pa.types.is_null(texts.type):
        rows_ok &= np.asarray(pc.fill_null(pc.equal(pc.binary_length(texts), 0), True)
                              .to_numpy(zero_copy_only=False), dtype=bool)
    at = np.flatnonzero(answer & rows_ok[parent])
    good = _answers_cleared(pc.struct_field(flat, "content").take(pa.array(at, pa.int64())), th,
                            boilerplate_in_answers)
    out[:] = rows_ok
    out[parent[at[~good]]] = False
    return out


def answer_thresholds(th: TextThresholds, boilerplate_in_answers: bool) -> TextThresholds:
    """The thresholds with the rules ``check_text`` does not apply to answers turned off."""
    return dataclasses.replace(th, max_digit_ratio=0, min_caption_words=0, min_caption_chars=0,
                               boilerplate_max_words=th.boilerplate_max_words if boilerplate_in_answers else 0)


def _answers_cleared(contents: pa.Array, th: TextThresholds, boilerplate_in_answers: bool) -> np.ndarray:
    """Per answer: True when ``check_text(strip_placeholders(c), th, "answer", ...)`` is None for certain."""
    if len(contents) == 0:
        return np.zeros(0, dtype=bool)
    printable = pc.fill_null(pc.match_substring_regex(contents, r"^[\x20-\x7e]*$"), False)
    unplaced = pc.replace_substring_regex(contents, PLACEHOLDERS.pattern, " ")
    blank = pc.equal(pc.binary_length(pc.utf8_trim_whitespace(unplaced)), 0)   # check_text: text:empty
    judged = pc.utf8_trim_whitespace(pc.replace_substring_regex(unplaced, MARKUP.pattern, " "))
    empty = pc.equal(pc.binary_length(judged), 0)                                # only markup: passes
    screenable = pc.invert(pc.match_substring_regex(judged, "[<|]"))
    ok = np.asarray(pc.fill_null(pc.and_(printable, pc.invert(blank)), False).to_numpy(zero_copy_only=False), bool)
    empty_np = np.asarray(pc.fill_null(empty, False).to_numpy(zero_copy_only=False), dtype=bool)
    out = ok & empty_np
    rows = np.flatnonzero(ok & ~empty_np & np.asarray(pc.fill_null(screenable, False).to_numpy(zero_copy_only=False),
                                                      dtype=bool))
    if len(rows):
        out[rows] = ~_may_drop(judged.take(pa.array(rows, pa.int64())).cast(pa.string()),
                               answer_thresholds(th, boilerplate_in_answers))
    return out
