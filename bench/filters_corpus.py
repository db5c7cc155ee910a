"""An img2dataset-style corpus for bench_filters: webdataset tars (``.jpg`` + ``.txt`` + ``.json``) and,
for Data-Juicer, which reads images by path, the same samples as JSONL pointing at image files.

img2dataset writes 10,000 samples per tar with ``encode_quality=95``; scraped images vary in size and
shape, and alt-text captions vary from one word to spam. The mix here (seeded, deterministic):

* images: crops of the scikit-image / scikit-learn sample photos, short side log-normal around 360 px
  (clipped to 48..1024), aspect 0.25..4.5 (some banners), JPEG quality 60..95; about 3% flat-colour
  images (blank) and 4% thumbnails under 112 px;
* captions: template sentences of 3..25 words; about 5% one word, 3% tail loops or repeated phrases.

To keep generation fast a pool of ``POOL`` distinct JPEGs is encoded once and cycled over the
samples: every sample still reads, parses and decodes its own bytes from its own tar member or file.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

POOL = 600
PER_TAR = 10_000
VERSION = "2"

_WORDS = ("dog cat house street car tree mountain river city people woman man child table chair window "
          "flower garden beach sky cloud road bridge building kitchen room book phone laptop coffee cup "
          "red blue green old new small large wooden modern vintage beautiful sunny snowy night").split()
_VERBS = "sitting standing walking lying parked growing shown seen placed hanging".split()


def _photos() -> list[np.ndarray]:
    from skimage import data
    from sklearn.datasets import load_sample_images
    names = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "hubble_deep_field", "immunohistochemistry")
    arrs = [getattr(data, n)() for n in names if hasattr(data, n)]
    arrs += list(load_sample_images().images)
    return [a if a.ndim == 3 else np.stack([a] * 3, axis=-1) for a in arrs]


def _image(rng: np.random.Generator, photos: list[np.ndarray]) -> bytes:
    roll = rng.random()
    short = int(np.clip(rng.lognormal(np.log(360), 0.5), 48, 1024))
    if roll < 0.04:
        short = int(rng.integers(32, 112))
    aspect = float(np.exp(rng.uniform(np.log(0.25), np.log(4.5)))) if rng.random() < 0.15 else float(
        np.exp(rng.normal(0, 0.25)))
    w, h = (int(short * aspect), short) if aspect >= 1 else (short, int(short / aspect))
    w, h = max(8, min(w, 4096)), max(8, min(h, 4096))
    if 0.04 <= roll < 0.07:
        im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3)))
    else:
        src = photos[int(rng.integers(len(photos)))]
        sh, sw = src.shape[:2]
        cw, ch = int(rng.integers(sw // 2, sw + 1)), int(rng.integers(sh // 2, sh + 1))
        x, y = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
        im = Image.fromarray(src[y:y + ch, x:x + cw]).resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(rng.integers(60, 96)))
    return buf.getvalue()


def caption(rng: np.random.Generator) -> str:
    roll = rng.random()
    if roll < 0.05:
        return str(rng.choice(_WORDS))
    words = [str(w) for w in rng.choice(_WORDS, int(rng.integers(3, 26)))]
    words.insert(min(len(words), 2), str(rng.choice(_VERBS)))
    text = " ".join(words).capitalize() + "."
    if roll < 0.065:
        return text + " " + " ".join(["buy now"] * 8)
    if roll < 0.08:
        return " ".join([text] * 4)
    return text


def build(root: Path, n: int, seed: int = 0) -> dict[str, Path]:
    """Write (or reuse) the corpus for `n` samples under `root`; returns the paths the runners need.
    The JSONL names images by absolute path: Data-Juicer's Ray workers do not share our working directory."""
    root = root.resolve()
    stamp = root / f"corpus-v{VERSION}-{n}-{seed}.ok"
    paths = {"shards": root / "shards", "files": root / "files", "jsonl": root / "dj.jsonl"}
    if stamp.exists():
        return paths
    rng = np.random.default_rng(seed)
    photos = _photos()
    pool = [_image(rng, photos) for _ in range(POOL)]
    for d in (paths["shards"], paths["files"]):
        d.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(pool):
        (paths["files"] / f"{i:05d}.jpg").write_bytes(data)
    with open(paths["jsonl"], "w") as jl:
        for t in range(0, n, PER_TAR):
            with tarfile.open(paths["shards"] / f"{t // PER_TAR:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
                for i in range(t, min(n, t + PER_TAR)):
                    key, text, img = f"{i:09d}", caption(rng), i % POOL
                    meta = json.dumps({"key": key, "url": f"https://example.com/{i}.jpg", "caption": text})
                    for ext, data in (("jpg", pool[img]), ("txt", text.encode()), ("json", meta.encode())):
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size, info.mtime = len(data), 0
                        tar.addfile(info, io.BytesIO(data))
                    jl.write(json.dumps({"text": text, "images": [str(paths["files"] / f"{img:05d}.jpg")]}) + "\n")
    stamp.write_text("ok\n")
    return paths
