"""What a model sees of a sample: its first image, decoded, and its text — or why it cannot.

MLM-Filter scores one image against one caption; a sample with several images is judged by its
first (the one its caption most often describes). Failures are per sample and named, never a
batch failure: the image is read and decoded by ``curate.media.decode.read_decoded`` (unfetchable
bytes quarantine the sample as ``image:unreadable:*``, undecodable ones reject it as
``image:corrupt`` or ``image:too_large_to_decode``, as in every model stage), and an image whose
aspect ratio no Qwen2-VL-style processor accepts (over 200, the limit in its ``smart_resize``) is
rejected as ``image:unsupported_by_model``.
JPEGs are decoded at the smallest DCT scale that still gives the engine twice the pixels it keeps.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from curate.base import Drop
from curate.media.decode import read_decoded

MAX_ASPECT_RATIO = 200.0
DRAFT_MARGIN = 2.0   # decode JPEGs to at least twice the pixels the model's processor keeps


@dataclass(frozen=True)
class DraftTarget:
    """JPEG DCT-scaled decoding (``curate.media.decode``'s ``draft_to``): the engine's image processor
    downsamples every image to at most ``model_pixels`` anyway, so decoding a 4000x3000 JPEG at
    full size is wasted work; decoding to >= DRAFT_MARGIN x model_pixels keeps the processor's
    own resize in charge of the final pixels."""
    model_pixels: int

    def draft_request(self, w: int, h: int) -> tuple[int, int]:
        want = DRAFT_MARGIN * self.model_pixels
        if w * h <= want:
            return w, h
        scale = math.sqrt(want / (w * h))
        return max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))


def load_image(ref: Mapping[str, Any], max_pixels: int, max_side: int, model_pixels: int | None = None) -> Any:
    """Decoded RGB PIL image (longer side at most `max_side`), or the Drop that says why not."""
    im = read_decoded(ref, max_pixels, DraftTarget(model_pixels) if model_pixels else None)
    if isinstance(im, Drop):
        return im
    w, h = im.size
    aspect = max(w, h) / max(1, min(w, h))
    if aspect > MAX_ASPECT_RATIO:
        return Drop("image:unsupported_by_model", f"aspect ratio {aspect:.0f} > {MAX_ASPECT_RATIO:.0f}")
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample=3)  # bicubic
    return im


def load_images(refs: Sequence[Mapping[str, Any]], threads: int, max_pixels: int, max_side: int,
                model_pixels: int | None = None) -> list[Any]:
    """`load_image` for many references on a thread pool, in order."""
    if not refs:
        return []
    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(lambda r: load_image(r, max_pixels, max_side, model_pixels), refs))


def texts_to_judge(batch: Any, categories: Sequence[str] | None, conversation_text: str) -> list[str | None]:
    """Per row: the caption (or first answer of a conversation) to judge; None: not judged."""
    from curate.scoring.stages import sample_text
    refs = batch.column("images").to_pylist()
    texts = batch.column("text").to_pylist()
    convs = batch.column("conversations").to_pylist()
    cats = batch.column("category").to_pylist()
    wanted = set(categories) if categories is not None else None
    out: list[str | None] = []
    for ref, text, conv, cat in zip(refs, texts, convs, cats):
        judged = bool(ref) and (wanted is None or cat in wanted)
        out.append((sample_text(text, conv, conversation_text) or None) if judged else None)
    return out
