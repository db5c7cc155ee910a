"""The one read-decode-or-drop path for images that a model stage or a dedup stage needs in pixels.

Every stage that feeds images to a model (``embed``, ``clip_score``, ``mllm_score``/``recaption``,
``ocr``, ``nsfw_filter``) gets its pixels here, and the dedup stages' own thumbnails use the same
mapping from decoder errors to verdicts, so a bad image gets the same verdict whichever stage meets
it first:

* bytes that cannot be fetched quarantine the sample (``read_or_drop``): ``image:unreadable:<why>``
  (``missing_file``, ``io_error``, or the reader's code: ``truncated_container``, ``missing_member``,
  ``read_timeout``...) — the data may be fine, the storage was not;
* bytes that do not decode reject it (``decode_drop``): ``image:too_large_to_decode`` for more pixels
  than the stage's budget *or* past Pillow's own decompression-bomb limit, ``image:corrupt`` for
  everything else (``empty_image``, ``not_an_image``, ``invalid_dimensions``, ``truncated_image``,
  ``corrupt_image``), the detail naming the decoder's code and message.

Decoding starts from ``images.open_image``, the one place with the decode budget and the truncation
checks; JPEGs may decode at a reduced DCT scale (``draft_to``) when the model downsamples anyway.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Protocol

from PIL import Image

from curate.base import records as R
from curate.base.drops import Drop
from curate.media import images as I

# Decoder codes that mean "too many pixels", not "bad bytes": the stage's budget and Pillow's bomb limit.
TOO_MANY_PIXELS = ("too_large_to_decode", "decompression_bomb")

ReadBytes = Callable[[Mapping[str, Any]], bytes]


class DraftTarget(Protocol):
    """What a JPEG may be decoded down to: the smallest DCT scale covering ``draft_request(w, h)``."""

    def draft_request(self, width: int, height: int) -> tuple[int, int]: ...


def read_or_drop(ref: Mapping[str, Any], read: ReadBytes = I.read_image_bytes) -> bytes | Drop:
    """The bytes of an image reference, or the quarantine Drop that says why they could not be read.

    Missing files and short reads are storage problems, not bad content: quarantined, not rejected.
    """
    try:
        return read(ref)
    except I.UnreadableImage as exc:
        return Drop(f"image:unreadable:{exc.reason}", exc.detail or str(exc), R.QUARANTINED)
    except FileNotFoundError as exc:
        return Drop("image:unreadable:missing_file", str(exc), R.QUARANTINED)
    except OSError as exc:
        return Drop("image:unreadable:io_error", f"{type(exc).__name__}: {exc}", R.QUARANTINED)


def decode_drop(exc: I.UnreadableImage) -> Drop:
    """The rejection for bytes that do not decode (see the module docstring for the mapping)."""
    reason = "image:too_large_to_decode" if exc.reason in TOO_MANY_PIXELS else "image:corrupt"
    return Drop(reason, f"{exc.reason}: {exc.detail}")


def decode_rgb(data: bytes, draft_to: DraftTarget | None = None, max_pixels: int = I.MAX_DECODE_PIXELS) -> Image.Image:
    """Decoded RGB pixels; JPEGs at the smallest DCT scale that still covers ``draft_to``'s request.

    Raises ``UnreadableImage`` with ``open_image``'s codes, or ``corrupt_image`` when the payload does
    not decode."""
    im = I.open_image(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if im.format == "JPEG" and draft_to is not None:
                im.draft("RGB", draft_to.draft_request(*im.size))
            im.load()
            return im.convert("RGB") if im.mode != "RGB" else im
    except Exception as exc:  # noqa: BLE001 — Pillow raises many types for bad payloads
        raise I.UnreadableImage("corrupt_image", f"{type(exc).__name__}: {exc}") from None


def decode_or_drop(data: bytes, max_pixels: int = I.MAX_DECODE_PIXELS,
                   draft_to: DraftTarget | None = None) -> Image.Image | Drop:
    """``decode_rgb``, or the Drop that says why the bytes give no pixels."""
    try:
        return decode_rgb(data, draft_to, max_pixels)
    except I.UnreadableImage as exc:
        return decode_drop(exc)


def read_decoded(ref: Mapping[str, Any], max_pixels: int = I.MAX_DECODE_PIXELS,
                 draft_to: DraftTarget | None = None, read: ReadBytes = I.read_image_bytes) -> Image.Image | Drop:
    """Read and decode one image reference: its RGB pixels, or the Drop (quarantine or reject) for it."""
    data = read_or_drop(ref, read)
    return data if isinstance(data, Drop) else decode_or_drop(data, max_pixels, draft_to)
