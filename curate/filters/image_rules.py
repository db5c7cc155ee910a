"""Rule-based image filtering: the cheap checks first, pixels only when a rule needs them.

The rules, in the order they run (the first that fails names the reason):

=====================================  =================================  ==========================
reason                                 what is looked at                  cost
=====================================  =================================  ==========================
``image:too_large_to_decode``          width x height from the reference  none (ingest read it)
``image:aspect_ratio``                 width, height                      none
``image:min_side``                     width, height                      none
``image:min_pixels``                   width, height                      none
``image:unreadable:<code>``            fetching the bytes                 one read (*quarantined*)
``image:corrupt``                      the header                         header parse
``image:low_jpeg_quality``             JPEG quantization tables           header parse, no decode
``image:blank``                        per-channel std of a 1/8 copy      JPEG draft decode
``image:low_bits_per_pixel``           encoded size / pixels              none (lossy formats)
=====================================  =================================  ==========================

Why this order: header rules need no I/O at all, so the common rejections (small, banner-shaped,
bombs) cost nothing. Aspect ratio runs before the size rules so that a 1200x100 banner is named a
banner. JPEG quality needs only the quantization tables that ``Image.open`` parses without
``load()``. The blank check decodes with JPEG draft mode (DCT scaling, ~1/64 of the work) and also
proves that the bytes decode at all — a truncated or corrupt payload is ``image:corrupt``. Bits per
pixel runs last: a uniform image also compresses to almost nothing, and "blank" is the better name.

Unreadable *bytes* (a missing file, a short read from a container) are *quarantined*, not rejected:
the sample may be fine and the storage broken, so a rerun can recover it. Bytes that are there but
are not a decodable image are rejected as ``image:corrupt``.

A sample with several images is rejected if any image fails (the reason of the first failing
image, the detail says which). Text-only samples pass.
"""
from __future__ import annotations

import io
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

from curate import images as I
from curate.filters.common import Drop, read_or_drop, split_drops
from curate.filters.presets import IMAGE_PRESETS, ImageThresholds, resolve
from curate.base import BatchResult, Resources, Stage, register

LOSSY_FORMATS = frozenset({"JPEG", "WEBP", "MPO", "JPEG2000"})

# IJG's standard tables (ITU T.81 Annex K), natural (row-major) order — Pillow's order too.
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)

# Side (in pixels) the blank check looks at: JPEG draft mode gets close to it for free.
BLANK_PROBE_SIDE = 64

ReadBytes = Callable[[Mapping[str, Any]], bytes]


# --- measurements ---------------------------------------------------------------------------------
def estimate_jpeg_quality(quantization: Mapping[int, Sequence[int]] | None) -> float | None:
    """IJG quality (1..100) that would produce the luminance table, or None without one.

    libjpeg scales its base table by S = 5000/q (q < 50) or 200 - 2q and rounds; entries clipped to
    1 or 255 carry no information about S, so the median over the unclipped ones is inverted.
    """
    if not quantization or 0 not in quantization:
        return None
    table = np.asarray(list(quantization[0]), dtype=np.float64)
    if table.size != 64:
        return None
    informative = (table > 1) & (table < 255)
    if not informative.any():
        return 100.0 if (table <= 1).all() else 1.0
    scale = float(np.median(100.0 * table[informative] / _IJG_LUMA[informative]))
    quality = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return float(min(100.0, max(1.0, quality)))


def max_channel_std(im: Image.Image) -> float:
    """Largest per-channel standard deviation on a 0..255 scale (16-bit and float images rescaled)."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        arr = np.asarray(im, dtype=np.float64).reshape(-1, 1)
        arr = arr * (255.0 / 65535.0) if im.mode != "F" else arr * (255.0 if arr.size and arr.max() <= 1.0 else 1.0)
    else:
        arr = np.asarray(im if im.mode in ("L", "RGB") else im.convert("RGB"), dtype=np.float32)
        arr = arr.reshape(-1, 1 if arr.ndim == 2 else arr.shape[-1])
    return float(arr.std(axis=0).max()) if arr.size else 0.0


def header_drop(width: int, height: int, th: ImageThresholds) -> Drop | None:
    """The rules that need only the size: bombs, banners, thumbnails."""
    pixels = width * height
    if th.max_pixels and pixels > th.max_pixels:
        return Drop("image:too_large_to_decode", f"{width}x{height} = {pixels} pixels > {th.max_pixels}")
    short, long_ = min(width, height), max(width, height)
    if short <= 0:
        return Drop("image:corrupt", f"invalid size {width}x{height}")
    aspect = long_ / short
    if th.max_aspect_ratio and aspect > th.max_aspect_ratio:
        return Drop("image:aspect_ratio", f"aspect {aspect:.2f} > {th.max_aspect_ratio:g} ({width}x{height})")
    if th.min_side and short < th.min_side:
        return Drop("image:min_side", f"min side {short} < {th.min_side} ({width}x{height})")
    if th.min_pixels and pixels < th.min_pixels:
        return Drop("image:min_pixels", f"{pixels} pixels < {th.min_pixels} ({width}x{height})")
    return None


def _open_header(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Image.open(io.BytesIO(data))


def _blank_probe(im: Image.Image) -> Image.Image:
    """Decode a small copy: JPEG draft mode scales in the DCT, other formats are reduced after load."""
    w, h = im.size
    if im.format == "JPEG":
        factor = max(1, min(8, min(w, h) // BLANK_PROBE_SIDE))
        im.draft("RGB", (max(1, math.ceil(w / factor)), max(1, math.ceil(h / factor))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im.load()
    factor = max(1, min(im.size) // BLANK_PROBE_SIDE)
    if im.mode.startswith("I;16"):
        im = im.convert("I")
    elif im.mode not in ("RGB", "L", "I", "F"):
        im = im.convert("RGB")
    return im.reduce(factor) if factor > 1 else im


def check_image(ref: Mapping[str, Any], th: ImageThresholds, read: ReadBytes = I.read_image_bytes) -> Drop | None:
    """Every rule for one image reference; None when the image passes."""
    width, height = ref.get("width"), ref.get("height")
    known_size = bool(width) and bool(height)
    if known_size:
        drop = header_drop(int(width), int(height), th)
        if drop:
            return drop
    needs_bytes = (not known_size) or th.min_jpeg_quality or th.blank_max_std
    data: bytes | None = None
    if needs_bytes:
        got = read_or_drop(ref, read)
        if isinstance(got, Drop):
            return got
        data = got
        try:
            header = I.probe(data)
        except I.UnreadableImage as exc:
            if exc.reason == "decompression_bomb":
                return Drop("image:too_large_to_decode", exc.detail)
            return Drop("image:corrupt", f"{exc.reason}: {exc.detail}")
        if not known_size:
            width, height = header.width, header.height
            drop = header_drop(width, height, th)
            if drop:
                return drop
        im = _open_header(data)
        if th.min_jpeg_quality and im.format == "JPEG":
            quality = estimate_jpeg_quality(getattr(im, "quantization", None))
            if quality is not None and quality < th.min_jpeg_quality:
                return Drop("image:low_jpeg_quality", f"estimated JPEG quality {quality:.0f} < {th.min_jpeg_quality}")
        if th.blank_max_std:
            try:
                small = _blank_probe(im)
            except Exception as exc:  # noqa: BLE001 — Pillow raises many types for bad payloads
                return Drop("image:corrupt", f"decode failed: {type(exc).__name__}: {exc}")
            std = max_channel_std(small)
            if std < th.blank_max_std:
                return Drop("image:blank", f"max channel std {std:.2f} < {th.blank_max_std:g}")
    fmt = (ref.get("format") or "").upper()
    size = ref.get("size")
    if size is None or size < 0:
        size = len(data) if data is not None else -1
    if th.min_bits_per_pixel and fmt in LOSSY_FORMATS and size >= 0:
        bpp = size * 8 / (int(width) * int(height))
        if bpp < th.min_bits_per_pixel:
            return Drop("image:low_bits_per_pixel", f"{bpp:.3f} bits per pixel < {th.min_bits_per_pixel:g}")
    return None


def check_sample(refs: Sequence[Mapping[str, Any]] | None, th: ImageThresholds,
                 read: ReadBytes = I.read_image_bytes) -> Drop | None:
    """A sample fails with its first failing image; samples without images pass."""
    refs = refs or []
    for i, ref in enumerate(refs):
        drop = check_image(ref, th, read)
        if drop is not None:
            where = f"image {i + 1}/{len(refs)}: " if len(refs) > 1 else ""
            return Drop(drop.reason, where + (drop.detail or ""), drop.status)
    return None


# --- the stage ------------------------------------------------------------------------------------
def _threshold_field(doc: str) -> Any:
    return field(default=None, metadata={"doc": doc + " None: the preset's value; 0 turns the rule off."})


@register
class ImageFilter(Stage):
    name: ClassVar[str] = "image_filter"
    description: ClassVar[str] = ("Rule-based image filtering: decode budget, aspect ratio, min side/pixels, corrupt, "
                                  "JPEG quality, blank, bits per pixel. Header rules need no I/O.")
    requires: ClassVar[tuple[str, ...]] = ("images",)
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=128, kind="task")

    @dataclass
    class Config:
        preset: str = field(default="default", metadata={
            "doc": f"Named thresholds: {', '.join(sorted(IMAGE_PRESETS))}. Single settings below override it."})
        min_side: int | None = _threshold_field("Smallest allowed shorter side in pixels (inclusive).")
        min_pixels: int | None = _threshold_field("Smallest allowed width x height (inclusive).")
        max_aspect_ratio: float | None = _threshold_field("Largest allowed long side / short side (inclusive).")
        max_pixels: int | None = _threshold_field("Largest width x height the pipeline will decode.")
        min_jpeg_quality: int | None = _threshold_field("Smallest estimated IJG quality of JPEGs (1..100).")
        min_bits_per_pixel: float | None = _threshold_field("Smallest encoded bits per pixel of lossy formats.")
        blank_max_std: float | None = _threshold_field(
            "Images whose largest per-channel std (0..255, on a ~64 px copy) is below this are blank.")
        io_threads: int = field(default=4, metadata={"doc": "Threads reading and decoding images in a batch."})

    def validate_config(self) -> None:
        overrides = {k: v for k, v in asdict(self.config).items() if k not in ("preset", "io_threads")}
        self.thresholds: ImageThresholds = resolve(IMAGE_PRESETS, self.config.preset, overrides)
        if self.config.io_threads < 1:
            raise ValueError(f"io_threads: must be >= 1, got {self.config.io_threads}")

    def process_batch(self, batch: pa.Table) -> BatchResult:
        refs = batch.column("images").to_pylist()
        th = self.thresholds
        if self.config.io_threads > 1 and len(refs) > 1:
            with ThreadPoolExecutor(self.config.io_threads) as pool:
                drops = list(pool.map(lambda r: check_sample(r, th), refs))
        else:
            drops = [check_sample(r, th) for r in refs]
        return split_drops(batch, drops)
