"""Two image rules that need a grey copy larger than the filter's reduced decode: blur and QR-code area.

Both serve a single image and every image of a document alike (``image_filter`` judges each image
with the same functions; a failing single image rejects its sample, a failing image inside a document
is removed from it). Both are off unless a recipe sets their limit (``ImageThresholds``).

* ``image:blurry`` — the variance of the Laplacian (the 3x3 kernel, OpenCV's ``cv2.Laplacian``) of
  the *probe copy* is below ``min_laplacian_variance``. Low variance = few sharp edges.
* ``image:qr_code`` — QR codes found in the probe copy cover more than ``max_qr_area`` of its area
  (the quadrangles of every code found, as a fraction of the image). OpenCV's ArUco-based QR detector
  (``cv2.QRCodeDetectorAruco``, in opencv-python-headless, a core dependency) finds them.

The probe copy: grey, its shorter side exactly ``PROBE_SIDE`` — JPEGs decoded by libjpeg at the DCT
scale that keeps both sides >= ``PROBE_SIDE`` (1/2, 1/4 or 1/8), every other format in full, then area
means (Pillow's BOX filter) down to that size. One scale for every size and format, so one limit means
the same everywhere. Images smaller than ``PROBE_SIDE`` are judged at their own size.

Why a copy of its own, and why 256 px: the filter's one reduced decode is pHash's (shorter side 128 to
255 px, ``curate.media.image_facts``), and it must stay exactly that (``image_dedup``'s verdicts hang on
it). On the bundled photos at their own size, sharp and blurred by 1 px at a 400 px view
(``bench/bench_image_quality.py`` prints the table), no single limit on pHash's decode tells the two
apart (right on 20 of 24 at best: sharp photos score from 571, blurred ones up to 1812), nor on a 192 px
copy (23/24); on the 256 px copy every one is right (sharp from 451, blurred up to 335: a limit of
~400), as on 384 px and full size, where the gap only narrows (1.35 at 256 px, 1.26 at 384, 1.18 full).
A fixed scale also makes one limit mean the same on a 600 px and a 6000 px image (at full size the
Laplacian of the same scene falls as its resolution grows).

Does QR detection need the full decode? Not for an area rule. On codes (versions 2, 4, 10) pasted on a
1600 px photo the probe measured the area the full decode measures (within 0.002) for every code of
versions 2 and 4 covering 3.4% of the image or more, and for version 10 from 13% (it missed one at
4.6%); the full decode also finds codes of ~1%, which no sensible ``max_qr_area`` rejects. The probe
costs a fifth of the CPU (8 ms against 45 ms a picture, decode included).

Cost: a JPEG whose pHash decode is already at full size or >= ``PROBE_SIDE`` is not decoded again; a
larger one is decoded once more at the probe's DCT scale (the entropy decoding, most of a reduced
decode's cost, is paid twice: the price of turning a rule on). Measured over ``judge_image`` with the
default preset (``bench/bench_image_quality.py``, 512..2048 px JPEGs and PNGs): blur adds 1.2..4.6
CPU-ms an image, QR detection 4.6..9.5 ms.

Why the ArUco detector rather than ``cv2.QRCodeDetector``: on the bundled photos at the probe size the
classic detector reported QR codes in 2 of 45 photos without any (a star field and the cameraman), each
covering most of the image — an area rule would have removed them — and it ran ~1.8x slower; the ArUco
one reported none, and found the codes the classic one found (and version-10 codes it missed).
Detection only: decoding the payload would cost more and miss damaged codes, which are still codes.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from curate.base import Drop
from curate.filters.presets import ImageThresholds

# Shorter side of the grey probe copy the blur and QR rules look at (see the module docstring).
PROBE_SIDE = 256


def quality_rules_on(th: ImageThresholds) -> bool:
    """Whether a rule here is on (then the filter reads and decodes every image that reaches it)."""
    return bool(th.min_laplacian_variance) or bool(th.max_qr_area)


def grey_of(decoded: Image.Image) -> np.ndarray:
    """8-bit grey pixels of a decoded image (of a YCbCr JPEG decode: its Y plane, untouched)."""
    if decoded.mode == "YCbCr":
        return np.asarray(decoded.getchannel(0))
    if decoded.mode in ("I", "F") or decoded.mode.startswith("I;16"):
        arr = np.asarray(decoded, dtype=np.float64)
        top = 1.0 if decoded.mode == "F" and arr.size and arr.max() <= 1.0 else (255.0 if decoded.mode == "F" else 65535.0)
        return np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
    return np.asarray(decoded.convert("L"))


def box_reduce(grey: np.ndarray) -> np.ndarray:
    """Area means (Pillow's BOX filter, fractional boxes) down to a shorter side of exactly PROBE_SIDE
    (the long side rounded); a copy already that small is returned as it is."""
    h, w = grey.shape[:2]
    short = min(h, w)
    if short <= PROBE_SIDE:
        return grey
    size = (PROBE_SIDE, max(1, round(h * PROBE_SIDE / w))) if w <= h else (max(1, round(w * PROBE_SIDE / h)), PROBE_SIDE)
    return np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BOX))


def probe_copy(decoded: Image.Image | None, data: bytes, full_size: tuple[int, int]) -> np.ndarray | None:
    """The grey probe copy of an image: from the filter's decode `decoded` when it is large enough (or
    is the full image), else from one more decode of `data` at the probe's DCT scale — by Pillow, or,
    for the JPEGs Pillow refuses and libjpeg decodes with a warning (the filter's fallback path,
    ``decoded`` None), by libjpeg through OpenCV. None when no decoder can decode `data`."""
    if decoded is not None and (min(decoded.size) >= PROBE_SIDE or decoded.size == tuple(full_size)):
        return box_reduce(grey_of(decoded))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            im.draft("L", (PROBE_SIDE, PROBE_SIDE))
            im.load()
        return box_reduce(grey_of(im))
    except Exception:  # noqa: BLE001 — Pillow raises many types for bad payloads; libjpeg may still decode it
        return _opencv_probe(data, full_size)


def _opencv_probe(data: bytes, full_size: tuple[int, int]) -> np.ndarray | None:
    import cv2
    scale = max(1, min(8, min(full_size) // PROBE_SIDE))
    scale = 8 if scale >= 8 else 4 if scale >= 4 else 2 if scale >= 2 else 1
    flags = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
             8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[scale] | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:   # OpenCV raises for some payloads instead of returning None: same meaning
        return None
    return box_reduce(pixels) if pixels is not None and pixels.size else None


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the 3x3 Laplacian of an 8-bit grey image (float64 response, borders reflected)."""
    import cv2
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


_DETECTOR = None


def qr_area_fraction(grey: np.ndarray) -> float:
    """Fraction of the image covered by the QR codes found in it (sum of their quadrangles' areas)."""
    import cv2
    global _DETECTOR
    if _DETECTOR is None:       # one per process: building it costs more than a detection on a small copy
        _DETECTOR = cv2.QRCodeDetectorAruco()
    found, points = _DETECTOR.detectMulti(grey)
    if not found or points is None:
        return 0.0
    quads = np.asarray(points, dtype=np.float32).reshape(-1, 4, 2)
    area = sum(abs(float(cv2.contourArea(q))) for q in quads)
    return min(1.0, area / float(grey.shape[0] * grey.shape[1]))


def quality_drop(grey: np.ndarray, th: ImageThresholds) -> Drop | None:
    """The blur rule, then the QR rule (the cheaper first), on the probe copy."""
    if th.min_laplacian_variance:
        var = laplacian_variance(grey)
        if var < th.min_laplacian_variance:
            return Drop("image:blurry", f"variance of the Laplacian {var:.1f} < {th.min_laplacian_variance:g} "
                                        f"(grey {grey.shape[1]}x{grey.shape[0]} copy)")
    if th.max_qr_area:
        area = qr_area_fraction(grey)
        if area > th.max_qr_area:
            return Drop("image:qr_code", f"QR codes cover {area:.3f} of the image > {th.max_qr_area:g}")
    return None


def decoded_quality_drop(decoded: Image.Image | None, data: bytes, full_size: tuple[int, int], th: ImageThresholds
                         ) -> Drop | None:
    """The rules here for an image the filter decoded as `decoded` (None: on a decode of their own)."""
    if not quality_rules_on(th):
        return None
    grey = probe_copy(decoded, data, full_size)
    if grey is None:
        return Drop("image:corrupt", f"decode failed at the {PROBE_SIDE} px probe scale")
    return quality_drop(grey, th)
