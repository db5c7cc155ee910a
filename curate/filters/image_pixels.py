"""The image filter's pixel rules (corrupt, blank, decoder fill) on the one reduced decode of an image,
which also yields the 32x32 thumbnail ``image_dedup`` hashes (``curate.media.image_facts``).

The decode (``decode_checks``):

* **JPEG, one or three components** (Pillow modes ``L`` / ``RGB``): libjpeg decodes at the DCT scale
  pHash has always used (the smallest of 1/8, 1/4, 1/2, 1 that keeps both sides >= 128 px), in
  ``YCbCr`` — no colour conversion, the Y plane is exactly the grey decode. From it:
  the thumbnail (Y, Lanczos to 32x32); *blank* on that decode box-reduced to the 1/8 grid and on to
  ~``BLANK_PROBE_SIDE`` px (the grid the filter always judged), then converted to RGB; *decoder fill* on the Y plane —
  a zero block decodes to exactly 128 at any scale, and libjpeg fills every block after the data
  ends with zeros, so the bottom rows of 128 are the missing data (counted in 1/8-scale rows).
  When Pillow refuses the data (it raises on data that ends early, where libjpeg itself only
  warns), the filter falls back to libjpeg through OpenCV at 1/8 scale (``legacy_pixel_drop``),
  which decodes such files with their fill, and carries no thumbnail for that image.
* **Other formats** decode in full (as the thumbnail always did); CMYK JPEGs through Pillow's draft
  mode. The thumbnail is the grey conversion of that same decode. (Still WebPs through OpenCV's
  libwebp give the same pixels, but measured through this function they save only 2-5%: Pillow
  still opens the file for the header rules. Not worth a second decoder.)
* **No thumbnail wanted** (no later stage of the run reads ``image_facts``; ``thumbnail=False``):
  JPEGs decode at 1/8 scale through ``legacy_pixel_drop`` and nothing is resized.

Why the scale is pHash's and not always 1/8 when the thumbnail is wanted: it must stay the one
``image_dedup`` has always computed (its verdicts depend on it), and in libjpeg the entropy decoding,
which every scale pays, is most of a reduced decode's cost: on the bench's photos (72 KB JPEGs,
``bench/bench_decode_parts.py``) 1.03 CPU-ms at pHash's scale through Pillow, 1.06 at 1/8 through
Pillow, 0.90 at 1/8 through OpenCV, plus 0.22 for the thumbnail's Lanczos.
"""
from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

from curate.media import images as I
from curate.base import Drop
from curate.filters.image_quality import decoded_quality_drop, quality_rules_on
from curate.media.jpeg import decoder_fill_rows, max_channel_std_of, reduced_decode
from curate.filters.presets import ImageThresholds
from curate.media.image_facts import THUMB_DRAFT, grey_thumbnail

# Side (in pixels) the blank check looks at: the 1/8 DCT scale gets close to it for free.
BLANK_PROBE_SIDE = 64


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


def blank_verdict(std: float, th: ImageThresholds) -> Drop | None:
    if std < th.blank_max_std:
        return Drop("image:blank", f"max channel std {std:.2f} < {th.blank_max_std:g}")
    return None


def blank_drop(pixels: np.ndarray, th: ImageThresholds) -> Drop | None:
    """The blank rule on an 8-bit H x W [x 3] copy, reduced (box means) to ~``BLANK_PROBE_SIDE`` px."""
    factor = max(1, min(pixels.shape[:2]) // BLANK_PROBE_SIDE)
    if factor > 1:
        pixels = np.asarray(Image.fromarray(pixels).reduce(factor))
    return blank_verdict(max_channel_std_of(pixels), th)


def _fill_drop(fill: int, rows: int) -> Drop:
    return Drop("image:truncated", f"JPEG data ends early: the bottom {fill} of {rows} rows of "
                                   f"the 1/8-scale decode are the decoder's grey fill")


def legacy_pixel_drop(im: Image.Image, data: bytes, th: ImageThresholds) -> Drop | None:
    """The pixel rules on a decode of their own (no thumbnail): JPEGs (1 or 3 components) at 1/8 scale by
    libjpeg through OpenCV (BGR; a zero block is exactly 128,128,128), CMYK JPEGs through Pillow's
    draft mode, other formats in full. Copies larger than ~64 px are reduced to about that."""
    if im.format == "JPEG" and im.mode in ("RGB", "L"):
        pixels = reduced_decode(data, grey=im.mode == "L")
        if pixels is None:
            return Drop("image:corrupt", "decode failed: libjpeg could not decode the scan data")
        drop = blank_drop(pixels, th)
        fill = decoder_fill_rows(pixels) if drop is None else 0
        return _fill_drop(fill, pixels.shape[0]) if fill else drop
    try:
        small = I.load_small(im, 1 if im.format == "JPEG" else 0)
    except I.UnreadableImage as exc:
        return Drop("image:corrupt", f"decode failed: {exc.detail}")
    return _blank_of_decoded(small, th)


def _blank_of_decoded(small: Image.Image, th: ImageThresholds) -> Drop | None:
    """Blank on a decoded copy, box-reduced to ~``BLANK_PROBE_SIDE`` px."""
    if small.mode.startswith("I;16"):
        small = small.convert("I")
    elif small.mode not in ("RGB", "L", "I", "F"):
        small = small.convert("RGB")
    factor = max(1, min(small.size) // BLANK_PROBE_SIDE)
    return blank_verdict(max_channel_std(small.reduce(factor) if factor > 1 else small), th)


def _load(im: Image.Image) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
        return True
    except Exception:  # noqa: BLE001 — Pillow raises many types for bad payloads; the fallback judges them
        return False


def decode_checks(im: Image.Image, data: bytes, th: ImageThresholds, thumbnail: bool = True
                  ) -> tuple[Drop | None, np.ndarray | None]:
    """The pixel rules (corrupt, blank, truncated) on one reduced decode of `im` (from ``open_image``,
    header parsed, nothing decoded) and, with `thumbnail`, that decode's 32x32 thumbnail (None when
    this image had to be judged on a decode that does not give pHash's thumbnail, or was rejected).

    Without `thumbnail` (no later stage reads ``image_facts``) nothing is resized, and a JPEG decodes at
    1/8 scale through ``legacy_pixel_drop`` — the decode these rules are defined on, which the one
    decode matches verdict for verdict (``tests/test_one_decode.py``) — unless the blur / QR rules are
    on: they reuse the pHash-scale decode when it is large enough, so that path stays."""
    width, height = im.size
    thumb_ok = width * height <= I.MAX_DECODE_PIXELS    # beyond it image_dedup rejects without a thumbnail
    if im.format == "JPEG" and im.mode in ("RGB", "L") and not thumbnail and not quality_rules_on(th):
        return legacy_pixel_drop(im, data, th), None
    if im.format == "JPEG" and im.mode in ("RGB", "L"):
        im.draft("YCbCr" if im.mode == "RGB" else "L", THUMB_DRAFT)
        scale = int(im.decoderconfig[0]) if im.decoderconfig else 1
        if not _load(im):
            drop = legacy_pixel_drop(I.open_image(data), data, th)
            return drop or decoded_quality_drop(None, data, (width, height), th), None
        grid = (-(-width // 8), -(-height // 8))     # the 1/8-scale decode the rules are defined on
        factor = (8 // scale) * max(1, min(grid) // BLANK_PROBE_SIDE)
        small = im.reduce(factor) if factor > 1 else im    # box means first: the colour conversion is then ~64 px
        drop = blank_verdict(max_channel_std(small.convert("RGB") if small.mode == "YCbCr" else small), th)
        if drop is None:
            fill = decoder_fill_rows(np.asarray(im.getchannel(0) if im.mode == "YCbCr" else im))
            if fill:
                drop = _fill_drop(-(-fill * scale // 8), grid[1])
        drop = drop or decoded_quality_drop(im, data, (width, height), th)
        return drop, (grey_thumbnail(im) if drop is None and thumb_ok and thumbnail else None)
    if im.format == "JPEG":
        return legacy_pixel_drop(im, data, th) or decoded_quality_drop(None, data, (width, height), th), None
    try:
        small = I.load_small(im, 0)
    except I.UnreadableImage as exc:
        return Drop("image:corrupt", f"decode failed: {exc.detail}"), None
    drop = _blank_of_decoded(small, th) or decoded_quality_drop(small, data, (width, height), th)
    return drop, (grey_thumbnail(small) if drop is None and thumb_ok and thumbnail else None)
