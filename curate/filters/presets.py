"""Named threshold sets for the rule-based filters.

A recipe picks a preset (``preset: datacomp_basic``) and may override single values; a value of 0
turns a numeric rule off. Presets are plain frozen dataclasses so that the values a run used are
printed in full in the stage settings and can be compared between runs.

Sources of the numbers:

* ``datacomp_basic`` — DataComp's "basic" filter (Gadre et al., 2023): images whose smaller side is
  at least 200 px with aspect ratio at most 3, captions with more than two words and at least five
  characters. DataComp's English-language check is not a rule here. The safety rules (decode
  budget, blank, corrupt, compression) keep the default values: they guard the pipeline, not taste.
* ``default`` — what mmcurate uses when a recipe says nothing: min side 112 px and 16 x 28 x 28
  pixels (MindVL's test-time resolution search found min_pixels of 16 x 28 x 28 better for OCR than
  4 x 28 x 28), aspect ratio <= 5, JPEG quality >= 25, at most 64 M pixels decoded.
* ``lenient`` — only the clearly broken: tiny thumbnails, banners beyond 10:1, JPEG quality < 10.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class ImageThresholds:
    """Limits of the image rules. 0 (or 0.0) disables a rule."""
    min_side: int = 112                 # smaller side in pixels, inclusive
    min_pixels: int = 16 * 28 * 28      # width * height, inclusive
    max_aspect_ratio: float = 5.0       # long side / short side, inclusive
    max_pixels: int = 64_000_000        # refuse to decode more (decompression bombs)
    min_jpeg_quality: int = 25          # IJG quality estimated from the luminance quantization table
    min_bits_per_pixel: float = 0.04    # encoded bits per pixel, lossy formats only
    blank_max_std: float = 3.0          # max per-channel std (0..255) of a downscaled copy => blank


@dataclass(frozen=True)
class TextThresholds:
    """Limits of the text rules. 0 (or 0.0) disables a rule."""
    min_caption_words: int = 2          # captions only; answers may legitimately be "Yes" or "42"
    min_caption_chars: int = 5          # non-space characters, captions only
    max_chars: int = 50_000             # captions and answers
    max_symbol_ratio: float = 0.6       # symbols / non-space characters
    max_digit_ratio: float = 0.8        # digits / non-space characters, captions only
    ratio_min_chars: int = 10           # the two ratio rules only look at texts at least this long
    boilerplate_max_words: int = 40     # a boilerplate phrase condemns only texts this short
    max_top_ngram_ratio: float = 0.2    # Gopher-style coverage of the most frequent 2-gram (3: -0.02, 4: -0.04)
    ngram_min_repeats: int = 3          # ... and it must occur at least this often
    max_duplicate_line_ratio: float = 0.3
    duplicate_lines_min_lines: int = 3
    tail_loop_min_repeats: int = 3      # copies of the repeated unit at the end of the text
    tail_loop_min_tokens: int = 12      # tokens covered by those copies


IMAGE_PRESETS: dict[str, ImageThresholds] = {
    "default": ImageThresholds(),
    "datacomp_basic": ImageThresholds(min_side=200, min_pixels=0, max_aspect_ratio=3.0),
    "lenient": ImageThresholds(min_side=32, min_pixels=0, max_aspect_ratio=10.0, max_pixels=128_000_000,
                               min_jpeg_quality=10, min_bits_per_pixel=0.02, blank_max_std=1.0),
}

TEXT_PRESETS: dict[str, TextThresholds] = {
    "default": TextThresholds(),
    "datacomp_basic": TextThresholds(min_caption_words=3, min_caption_chars=5),
    "lenient": TextThresholds(min_caption_words=1, min_caption_chars=1, max_chars=200_000, max_symbol_ratio=0.8,
                              max_digit_ratio=0.95, max_top_ngram_ratio=0.3, max_duplicate_line_ratio=0.5,
                              tail_loop_min_repeats=4, tail_loop_min_tokens=24),
}


def resolve(presets: Mapping[str, Any], preset: str, overrides: Mapping[str, Any], setting: str = "preset") -> Any:
    """The preset's thresholds with every non-None override applied; ValueError names a bad value."""
    if preset not in presets:
        raise ValueError(f"{setting}: unknown preset {preset!r}; known: {', '.join(sorted(presets))}")
    base = presets[preset]
    values = {k: v for k, v in overrides.items() if v is not None}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        if value < 0:
            raise ValueError(f"{name}: must be >= 0 (0 disables the rule), got {value}")
    return dataclasses.replace(base, **values)
