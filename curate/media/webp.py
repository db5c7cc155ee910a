"""WebP stills decoded by libwebp through OpenCV: the same pixels as Pillow's decode, for less CPU.

The image filter's pixel rules (blank, corrupt) and the dedup thumbnail need every WebP decoded in
full (libwebp has no cheap reduced decode like JPEG's DCT scaling). Pillow 13 decodes WebP through
libwebp's animation decoder into RGBA; OpenCV calls the still-image decoder and can ask it for RGB.
Measured on the bench's photos (49 WebPs, 41 KB, 0.9 Mpixel on average; one process, the 2-core
machine loaded): the decode alone 8.3 CPU-ms an image through Pillow, 4.4 through OpenCV (+0.45 for
the copy into a Pillow image; swapping BGR to RGB in numpy instead cost 2.7 ms more, hence
``IMREAD_COLOR_RGB``); the whole pixel path (open, decode, blank) 9.3-11.1 against 8.3-8.7 ms, a
smaller gain because ``open_image`` still lets Pillow open the file for the header rules, and its
WebP open sets up the animation decoder (~2 ms of that path under load).
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def webp_decode(im: Image.Image, data: bytes) -> Image.Image | None:
    """A still WebP (from ``open_image``) decoded by libwebp through OpenCV, as an RGB image; None for
    anything else, or when OpenCV cannot decode it (the caller then decodes with Pillow, whose
    verdict and detail stand).

    Why: Pillow decodes WebP through libwebp's animation decoder into RGBA, OpenCV calls libwebp's
    still decoder for RGB (less CPU: see the module docstring). Both give libwebp's non-premultiplied
    colour samples, so the pixels are the same (``tests/test_one_decode.py`` checks lossy, lossless,
    alpha and damaged payloads and the bench's WebPs); alpha, which Pillow keeps, is used by no rule
    here: blank converts to RGB and the grey conversions ignore it. EXIF orientation is ignored, as
    Pillow's decode does."""
    if im.format != "WEBP" or im.mode not in ("RGB", "RGBA") or getattr(im, "n_frames", 1) != 1:
        return None
    import cv2   # OpenCV, as curate.media.jpeg imports it: on first use
    rgb = getattr(cv2, "IMREAD_COLOR_RGB", None)   # OpenCV >= 4.11: RGB straight from libwebp, no channel swap
    if rgb is None:
        return None
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), rgb | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        return None
    if pixels is None or pixels.shape[:2] != (im.height, im.width):
        return None
    return Image.fromarray(pixels)
