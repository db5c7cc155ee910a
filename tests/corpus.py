"""Small corpora built inside tests (real JPEG/PNG bytes, real tars), shared by several test files."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg(width: int = 320, height: int = 240, seed: int = 0, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    arr = (base + rng.normal(0, 40, (height, width, 3))).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png(width: int = 200, height: int = 100, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return path


def caption_corpus(root: Path, n_files: int = 3, per_file: int = 20, seed: int = 0) -> Path:
    """n_files webdataset tars of `per_file` good image-caption samples with varied sizes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    words = "red blue green cat dog house tree car road sky river bridge city night".split()
    for f in range(n_files):
        members = []
        for i in range(per_file):
            w, h = int(rng.integers(200, 900)), int(rng.integers(200, 700))
            key = f"s{f:02d}-{i:04d}"
            caption = " ".join(rng.choice(words, size=int(rng.integers(4, 40))))
            members += [(f"{key}.jpg", jpeg(w, h, seed=f * 1000 + i)), (f"{key}.txt", caption.encode()),
                        (f"{key}.json", json.dumps({"key": key, "w": w, "h": h}).encode())]
        write_tar(root / f"part-{f:05d}.tar", members)
    return root


def ingest_resumed(result) -> bool:
    """Whether a run skipped ingest as complete (run.json; report.json holds only data-derived facts)."""
    import json
    return json.loads((result.out_dir / "run.json").read_text())["stages"][0]["resumed"]
