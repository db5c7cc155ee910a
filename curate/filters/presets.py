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
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional, Sequence, get_type_hints


def limit(default: Any, doc: str, gate: bool = False) -> Any:
    """A threshold, declared once: its default, its unit and meaning (`doc`). `gate` marks settings
    that scope a rule (0 is a legal value, not "off") rather than being its limit."""
    return field(default=default, metadata={"doc": doc, "gate": gate})


@dataclass(frozen=True)
class ImageThresholds:
    """Limits of the image rules. 0 (or 0.0) disables a rule."""
    min_side: int = limit(112, "Smallest allowed shorter side in pixels (inclusive).")
    min_pixels: int = limit(16 * 28 * 28, "Smallest allowed width x height (inclusive).")
    max_aspect_ratio: float = limit(5.0, "Largest allowed long side / short side (inclusive).")
    max_pixels: int = limit(64_000_000, "Largest width x height the pipeline will decode (decompression bombs).")
    min_jpeg_quality: int = limit(25, "Smallest IJG quality (1..100) estimated from a JPEG's luminance table.")
    min_bits_per_pixel: float = limit(0.04, "Smallest encoded bits per pixel of lossy formats.")
    blank_max_std: float = limit(3.0, "Images whose largest per-channel std (0..255, on a small copy: JPEGs at "
                                      "the 1/8 DCT scale, all reduced to ~64 px) is below this are blank. Also "
                                      "gates the reduced decode (corrupt, truncated).")
    min_laplacian_variance: float = limit(0.0, "Images whose variance of the Laplacian, on a grey copy with its shorter "
                                               "side 256 px, is below this are blurry (image_quality: ~400 separated the "
                                               "bundled photos from the same blurred by 1 px at a 400 px view).")
    max_qr_area: float = limit(0.0, "Largest fraction (0..1) of an image that QR codes found on that grey copy may "
                                    "cover (image_quality; OpenCV's ArUco QR detector).")


@dataclass(frozen=True)
class TextThresholds:
    """Limits of the text rules. 0 (or 0.0) disables a rule."""
    min_caption_words: int = limit(2, "Fewest words in a caption (CJK characters count as words); answers may "
                                      "legitimately be 'Yes' or '42'.")
    min_caption_chars: int = limit(5, "Fewest non-space characters in a caption.")
    max_chars: int = limit(50_000, "Most characters in a caption or answer.")
    max_symbol_ratio: float = limit(0.6, "Largest symbols / non-space characters.")
    max_digit_ratio: float = limit(0.8, "Largest digits / non-space characters (captions only).")
    ratio_min_chars: int = limit(10, "The ratio rules only judge texts with this many non-space characters.", gate=True)
    boilerplate_max_words: int = limit(40, "Boilerplate phrases condemn only texts this short.")
    max_top_ngram_ratio: float = limit(0.2, "Largest character coverage of the top 2-gram (Gopher; 3-gram: minus "
                                            "0.02, 4-gram: minus 0.04).")
    ngram_min_repeats: int = limit(3, "The top n-gram must occur this often to count.", gate=True)
    max_duplicate_line_ratio: float = limit(0.3, "Largest fraction of repeated non-empty lines.")
    duplicate_lines_min_lines: int = limit(3, "The duplicate-line rule needs this many lines.", gate=True)
    tail_loop_min_repeats: int = limit(3, "Copies of the unit that make a tail loop.")
    tail_loop_min_tokens: int = limit(12, "Tokens the copies must cover to make a tail loop.")


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


def preset_settings(owner: str, module: str, thresholds: type, presets: Mapping[str, Any],
                    extra: Sequence[tuple[str, type, Any]] = ()) -> type:
    """The settings dataclass of a preset-backed stage, derived from its thresholds class.

    `owner` and `module` name the stage class that holds it (``Config`` pickles by reference, as
    a nested class would). Fields: ``preset`` (a ``Literal`` of the preset names, so the recipe schema lists them), then one
    override per threshold with the same name, type ``T | None`` and doc (None: the preset's value),
    then `extra` (name, type, field). Declaring a threshold once in `thresholds` is enough for it
    to become a setting, a schema entry and a report value.
    """
    hints = get_type_hints(thresholds)
    fields: list[tuple[str, Any, Any]] = [("preset", Literal[tuple(presets)], field(default="default", metadata={
        "doc": f"Named thresholds: {', '.join(presets)}. Single settings below override it."}))]
    for f in dataclasses.fields(thresholds):
        tail = " None: the preset's value" + ("." if f.metadata.get("gate") else "; 0 turns the rule off.")
        fields.append((f.name, Optional[hints[f.name]], field(default=None, metadata={"doc": f.metadata["doc"] + tail})))
    cls = dataclasses.make_dataclass("Config", [*fields, *extra])
    cls.__module__, cls.__qualname__ = module, f"{owner}.Config"  # pickles by reference as owner.Config
    return cls


def thresholds_of(config: Any, thresholds: type, presets: Mapping[str, Any]) -> Any:
    """The thresholds a config selects: its preset with every non-None override applied."""
    names = [f.name for f in dataclasses.fields(thresholds)]
    return resolve(presets, config.preset, {n: getattr(config, n) for n in names})


def resolve(presets: Mapping[str, Any], preset: str, overrides: Mapping[str, Any]) -> Any:
    """The preset's thresholds with every non-None override applied; ValueError names a bad value.
    The preset name itself is checked where every ``Literal`` setting is (``curate.base.config_schema.check_config``, for every stage)."""
    base = presets[preset]
    values = {k: v for k, v in overrides.items() if v is not None}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        if value < 0:
            raise ValueError(f"{name}: must be >= 0 (0 disables the rule), got {value}")
    return dataclasses.replace(base, **values)
