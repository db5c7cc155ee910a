"""Chained near-duplicates with known answers, for tests and ``bench/bench_dedup.py``.

Planted sets (``planted``) have tight groups: every copy is close to its original. Real corpora
also hold chains — edits of edits, a meme and its variants, product shots on one background —
where each item is close to the next and the ends are far apart. Taken as connected components
(single linkage), a chain collapses to one survivor and removes items nowhere near it. These
corpora make that case on purpose:

* ``image_chains``: a smooth random background; each step adds one translucent shape, so each
  image is a few pHash bits from the previous one and a long chain drifts well past 12 bits.
* ``caption_chains``: a caption of 14 words; each step replaces one word, so neighbours have a
  Jaccard of ~0.7-0.85 on character 5-grams and the ends fall far below 0.6.

Only numpy and Pillow are imported (the bench loads this file next to an older checkout's code).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

WORDS = ("red small old wooden bright tall quiet shiny broken green wet striped dusty golden narrow frozen "
         "crowded empty painted rusty tiny huge silver purple car dog house bicycle boat teapot guitar lamp "
         "horse bridge kite chair umbrella tractor violin lighthouse suitcase parrot windmill sofa camera tent "
         "beach garden kitchen market station forest harbour library street field desert museum airport village "
         "canyon rooftop bakery island stadium valley morning evening winter summer near under behind beside").split()


@dataclass(frozen=True)
class Link:
    key: str
    chain: int          # which chain
    step: int           # position along the chain (0 = its start)
    text: str | None = None
    image: bytes | None = None


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Smooth colour noise: a few random low-frequency waves per channel (no flat regions: pHash is stable)."""
    y, x = np.mgrid[0:size, 0:size] / size
    channels = []
    for _ in range(3):
        v = np.zeros((size, size))
        for _ in range(4):
            fx, fy, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
            v += rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * (fx * x + fy * y) + phase)
        channels.append((v - v.min()) / max(np.ptp(v), 1e-9) * 255)
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8))


def _with_shape(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One translucent ellipse or rectangle, 15-30% of the side, alpha 0.35-0.55, random colour."""
    size = im.size[0]
    overlay = Image.new("RGBA", im.size, (0, 0, 0, 0))
    w, h = (int(rng.uniform(0.15, 0.30) * size) for _ in range(2))
    x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
    fill = (*(int(c) for c in rng.integers(0, 256, 3)), int(rng.uniform(0.35, 0.55) * 255))
    draw = ImageDraw.Draw(overlay)
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h), fill=fill)
    return Image.alpha_composite(im.convert("RGBA"), overlay).convert("RGB")


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def image_chains(chains: int = 4, length: int = 24, seed: int = 0, size: int = 192) -> list[Link]:
    """``chains`` chains of ``length`` images, each one translucent shape more than the previous."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(chains):
        im = _background(rng, size)
        for step in range(length):
            out.append(Link(f"chain{c:02d}/img{step:03d}", c, step, image=_jpeg(im)))
            im = _with_shape(im, rng)
    return out


def caption_chains(chains: int = 2, length: int = 20, seed: int = 0, words: int = 14) -> list[Link]:
    """``chains`` chains of ``length`` captions, each with one word replaced (never the same position
    twice in a row, so the chain drifts instead of flipping one word back and forth)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(chains):
        text = [str(w) for w in rng.choice(WORDS, words)]
        last = -1
        for step in range(length):
            out.append(Link(f"chain{c:02d}/txt{step:03d}", c, step, text=" ".join(text) + "."))
            at = int(rng.choice([i for i in range(words) if i != last]))
            text[at] = str(rng.choice([w for w in WORDS if w != text[at]]))
            last = at
    return out
