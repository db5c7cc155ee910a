"""A held-out, img2dataset-style corpus of realistic photos for bench_one_decode (issue #29).

Unlike ``filters_corpus`` (600 small JPEGs cycled), every sample here has its own bytes: a random crop
(30-75% of each side, flipped or turned at random) of one of the photos that ship in scikit-image / scikit-learn (``demo_data.sample.photos``, plus
``retina.jpg``), colour-jittered per channel, resized to 256-2048 px on the long side (log-uniform),
encoded as JPEG (85%, quality 70-95, a tenth of them progressive), PNG (8%) or WebP (7%). The mix,
seeded and deterministic:

* 5% exact copies (an earlier sample's bytes and caption under a new key) and 5% near copies (an
  earlier sample's picture re-encoded at another quality and downscaled 0.6-0.95x, new caption);
* 2% blank (one flat colour, photo-sized), 2% thumbnails (short side < 112 px), 2% banners
  (aspect 6-10); 1.5% broken files: garbage bytes, a JPEG cut short with its end marker put back
  (decodes with grey fill rows), a JPEG cut short without it;
* captions from ``filters_corpus.caption`` (about 5% one word, 3% spam loops).

Tars of ``PER_TAR`` samples (``.jpg``/``.png``/``.webp`` + ``.txt`` + ``.json``), written by a pool of
processes (one tar each) so that building 30,000 samples takes minutes, not an hour.
"""
from __future__ import annotations

import io
import json
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

PER_TAR = 1000
VERSION = "1"


def _photos() -> list[np.ndarray]:
    from demo_data.sample import _package_dir, photos
    paths = [p.file for p in photos()] + [str(_package_dir("skimage.data") / "retina.jpg")]
    out = []
    for path in paths:
        arr = np.asarray(Image.open(path).convert("RGB"))
        out.append(arr)
    return out


def _encode(im: Image.Image, fmt: str, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        im.save(buf, format="PNG", compress_level=3)
    elif fmt == "webp":
        im.save(buf, format="WEBP", quality=int(rng.integers(70, 95)), method=0)
    else:
        im.save(buf, format="JPEG", quality=int(rng.integers(70, 96)), progressive=bool(rng.random() < 0.1))
    return buf.getvalue()


def _size(rng: np.random.Generator, aspect: float, long_lo: int = 256, long_hi: int = 2048) -> tuple[int, int]:
    long_ = int(np.exp(rng.uniform(np.log(long_lo), np.log(long_hi))))
    short = max(8, int(round(long_ / aspect)))
    return (long_, short) if rng.random() < 0.7 else (short, long_)


def _picture(rng: np.random.Generator, photos: list[np.ndarray], size: tuple[int, int] | None = None) -> Image.Image:
    """A jittered random crop of a photo, resized (to `size`, or a random realistic size)."""
    src = photos[int(rng.integers(len(photos)))]
    sh, sw = src.shape[:2]
    cw, ch = int(sw * rng.uniform(0.3, 0.75)), int(sh * rng.uniform(0.3, 0.75))
    x, y = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    im = Image.fromarray(src[y:y + ch, x:x + cw])
    for flip in (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_90):
        if rng.random() < 0.5:   # flips and turns: crops of a dozen photos should not look alike to pHash
            im = im.transpose(flip)
    cw, ch = im.size
    gain, offset = rng.uniform(0.8, 1.2, 3), rng.uniform(-20, 20, 3)
    lut = [int(np.clip(v * gain[b] + offset[b], 0, 255)) for b in range(3) for v in range(256)]
    im = im.point(lut)
    if size is None:
        size = _size(rng, max(cw, ch) / max(1, min(cw, ch)) * float(np.exp(rng.normal(0, 0.1))))
        if cw < ch:
            size = (min(size), max(size))
        else:
            size = (max(size), min(size))
    return im.resize(size, Image.Resampling.BILINEAR)


def _sample(rng: np.random.Generator, photos: list[np.ndarray], earlier: list[tuple[str, bytes, str, Image.Image]]
            ) -> tuple[str, bytes, str, Image.Image | None]:
    """(extension, image bytes, caption, the picture for later near copies or None)."""
    from filters_corpus import caption
    roll = rng.random()
    if roll < 0.05 and earlier:
        ext, data, text, _ = earlier[int(rng.integers(len(earlier)))]
        return ext, data, text, None
    if roll < 0.10 and earlier:
        _, _, _, pic = earlier[int(rng.integers(len(earlier)))]
        f = rng.uniform(0.6, 0.95)
        near = pic.resize((max(16, int(pic.width * f)), max(16, int(pic.height * f))), Image.Resampling.BILINEAR)
        return "jpg", _encode(near, "jpg", rng), caption(rng), None
    if roll < 0.12:
        size = _size(rng, float(np.exp(rng.normal(0.3, 0.2))))
        return "jpg", _encode(Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3))), "jpg", rng), \
            caption(rng), None
    if roll < 0.14:
        short = int(rng.integers(32, 112))
        return "jpg", _encode(_picture(rng, photos, (int(short * rng.uniform(1, 1.6)), short)), "jpg", rng), \
            caption(rng), None
    if roll < 0.16:
        h = int(rng.integers(60, 200))
        return "jpg", _encode(_picture(rng, photos, (int(h * rng.uniform(6, 10)), h)), "jpg", rng), caption(rng), None
    if roll < 0.165:
        return "jpg", rng.bytes(int(rng.integers(2_000, 40_000))), caption(rng), None
    if roll < 0.175:
        full = _encode(_picture(rng, photos), "jpg", rng)
        cut = full[: int(len(full) * rng.uniform(0.3, 0.8))]
        return "jpg", (cut + b"\xff\xd9") if roll < 0.170 else cut, caption(rng), None
    fmt_roll = rng.random()
    fmt = "png" if fmt_roll < 0.08 else "webp" if fmt_roll < 0.15 else "jpg"
    pic = _picture(rng, photos)
    if fmt == "png" and max(pic.size) > 1024:   # PNG photos are rarer and smaller on the web (and slow to encode)
        pic = pic.reduce(2)
    return fmt, _encode(pic, fmt, rng), caption(rng), pic


def _write_tar(args: tuple[Path, int, int, int, int]) -> int:
    path, first, count, seed, index = args
    rng = np.random.default_rng([seed, index])
    photos = _photos()
    earlier: list[tuple[str, bytes, str, Image.Image]] = []
    written = 0
    with tarfile.open(path.with_suffix(".tmp"), "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(first, first + count):
            ext, data, text, pic = _sample(rng, photos, earlier)
            if pic is not None:
                earlier.append((ext, data, text, pic.reduce(2) if max(pic.size) > 1024 else pic))
                earlier = earlier[-64:]
            key = f"{i:09d}"
            meta = json.dumps({"key": key, "url": f"https://example.com/{i}.{ext}", "caption": text})
            for member, payload in ((f"{key}.{ext}", data), (f"{key}.txt", text.encode()), (f"{key}.json", meta.encode())):
                info = tarfile.TarInfo(member)
                info.size, info.mtime = len(payload), 0
                tar.addfile(info, io.BytesIO(payload))
            written += len(data)
    path.with_suffix(".tmp").rename(path)
    return written


def build(root: Path, n: int, seed: int = 0, workers: int = 2) -> Path:
    """Write (or reuse) the corpus of `n` samples under `root`; returns the directory of its tars."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    shards = root.resolve() / f"photos-v{VERSION}-{n}-{seed}"
    stamp = shards / "_ok"
    if stamp.exists():
        return shards
    shards.mkdir(parents=True, exist_ok=True)
    jobs = [(shards / f"{t // PER_TAR:05d}.tar", t, min(PER_TAR, n - t), seed, t // PER_TAR) for t in range(0, n, PER_TAR)]
    with ProcessPoolExecutor(workers) as pool:
        total = sum(pool.map(_write_tar, jobs))
    stamp.write_text(json.dumps({"samples": n, "image_bytes": total}) + "\n")
    return shards


def dj_inputs(shards: Path, root: Path) -> tuple[Path, set[str]]:
    """For Data-Juicer, which reads images by path: every sample whose image Pillow decodes in full
    (Data-Juicer's ``load_image`` fails a whole run on a broken file) as a JSONL line pointing at the
    image written to ``root/files``; returns the JSONL and the keys in it, so the mmcurate side can
    run on the same samples."""
    root = root.resolve()
    jsonl, files = root / "dj.jsonl", root / "files"
    files.mkdir(parents=True, exist_ok=True)
    keys: set[str] = set()
    with open(jsonl.with_suffix(".tmp"), "w") as out:
        for path in sorted(shards.glob("*.tar")):
            members: dict[str, dict[str, bytes]] = {}
            with tarfile.open(path) as tar:
                for info in tar:
                    key, ext = info.name.split(".", 1)
                    members.setdefault(key, {})[ext] = tar.extractfile(info).read()
            for key, parts in members.items():
                ext = next(e for e in parts if e in ("jpg", "png", "webp"))
                try:
                    Image.open(io.BytesIO(parts[ext])).load()
                except Exception:  # noqa: BLE001 — any failure: Data-Juicer would fail too
                    continue
                (files / f"{key}.{ext}").write_bytes(parts[ext])
                out.write(json.dumps({"text": parts["txt"].decode(), "images": [str(files / f"{key}.{ext}")]}) + "\n")
                keys.add(key)
    jsonl.with_suffix(".tmp").rename(jsonl)
    return jsonl, keys
