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
``image:truncated`` (progressive)      JPEG scan headers                  a byte search, no decode
``image:corrupt`` (decode failed)      a ~64 px copy                      JPEG 1/8-scale decode
``image:blank``                        per-channel std of that copy       one pass in C
``image:truncated`` (baseline)         decoder grey fill in that copy     a row check
``image:low_bits_per_pixel``           encoded size / pixels              none (lossy formats)
=====================================  =================================  ==========================

Why this order: header rules need no I/O at all, so the common rejections (small, banner-shaped,
bombs) cost nothing. Aspect ratio runs before the size rules so that a 1200x100 banner is named a
banner. JPEG quality needs only the quantization tables that ``Image.open`` parses without
``load()`` (the estimate is cached per table). The blank check decodes JPEGs at the 1/8 DCT scale
(~1/64 of the IDCT work; libjpeg through OpenCV, ``jpeg.reduced_decode``) and also proves that the
bytes decode at all — a payload that fails is ``image:corrupt``. A JPEG cut short with its end
marker put back decodes *without* an error: ``curate.filters.jpeg`` explains the two signs it
leaves (``image:truncated``). Blank is
named before baseline truncation: a uniform mid-grey image is blank whatever made it. Bits per
pixel runs last: a uniform image also compresses to almost nothing, and "blank" is the better name.

Bytes are read for a whole batch at once (``prefetch``: each container opened once, members read
in offset order), and only for images that passed the header rules. The pixel checks (corrupt,
blank, baseline truncation) share one reduced decode and run when ``blank_max_std`` is on.

Unreadable *bytes* (a missing file, a short read from a container) are *quarantined*, not rejected:
the sample may be fine and the storage broken, so a rerun can recover it. Bytes that are there but
are not a decodable image are rejected as ``image:corrupt``.

A sample with several images is rejected if any image fails (the reason of the first failing
image, the detail says which). Text-only samples pass.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import field
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

from curate import images as I
from curate.filters.common import Drop, read_or_drop, split_drops
from curate.filters.jpeg import (decoder_fill_rows, estimate_jpeg_quality, max_channel_std_of,
                                 progressive_scans_missing, reduced_decode)
from curate.filters.presets import IMAGE_PRESETS, ImageThresholds, preset_settings, thresholds_of
from curate.base import BatchResult, Resources, Stage, register

__all__ = ["ImageFilter", "check_image", "check_sample", "estimate_jpeg_quality", "header_drop", "max_channel_std"]

LOSSY_FORMATS = frozenset({"JPEG", "WEBP", "MPO", "JPEG2000"})

# Side (in pixels) the blank check looks at: the 1/8 DCT scale gets close to it for free.
BLANK_PROBE_SIDE = 64

ReadBytes = Callable[[Mapping[str, Any]], bytes]


# --- measurements ---------------------------------------------------------------------------------
def max_channel_std(im: Image.Image) -> float:
    """Largest per-channel standard deviation on a 0..255 scale (16-bit and float images rescaled).

    8-bit images go through Pillow's C histogram (256 bins per band) and two dot products: the
    same number as numpy's std over the pixels, at a tenth of the cost on a 64 px copy.
    """
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        arr = np.asarray(im, dtype=np.float64).reshape(-1, 1)
        arr = arr * (255.0 / 65535.0) if im.mode != "F" else arr * (255.0 if arr.size and arr.max() <= 1.0 else 1.0)
        return float(arr.std(axis=0).max()) if arr.size else 0.0
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    hist = np.asarray(im.histogram(), dtype=np.float64).reshape(-1, 256)
    count = hist.sum(axis=1)
    if not count.all():
        return 0.0
    levels = np.arange(256, dtype=np.float64)
    mean = hist @ levels / count
    var = hist @ (levels * levels) / count - mean * mean
    return float(np.sqrt(np.maximum(var, 0.0)).max())


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


def _known_size(ref: Mapping[str, Any]) -> tuple[int, int] | None:
    width, height = ref.get("width"), ref.get("height")
    return (int(width), int(height)) if width and height else None


def needs_bytes(ref: Mapping[str, Any], th: ImageThresholds) -> bool:
    """Whether the rules left after the header rules need the encoded bytes of this image."""
    return _known_size(ref) is None or bool(th.min_jpeg_quality) or bool(th.blank_max_std)


def reference_drop(ref: Mapping[str, Any], th: ImageThresholds) -> Drop | None:
    """The header rules, when ingest recorded the size: no I/O at all."""
    size = _known_size(ref)
    return header_drop(*size, th) if size else None


def bits_per_pixel_drop(ref: Mapping[str, Any], size: tuple[int, int], encoded: int, th: ImageThresholds
                        ) -> Drop | None:
    fmt = (ref.get("format") or "").upper()
    if th.min_bits_per_pixel and fmt in LOSSY_FORMATS and encoded >= 0:
        bpp = encoded * 8 / (size[0] * size[1])
        if bpp < th.min_bits_per_pixel:
            return Drop("image:low_bits_per_pixel", f"{bpp:.3f} bits per pixel < {th.min_bits_per_pixel:g}")
    return None


def _unreadable_drop(exc: I.UnreadableImage) -> Drop:
    if exc.reason in ("decompression_bomb", "too_large_to_decode"):
        return Drop("image:too_large_to_decode", exc.detail)
    return Drop("image:corrupt", f"{exc.reason}: {exc.detail}")


def pixel_drop(im: Image.Image, data: bytes, th: ImageThresholds) -> Drop | None:
    """Decode a small copy once: it must decode (corrupt), not be flat (blank), not be decoder fill.

    JPEGs (one or three components) decode at the 1/8 DCT scale — one pixel per 8x8 block, the
    block means; only the entropy decoding remains — converted to RGB (BGR order) by libjpeg itself
    (``jpeg.reduced_decode``). CMYK JPEGs (no known fill value: not judged for truncation) go
    through Pillow's draft mode, other formats decode in full. Copies larger than ~64 px are
    reduced to about that. The std of 8x8 block means is at most the std of a finer copy, so a borderline
    image reads as blank sooner than on a full decode.
    """
    if im.format == "JPEG" and im.mode in ("RGB", "L"):
        pixels = reduced_decode(data, grey=im.mode == "L")
        if pixels is None:
            return Drop("image:corrupt", "decode failed: libjpeg could not decode the scan data")
        drop = blank_drop(pixels, th)
        fill = decoder_fill_rows(pixels) if drop is None else 0
        if fill:
            return Drop("image:truncated", f"JPEG data ends early: the bottom {fill} of {pixels.shape[0]} rows of "
                                           f"the 1/8-scale decode are the decoder's grey fill")
        return drop
    try:
        small = I.load_small(im, 1 if im.format == "JPEG" else 0)
    except I.UnreadableImage as exc:
        return Drop("image:corrupt", f"decode failed: {exc.detail}")
    if small.mode.startswith("I;16"):
        small = small.convert("I")
    elif small.mode not in ("RGB", "L", "I", "F"):
        small = small.convert("RGB")
    factor = max(1, min(small.size) // BLANK_PROBE_SIDE)
    return _blank_verdict(max_channel_std(small.reduce(factor) if factor > 1 else small), th)


def blank_drop(pixels: np.ndarray, th: ImageThresholds) -> Drop | None:
    """The blank rule on an 8-bit H x W [x 3] copy, reduced (box means) to ~``BLANK_PROBE_SIDE`` px."""
    factor = max(1, min(pixels.shape[:2]) // BLANK_PROBE_SIDE)
    if factor > 1:
        pixels = np.asarray(Image.fromarray(pixels).reduce(factor))
    return _blank_verdict(max_channel_std_of(pixels), th)


def _blank_verdict(std: float, th: ImageThresholds) -> Drop | None:
    if std < th.blank_max_std:
        return Drop("image:blank", f"max channel std {std:.2f} < {th.blank_max_std:g}")
    return None


def check_bytes(ref: Mapping[str, Any], data: bytes, th: ImageThresholds) -> Drop | None:
    """The rules that look at the encoded bytes (and, for blank/truncated/corrupt, a reduced decode)."""
    try:
        im = I.open_image(data, th.max_pixels)
    except I.UnreadableImage as exc:
        return _unreadable_drop(exc)
    size = _known_size(ref)
    if size is None:
        size = im.size
        drop = header_drop(*size, th)
        if drop:
            return drop
    if im.format == "JPEG":
        if th.min_jpeg_quality:
            quality = estimate_jpeg_quality(getattr(im, "quantization", None))
            if quality is not None and quality < th.min_jpeg_quality:
                return Drop("image:low_jpeg_quality", f"estimated JPEG quality {quality:.0f} < {th.min_jpeg_quality}")
        missing = progressive_scans_missing(data) if im.info.get("progressive") else []
        if missing:
            return Drop("image:truncated", f"progressive JPEG ends before components {missing} are fully refined")
    if th.blank_max_std:
        drop = pixel_drop(im, data, th)
        if drop:
            return drop
    encoded = ref.get("size")
    return bits_per_pixel_drop(ref, size, len(data) if encoded is None or encoded < 0 else encoded, th)


def check_image(ref: Mapping[str, Any], th: ImageThresholds, read: ReadBytes = I.read_image_bytes) -> Drop | None:
    """Every rule for one image reference; None when the image passes."""
    drop = reference_drop(ref, th)
    if drop is not None:
        return drop
    if not needs_bytes(ref, th):
        encoded = ref.get("size")
        return bits_per_pixel_drop(ref, _known_size(ref), -1 if encoded is None else encoded, th)
    got = read_or_drop(ref, read)
    return got if isinstance(got, Drop) else check_bytes(ref, got, th)


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


def prefetch(rows: Sequence[Sequence[Mapping[str, Any]] | None], th: ImageThresholds) -> ReadBytes:
    """Read, in one pass per container file, the bytes every image of a batch will need; returns a
    `read` for ``check_sample`` that serves them (and raises a failed read's error for its image)."""
    wanted = [ref for refs in rows for ref in (refs or []) if reference_drop(ref, th) is None and needs_bytes(ref, th)]
    fetched = {id(ref): got for ref, got in zip(wanted, I.read_many(wanted))}

    def read(ref: Mapping[str, Any]) -> bytes:
        got = fetched[id(ref)] if id(ref) in fetched else I.read_image_bytes(ref)
        if isinstance(got, Exception):
            raise got
        return got
    return read


# --- the stage ------------------------------------------------------------------------------------
@register
class ImageFilter(Stage):
    name: ClassVar[str] = "image_filter"
    description: ClassVar[str] = ("Rule-based image filtering: decode budget, aspect ratio, min side/pixels, corrupt, "
                                  "JPEG quality, truncated, blank, bits per pixel. Header rules need no I/O.")
    requires: ClassVar[tuple[str, ...]] = ("images",)
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=128, kind="task")

    Config = preset_settings("ImageFilter", __name__, ImageThresholds, IMAGE_PRESETS, extra=[
        ("io_threads", int, field(default=4, metadata={"doc": "Threads reading and decoding images in a batch."}))])

    def validate_config(self) -> None:
        self.thresholds: ImageThresholds = thresholds_of(self.config, ImageThresholds, IMAGE_PRESETS)
        if self.config.io_threads < 1:
            raise ValueError(f"io_threads: must be >= 1, got {self.config.io_threads}")

    def process_batch(self, batch: pa.Table) -> BatchResult:
        rows = batch.column("images").to_pylist()
        th = self.thresholds
        read = prefetch(rows, th)
        if self.config.io_threads > 1 and len(rows) > 1:
            with ThreadPoolExecutor(self.config.io_threads) as pool:
                drops = list(pool.map(lambda refs: check_sample(refs, th, read), rows))
        else:
            drops = [check_sample(refs, th, read) for refs in rows]
        return split_drops(batch, drops)
