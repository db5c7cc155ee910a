"""Agreed words -> agreed lines -> grounding labels.

Lines follow the *first* engine's line structure (the stage's default first engine, RapidOCR,
detects oriented line quads). A line's text is its agreed readings in the first engine's word order;
words the engines disagree on are left out, so ``ocr_text`` holds only what both read. Which reading
is written: for a split/merged word, the split side's words that the merged word contains (they keep
the spaces), otherwise the engine ``text_from`` names.

A line's quad is the first engine's line quad when every word of the line was agreed; otherwise the
minimum-area rectangle around the agreed words' quads (so the box covers exactly the text written).
The label is a quad in the grammar's 0-999 space (``<|quad_start|>(x1,y1),...<|quad_end|>``),
clockwise from the upper-left, named by the line text.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from curate.grounding.grammar import Shape, check_object_name, format_label
from curate.grounding.normalize import min_area_rect, order_quad, pixels_to_rel
from curate.ocr.engines import EngineResult, Quad, as_quad
from curate.ocr.matching import Agreement
from curate.ocr.normalize import word_key


@dataclass(frozen=True)
class AgreedLine:
    text: str
    quad: Quad          # pixels, clockwise from upper-left
    words: int          # words written (agreed by both engines)


def _reading(g: Agreement, first: EngineResult, second: EngineResult, text_from: str, fold: bool) -> str:
    """The text written for one agreement. 1:1: the `text_from` engine's word. Split/merged: the words
    of the split side whose keys occur in the merged word's key ("Coffee" in "mondaycoffee", but not
    "Mmonday"): only what both engines read is written, with the split side's spaces."""
    a = [first.words[i].text for i in g.first]
    b = [second.words[j].text for j in g.second]
    if len(a) == len(b):
        return " ".join(a if text_from == "first" else b)
    merged, split = (a, b) if len(a) < len(b) else (b, a)
    whole = word_key(" ".join(merged), fold)
    return " ".join(w for w in split if word_key(w, fold) and word_key(w, fold) in whole)


def agreed_lines(first: EngineResult, second: EngineResult, agreed: Sequence[Agreement],
                 text_from: str = "first", fold_lookalikes: bool = False) -> list[AgreedLine]:
    by_line: dict[int, list[Agreement]] = defaultdict(list)
    for g in agreed:
        by_line[first.words[g.first[0]].line].append(g)
    words_per_line: dict[int, int] = defaultdict(int)
    for w in first.words:
        words_per_line[w.line] += 1
    out = []
    for line in sorted(by_line):
        readings = [(g, _reading(g, first, second, text_from, fold_lookalikes))
                    for g in sorted(by_line[line], key=lambda g: g.first)]
        groups = [g for g, text in readings if text]
        if not groups:
            continue
        text = " ".join(text for _, text in readings if text)
        idx = [i for g in groups for i in g.first]
        if len(idx) == words_per_line[line] and line < len(first.lines):
            quad = first.lines[line].quad
        else:
            corners = np.asarray([p for i in idx for p in first.words[i].quad], dtype=np.float64)
            quad = as_quad(order_quad(min_area_rect(corners)).tolist())
        out.append(AgreedLine(text, quad, len(text.split())))
    return out


def grounding_label(line: AgreedLine, width: int, height: int) -> str | None:
    """The line as a grounding label, or None when its text cannot be an object name (holds tags)."""
    try:
        check_object_name(line.text.strip())
    except ValueError:
        return None
    rel = [pixels_to_rel(x, y, width, height) for x, y in line.quad]
    ordered = order_quad(np.asarray(rel, dtype=np.float64))
    shape = Shape.quad([(int(round(x)), int(round(y))) for x, y in ordered])
    return format_label(shape, line.text.strip())


def grounding_text(lines: Sequence[AgreedLine], width: int, height: int) -> str:
    """All agreed lines, one label per line (newline-separated, which the grammar allows between labels)."""
    labels = [grounding_label(line, width, height) for line in lines]
    return "\n".join(lab for lab in labels if lab)
