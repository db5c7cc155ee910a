"""The blur and QR-code rules of image_filter (``curate.filters.image_quality``): what they separate, what they cost.

    python bench/bench_image_quality.py [--repeat 3]

1. **Which scale.** The bundled photos (``demo_data.sample.photos``) at their own size (where they are
   sharp), and blurred by a Gaussian of 0.5 and 1 px at a 400 px view, JPEG q90: the variance of the
   Laplacian on pHash's reduced decode (what the filter decodes anyway, shorter side 128..255 px), on
   grey copies with the shorter side 128..384 px, and on the full decode. A scale separates sharp from
   blurred when the sharp photos' lowest value lies above the blurred ones' highest (``gap`` > 1).
2. **QR detection.** QR codes (``segno``, versions 2, 4 and 10) pasted on a 1600 px photo over 15..90% of
   its shorter side: the area fraction found on the probe copy and on the full decode, and the CPU of
   each; and the photos without a code: none may be found (false positives would remove good images).
3. **Cost.** ``judge_image`` on every photo at 512, 1024 and 2048 px (JPEG q90, and PNG), preset default
   with the rules off, with blur, with QR, with both: CPU ms per image (process time, best of
   ``--repeat``) and the extra each rule costs over the default.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from curate.base import records as R  # noqa: E402
from curate.filters import image_quality as Q  # noqa: E402
from curate.filters.image_rules import judge_image  # noqa: E402
from curate.filters.presets import ImageThresholds  # noqa: E402
from curate.media.image_facts import THUMB_DRAFT  # noqa: E402


def _photos() -> dict[str, Image.Image]:
    from demo_data.sample import photos
    return {p.name: Image.open(p.file).convert("RGB") for p in photos()}


def _resized(im: Image.Image, long_side: int) -> Image.Image:
    s = long_side / max(im.size)
    return im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.Resampling.LANCZOS)


def _encode(im: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {"compress_level": 3}))
    return buf.getvalue()


def _ref(data: bytes) -> dict:
    im = Image.open(io.BytesIO(data))
    return R.image_ref("mem://bench", None, -1, len(data), im.size[0], im.size[1], im.format)


def _phash_grey(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    im.draft("L", THUMB_DRAFT)
    return np.asarray(im.convert("L"))


def _at_short(grey: np.ndarray, side: int) -> np.ndarray:
    h, w = grey.shape
    if min(h, w) <= side:
        return grey
    s = side / min(h, w)
    return np.asarray(Image.fromarray(grey).resize((round(w * s), round(h * s)), Image.Resampling.BOX))


def scales(photos: dict[str, Image.Image]) -> None:
    """Each photo at its own size (sharp there), and blurred by a Gaussian of 0.5 and 1 px at a 400 px
    view (sigma = that x long side / 400); JPEG q90. Columns: pHash's decode, grey copies with the
    shorter side 128..384 px (area means of the full decode), the full decode."""
    print("1. variance of the Laplacian; photos at their own size, blur in px at a 400 px view, JPEG q90")
    cols = ["pHash", "128", "192", "256", "384", "full"]
    print(f"   {'photo':12s} {'blur':>4s} " + " ".join(f"{c:>8s}" for c in cols))
    table: dict[tuple[str, float], list[float]] = {}
    for name, im in photos.items():
        for blur in (0.0, 0.5, 1.0):
            sigma = blur * max(im.size) / 400
            data = _encode(im.filter(ImageFilter.GaussianBlur(sigma)) if sigma else im)
            full = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
            table[name, blur] = [Q.laplacian_variance(_phash_grey(data))] + \
                [Q.laplacian_variance(_at_short(full, side)) for side in (128, 192, 256, 384)] + [Q.laplacian_variance(full)]
            print(f"   {name:12s} {blur:4.1f} " + " ".join(f"{v:8.1f}" for v in table[name, blur]))
    for i, col in enumerate(cols):
        sharp = min(v[i] for (n, b), v in table.items() if b == 0)
        for blur in (0.5, 1.0):
            blurred = max(v[i] for (n, b), v in table.items() if b == blur)
            pairs = [(v[i], b == 0) for (n, b), v in table.items() if b in (0, blur)]
            right = max(sum((x >= t) == sharp_ for x, sharp_ in pairs) for t, _ in pairs)
            print(f"   {col:>5s}, blur {blur}: sharp min {sharp:7.1f}, blurred max {blurred:7.1f}, "
                  f"gap {sharp / blurred:4.2f}, best single limit right on {right}/{len(pairs)}")


def qr(photos: dict[str, Image.Image]) -> None:
    import segno
    print("2. QR codes found on the probe copy (area fraction of the image)")
    base = _resized(photos["coffee"], 1600)
    probe_ms: list[float] = []
    full_ms: list[float] = []
    for version_text in ("https://example.com/x", "https://example.com/a/long/path?id=1234567890&ref=abcdef", "x" * 200):
        code = segno.make_qr(version_text, error="m")
        buf = io.BytesIO()
        code.save(buf, kind="png", scale=10, border=4)
        qr_im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        row, full_row = [], []
        for frac in (0.15, 0.2, 0.3, 0.5, 0.9):
            side = int(min(base.size) * frac)
            im = base.copy()
            im.paste(qr_im.resize((side, side), Image.Resampling.NEAREST), (50, 50))
            data = _encode(im)
            t0 = time.process_time()
            row.append(f"{frac:.2f}:{Q.qr_area_fraction(Q.probe_copy(None, data, im.size)):.3f}")
            probe_ms.append((time.process_time() - t0) * 1e3)
            t0 = time.process_time()
            full_row.append(f"{frac:.2f}:{Q.qr_area_fraction(np.asarray(Image.open(io.BytesIO(data)).convert('L'))):.3f}")
            full_ms.append((time.process_time() - t0) * 1e3)
        print(f"   version {code.version:2d}, 256 px probe: " + "  ".join(row))
        print(f"   version {code.version:2d}, full decode:  " + "  ".join(full_row))
    print(f"   CPU per picture (decode + detection): probe {np.median(probe_ms):.1f} ms, full {np.median(full_ms):.1f} ms (median)")
    found = [n for n, im in photos.items() for side in (512, 1600)
             if Q.qr_area_fraction(Q.probe_copy(None, _encode(_resized(im, side)), _resized(im, side).size)) > 0]
    print(f"   photos without a code where one was found: {found or 'none'} (of {2 * len(photos)})")


def cost(photos: dict[str, Image.Image], repeat: int) -> None:
    print("3. CPU ms per image of judge_image (best of %d)" % repeat)
    settings = {"default": {}, "+blur": {"min_laplacian_variance": 100.0}, "+qr": {"max_qr_area": 0.05},
                "+both": {"min_laplacian_variance": 100.0, "max_qr_area": 0.05}}
    print(f"   {'images':14s} " + " ".join(f"{k:>9s}" for k in settings) + "   extra: blur      qr")
    for fmt in ("JPEG", "PNG"):
        for side in (512, 1024, 2048):
            items = [(_ref(d), d) for d in (_encode(_resized(im, side), fmt) for im in photos.values())]
            ms = {}
            for label, over in settings.items():
                th = ImageThresholds(**over)
                best = float("inf")
                for _ in range(repeat):
                    t0 = time.process_time()
                    for ref, data in items:
                        judge_image(ref, th, read=lambda r, d=data: d)
                    best = min(best, time.process_time() - t0)
                ms[label] = best * 1e3 / len(items)
            print(f"   {fmt:4s} {side:5d} px " + " ".join(f"{ms[k]:9.2f}" for k in settings)
                  + f"   {ms['+blur'] - ms['default']:10.2f} {ms['+qr'] - ms['default']:7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    photos = _photos()
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    scales(photos)
    qr(photos)
    cost(photos, args.repeat)
    print(f"wall {time.perf_counter() - t_wall:.1f} s, CPU {time.process_time() - t_cpu:.1f} s")


if __name__ == "__main__":
    main()
