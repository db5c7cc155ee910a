"""What one image costs, part by part: the per-image account behind ``bench_one_decode`` (issue #29).

    python bench/bench_decode_parts.py [--n 600] [--repeat 3]

Builds (or reuses) ``n`` samples of the held-out photos corpus (``photos_corpus``: 256-2048 px,
85% JPEG, 8% PNG, 7% WebP) and times, in this one process and one thread, each step the image path
takes on the images that reach the decode (those ``open_image`` accepts), by format. Each part is
the CPU time (``time.process_time``) of that step alone over all images, the best of ``--repeat``
passes, divided by the images it ran on:

* ``open (header)``: ``open_image`` — Pillow parses the header, nothing is decoded;
* ``decode 1/8 (OpenCV)``: libjpeg at 1/8 DCT scale, colour (what the pixel rules need when no later
  stage reads ``image_facts``, and what the floor pays);
* ``decode 1/8 (Pillow YCbCr)``: the same scale through Pillow's draft mode;
* ``decode pHash scale (Pillow YCbCr)``: the scale that keeps both sides >= 128 px (1/2-1/8), the
  decode that also gives ``image_dedup`` its thumbnail;
* ``Lanczos to 32x32``: the thumbnail's resize from that decode;
* ``pixel rules, no facts`` / ``pixel rules + thumbnail``: ``decode_checks`` whole, both ways;
* ``blake2b-128`` / ``sha256``: the content digest we carry, and the floor's;
* ``the floor's decode``: ``bench_one_decode``'s floor (grey draft at 1/8, bilinear to 32x32);
* ``Data-Juicer's load_image``: what its image ops decode per image (``PIL.Image.open(...).convert("RGB")``,
  a full decode: ``bench_filters`` compares with it), header parse included;
* ``full decode`` (PNG, WebP): what both formats cost whatever the scale.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]


def images_of(shards: Path) -> list[bytes]:
    out = []
    for path in sorted(shards.glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar:
                if m.isfile() and m.name.endswith((".jpg", ".png", ".webp")):
                    out.append(tar.extractfile(m).read())
    return out


def best_cpu_ms(fn: Callable[[bytes], object], items: list[bytes], repeat: int) -> float:
    """Best-of-`repeat` CPU ms per item of `fn` over `items` (0 items: 0)."""
    if not items:
        return 0.0
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for data in items:
            fn(data)
        best = min(best, time.process_time() - t0)
    return best * 1000 / len(items)


def main(argv: list[str] | None = None) -> int:
    import cv2
    from PIL import Image
    import photos_corpus
    from curate.filters import image_pixels as IP
    from curate.filters.presets import IMAGE_PRESETS
    from curate.media import image_facts as F
    from curate.media import images as I
    from curate.media.jpeg import reduced_decode

    cv2.setNumThreads(1)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100 if os.environ.get("MMCURATE_BENCH_QUICK") == "1" else 600)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--root", type=Path, default=ROOT / "out" / "bench_decode_parts")
    args = ap.parse_args(argv)
    th = IMAGE_PRESETS["default"]
    shards = photos_corpus.build(args.root, args.n)
    by_format: dict[str, list[bytes]] = {}
    for data in images_of(shards):
        try:
            im = I.open_image(data, th.max_pixels)
        except I.UnreadableImage:
            continue
        if min(im.size) < th.min_side:
            continue
        kind = im.format if im.format != "JPEG" or im.mode in ("RGB", "L") else "JPEG-other"
        by_format.setdefault(kind, []).append(data)

    def draft(data: bytes, size: tuple[int, int] | None) -> Image.Image:
        im = I.open_image(data)
        im.draft("YCbCr" if im.mode == "RGB" else "L", size or (-(-im.width // 8), -(-im.height // 8)))
        im.load()
        return im

    def full(data: bytes) -> Image.Image:
        im = I.open_image(data)
        im.load()
        return im

    def floor_decode(data: bytes) -> Image.Image:
        """What bench_one_decode's floor does: grey draft at 1/8 (JPEG; others in full), bilinear to 32x32."""
        im = I.open_image(data)
        im.draft("L", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
        return im.convert("L").resize((32, 32), Image.Resampling.BILINEAR)

    thumb_scale = {id(d): draft(d, F.THUMB_DRAFT) for d in by_format.get("JPEG", [])}
    full_decoded = {id(d): full(d) for k in ("PNG", "WEBP") for d in by_format.get(k, [])}
    open_ms = {k: best_cpu_ms(lambda d: I.open_image(d, th.max_pixels), v, args.repeat) for k, v in by_format.items()}
    rows: list[tuple[str, str, float]] = []
    for kind, items in sorted(by_format.items()):
        rows.append((kind, "open (header)", open_ms[kind]))
        if kind == "JPEG":
            rows.append((kind, "decode 1/8 (OpenCV)", best_cpu_ms(lambda d: reduced_decode(d, False), items, args.repeat)))
            rows.append((kind, "decode 1/8 (Pillow YCbCr)",
                         best_cpu_ms(lambda d: draft(d, None), items, args.repeat) - open_ms[kind]))
            rows.append((kind, "decode pHash scale (Pillow YCbCr)",
                         best_cpu_ms(lambda d: draft(d, F.THUMB_DRAFT), items, args.repeat) - open_ms[kind]))
            rows.append((kind, "Lanczos to 32x32", best_cpu_ms(lambda d: F.grey_thumbnail(thumb_scale[id(d)]),
                                                              items, args.repeat)))
        else:
            if kind in ("PNG", "WEBP"):
                rows.append((kind, "full decode (Pillow)", best_cpu_ms(full, items, args.repeat) - open_ms[kind]))
            if kind in ("PNG", "WEBP"):
                rows.append((kind, "Lanczos to 32x32", best_cpu_ms(lambda d: F.grey_thumbnail(full_decoded[id(d)]),
                                                                  items, args.repeat)))
        rows.append((kind, "the floor's decode (bench_one_decode)", best_cpu_ms(floor_decode, items, args.repeat)
                     - open_ms[kind]))
        rows.append((kind, "Data-Juicer's load_image (open + convert RGB)", best_cpu_ms(
            lambda d: Image.open(io.BytesIO(d)).convert("RGB"), items, args.repeat)))
        rows.append((kind, "pixel rules, no facts", best_cpu_ms(
            lambda d: IP.decode_checks(I.open_image(d, th.max_pixels), d, th, thumbnail=False), items, args.repeat)
            - open_ms[kind]))
        rows.append((kind, "pixel rules + thumbnail", best_cpu_ms(
            lambda d: IP.decode_checks(I.open_image(d, th.max_pixels), d, th, thumbnail=True), items, args.repeat)
            - open_ms[kind]))
        rows.append((kind, "blake2b-128", best_cpu_ms(F.bytes_digest, items, args.repeat)))
        rows.append((kind, "sha256", best_cpu_ms(lambda d: hashlib.sha256(d).digest(), items, args.repeat)))
    total = sum(len(v) for v in by_format.values())
    print(f"{total} images that reach the decode, of {args.n} samples: "
          + ", ".join(f"{k} {len(v)} ({sum(map(len, v)) / len(v) / 1024:.0f} KB avg)" for k, v in sorted(by_format.items())))
    print(f"| format | part | CPU ms per image (best of {args.repeat}) |\n|---|---|---|")
    for kind, part, ms in rows:
        print(f"| {kind} | {part} | {ms:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
