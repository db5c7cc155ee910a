"""One image through two engines: decode, size bucket, both readings, matching, agreement, lines.

Kept apart from the stage so that the bench times exactly what the stage runs per image.

Size buckets: an image is read at most at ``max_side`` pixels on its long side (shrunk with Lanczos
before either engine sees it; the quads are scaled back to the original pixels). This bounds the
detector's cost — RapidOCR's own cap is 2000 — so a 20000-pixel scan cannot stall a worker; the
bucket (by original long side) is recorded for the report.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from PIL import Image

from curate.ocr.engines import EngineResult, OcrEngine, OcrLine, OcrWord, Quad
from curate.ocr.lines import AgreedLine, agreed_lines
from curate.ocr.matching import Agreement, MatchSettings, Metrics, agreement_metrics, match_words


@dataclass(frozen=True)
class Reading:
    """Everything the stage writes about one image."""
    first: EngineResult
    second: EngineResult
    agreed: list[Agreement]
    metrics: Metrics
    lines: list[AgreedLine]
    scale: float        # original pixels per processed pixel (>= 1)
    bucket: str
    size: tuple[int, int]   # original width, height


def size_bucket(width: int, height: int, bounds: Sequence[int]) -> str:
    """Label of the smallest bucket whose bound holds the long side ('<=1024'), or '>last'."""
    side = max(width, height)
    for b in sorted(bounds):
        if side <= b:
            return f"<={b}"
    return f">{max(bounds)}" if bounds else "all"


def shrink(image: Image.Image, max_side: int) -> tuple[Image.Image, float]:
    """The image with its long side at most `max_side`, and the factor back to original pixels."""
    side = max(image.size)
    if side <= max_side:
        return image, 1.0
    scale = side / max_side
    size = (max(1, round(image.size[0] / scale)), max(1, round(image.size[1] / scale)))
    return image.resize(size, Image.Resampling.LANCZOS), scale


def _scale_quad(q: Quad, s: float) -> Quad:
    return tuple((x * s, y * s) for x, y in q)  # type: ignore[return-value]


def rescale(result: EngineResult, s: float) -> EngineResult:
    if s == 1.0:
        return result
    lines = [OcrLine(ln.text, _scale_quad(ln.quad, s), ln.score) for ln in result.lines]
    words = [OcrWord(w.text, _scale_quad(w.quad, s), w.score, w.line) for w in result.words]
    return EngineResult(result.engine, lines, words, result.seconds, result.timed_out)


def read_image(image: Image.Image, engines: Sequence[OcrEngine], settings: MatchSettings, *,
               timeout_s: float, max_side: int, buckets: Sequence[int], text_from: str = "first") -> Reading:
    """Both engines on one RGB image. The second engine is skipped when the first timed out."""
    bucket = size_bucket(image.size[0], image.size[1], buckets)
    small, scale = shrink(image, max_side)
    first = rescale(engines[0].read(small, timeout_s), scale)
    if first.timed_out:
        second = EngineResult(engines[1].name, timed_out=False)
    else:
        second = rescale(engines[1].read(small, timeout_s), scale)
    agreed = match_words(first.words, second.words, settings) if not (first.timed_out or second.timed_out) else []
    metrics = agreement_metrics(first.words, second.words, agreed, settings.fold_lookalikes)
    lines = agreed_lines(first, second, agreed, text_from, settings.fold_lookalikes)
    return Reading(first, second, agreed, metrics, lines, scale, bucket, image.size)
