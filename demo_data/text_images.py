"""Deterministic text images for the demo, the ``ocr`` recipe, its tests and ``bench/bench_ocr.py``.

    python -m demo_data.text_images data/sample      # writes data/sample/ocr/text-000000.tar

Text is rendered with PIL onto plain or gradient backgrounds in DejaVu fonts (Debian
``fonts-dejavu-core``, installed by ``make install``; PIL's own scalable default font when DejaVu is
absent), at a known size, rotation and noise level, so the ground truth of every word is known.
``build_text_images`` writes a small WebDataset tar (``{key}.png`` + ``{key}.txt`` = the rendered text,
``{key}.json`` = how it was rendered) and returns the planted drops with the reason the ``ocr`` stage
must give them (``EXPECTED_OCR`` lists every key; None: kept). In a recipe with other sources, run
``ocr`` with ``categories: [ocr]``.
"""
from __future__ import annotations

import json
import sys
import tarfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from demo_data.tarfiles import png_bytes, tar_add  # one deterministic tar member and PNG encoder

DEJAVU_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/TTF", "/usr/local/share/fonts")
FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf")
SOURCE = "ocr"


@dataclass(frozen=True)
class TextSpec:
    """How one text image is rendered (recorded in its .json)."""
    lines: tuple[str, ...]
    font: str = "DejaVuSans.ttf"
    font_size: int = 28
    angle: float = 0.0          # degrees, counter-clockwise
    noise: float = 0.0          # std of Gaussian pixel noise (0-255 scale)
    background: str = "white"   # white | gradient
    seed: int = 0


@lru_cache(maxsize=64)
def load_font(name: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for d in DEJAVU_DIRS:
        path = Path(d) / name
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def render(spec: TextSpec) -> Image.Image:
    """The text drawn line by line with a margin, then rotated (expanding the canvas) and noised."""
    font = load_font(spec.font, spec.font_size)
    gap = spec.font_size // 2
    widths = [int(font.getlength(line)) for line in spec.lines]
    width = max(widths) + 2 * spec.font_size
    height = len(spec.lines) * (spec.font_size + gap) + 2 * spec.font_size
    rng = np.random.default_rng(spec.seed)
    if spec.background == "gradient":
        base = rng.integers(170, 255, size=3)
        ramp = np.linspace(0.85, 1.0, width)[None, :, None]
        bg = (np.ones((height, width, 3)) * base * ramp).astype(np.uint8)
        im = Image.fromarray(bg, "RGB")
    else:
        im = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(im)
    for i, line in enumerate(spec.lines):
        draw.text((spec.font_size, spec.font_size + i * (spec.font_size + gap)), line, font=font, fill=(20, 20, 20))
    if spec.angle:
        im = im.rotate(spec.angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=im.getpixel((0, 0)))
    if spec.noise:
        arr = np.asarray(im, dtype=np.float32) + rng.normal(0, spec.noise, size=(im.size[1], im.size[0], 1))
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return im


def text_free(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A text-free 'photo': smooth colour blobs (the OCR stage must find no agreed words in it)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3))
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(30, 120)
        color = rng.uniform(0, 255, size=3)
        weight = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - weight) + color * weight
    return Image.fromarray(img.astype(np.uint8), "RGB")


DEMO_SPECS: dict[str, TextSpec] = {
    "sign": TextSpec(("OPEN DAILY", "Fresh bread and coffee"), font_size=32),
    "invoice": TextSpec(("Invoice number 20731", "Total due 45 dollars", "Payment within 30 days"),
                        font="DejaVuSerif.ttf", font_size=26),
    "notice": TextSpec(("Please keep this door closed",), font="DejaVuSans-Bold.ttf", font_size=30,
                       background="gradient", seed=3),
    "receipt": TextSpec(("Apples 3 pieces", "Oranges 5 pieces"), font="DejaVuSansMono.ttf", font_size=24,
                        noise=8.0, seed=4),
    "tilted": TextSpec(("Station square", "North exit"), font_size=30, angle=4.0, seed=5),
}
# planted key -> the reason the ocr stage must give (None: kept with agreed text)
EXPECTED_OCR: dict[str, str | None] = {**{k: None for k in DEMO_SPECS}, "blobs": "ocr:no_text"}


def build_text_images(root: str | Path) -> dict[str, tuple[str, str]]:
    """Write ``root/ocr/text-000000.tar``; return the planted drops as sample_data's ``EXPECTED`` has
    them: {"ocr/<key>": ("ocr", reason)}. Every other key must be kept with agreed text."""
    out = Path(root) / SOURCE
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "text-000000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, spec in DEMO_SPECS.items():
            tar_add(tar, f"{key}.png", png_bytes(render(spec)))
            tar_add(tar, f"{key}.txt", "\n".join(spec.lines).encode())
            tar_add(tar, f"{key}.json", json.dumps(asdict(spec), sort_keys=True).encode())
        tar_add(tar, "blobs.png", png_bytes(text_free(7)))
        tar_add(tar, "blobs.txt", b"")
    return {f"{SOURCE}/{k}": ("ocr", v) for k, v in EXPECTED_OCR.items() if v is not None}


if __name__ == "__main__":
    print(json.dumps(build_text_images(sys.argv[1] if len(sys.argv) > 1 else "data/sample"), indent=1))
