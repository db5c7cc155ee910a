"""The engine interface: what any OCR engine returns, and how engines are found by name.

An engine turns one RGB image into lines of words with pixel quadrilaterals. Both built-in engines
(``rapidocr``: PP-OCR detection + recognition as ONNX; ``tesseract``: LSTM Tesseract) and the
production one (``paddleocr``) are adapters to this interface, and so is a user's own engine (a VLM
doing OCR, as MindVL did): name it in the ``engines`` setting as ``"package.module:ClassName"``.

Quads are four (x, y) pixel corners, clockwise from the upper-left, as the grounding grammar wants.
Engines that detect only lines (RapidOCR, PaddleOCR) get word quads by cutting the line quad at the
character offsets of each word (``words_along_line``): equal width per character, exact at the
line's ends, a few pixels off inside a line of mixed-width glyphs; the matcher's overlap threshold
absorbs that (see ``MatchSettings``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
from PIL import Image

from curate.ocr.normalize import split_words

Point = tuple[float, float]
Quad = tuple[Point, Point, Point, Point]


@dataclass(frozen=True)
class OcrWord:
    text: str
    quad: Quad
    score: float            # engine confidence in [0, 1]
    line: int               # index of the line it belongs to, in the engine's result


@dataclass(frozen=True)
class OcrLine:
    text: str
    quad: Quad
    score: float


@dataclass
class EngineResult:
    """One engine's reading of one image. `timed_out`: the engine gave up at the deadline."""
    engine: str
    lines: list[OcrLine] = field(default_factory=list)
    words: list[OcrWord] = field(default_factory=list)
    seconds: float = 0.0
    timed_out: bool = False

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


class OcrEngine(Protocol):
    """What the ``ocr`` stage needs from an engine. Built once per worker (load models in __init__)."""
    name: str

    def read(self, image: Image.Image, timeout_s: float) -> EngineResult:
        """Lines and words of an RGB image. Must return (timed_out=True) rather than run far past
        `timeout_s` when the engine can be interrupted; engines that cannot say so in their docs."""
        ...


def quad_from_box(x1: float, y1: float, x2: float, y2: float) -> Quad:
    return ((x1, y1), (x2, y1), (x2, y2), (x1, y2))


def as_quad(points: Sequence[Sequence[float]]) -> Quad:
    p = [(float(x), float(y)) for x, y in points]
    if len(p) != 4:
        raise ValueError(f"a quad has 4 corners, got {len(p)}")
    return (p[0], p[1], p[2], p[3])


def words_along_line(text: str, quad: Quad, score: float, line_index: int) -> list[OcrWord]:
    """Words of a detected line, each with the slice of the line quad that its characters span.

    The quad is read as top edge p0->p1 and bottom edge p3->p2 (the detector's clockwise order), so
    rotated lines get rotated word quads."""
    n = len(text)
    if n == 0:
        return []
    q = np.asarray(quad, dtype=np.float64)
    top0, top1, bot0, bot1 = q[0], q[1], q[3], q[2]
    out = []
    for start, end, word in split_words(text):
        a, b = start / n, end / n
        corners = (top0 + (top1 - top0) * a, top0 + (top1 - top0) * b,
                   bot0 + (bot1 - bot0) * b, bot0 + (bot1 - bot0) * a)
        out.append(OcrWord(word, as_quad([(float(c[0]), float(c[1])) for c in corners]), score, line_index))
    return out


def result_from_lines(engine: str, lines: Sequence[OcrLine], seconds: float, timed_out: bool = False) -> EngineResult:
    """EngineResult for a line-level engine: words cut from each line (see words_along_line)."""
    words = [w for i, line in enumerate(lines) for w in words_along_line(line.text, line.quad, line.score, i)]
    return EngineResult(engine, list(lines), words, seconds, timed_out)


# --- registry -----------------------------------------------------------------------------------
BUILTIN_ENGINES: dict[str, str] = {
    "rapidocr": "curate.ocr.rapid:RapidOcrEngine",
    "tesseract": "curate.ocr.tesseract:TesseractEngine",
    "paddleocr": "curate.ocr.paddle:PaddleOcrEngine",
}


def engine_factory(name: str) -> Callable[..., OcrEngine]:
    """The class a name refers to: a built-in name or ``package.module:ClassName``."""
    target = BUILTIN_ENGINES.get(name, name)
    if ":" not in target:
        raise ValueError(f"unknown OCR engine {name!r}; built-in: {', '.join(BUILTIN_ENGINES)}, "
                         f"or 'package.module:ClassName'")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
