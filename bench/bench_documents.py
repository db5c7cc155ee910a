"""Per-image rules inside documents against the same rules on single-image samples (issue #25).

    python bench/bench_documents.py [--images 480] [--rounds 3] [--stages image_filter,image_dedup,nsfw_filter]
    python bench/run.py documents [--quick]

The same images, read twice: once as img2dataset-style single-image samples (a ``webdataset`` tar,
one image + caption per key) and once as interleaved documents (a ``mint1t`` tar: each document 1-8
images between paragraphs, 3.2 on average, OBELICS' order of magnitude). The images are random crops
of the bundled photos (256-768 px JPEGs, each with its own bytes) with 10% that a rule removes (5%
thumbnails, 3% blank, 2% JPEGs cut short with their end marker put back).

Measured per contender and stage: the stage's CPU seconds (user + system of this process, all its
threads: ``time.process_time``) and wall seconds on the rows ingest read (ingest itself is not
timed: the two readers differ, the rules do not), and images per CPU-second. The target (issue #25):
documents >= 0.9x the single-image samples' images per CPU-second, per stage and over the chain.
Rounds alternate the two contenders; the table gives the median round (the machine is shared).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

BENCH_TIMEOUT_S = 900
TARGET = 0.9


def _images(n: int, seed: int = 25) -> list[bytes]:
    from demo_data.sample import photos
    rng = np.random.default_rng(seed)
    sources = [np.asarray(Image.open(p.file).convert("RGB")) for p in photos()]
    out = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.03:
            im = Image.new("RGB", (320, 240), tuple(int(c) for c in rng.integers(0, 255, 3)))
        else:
            src = sources[int(rng.integers(len(sources)))]
            h, w = src.shape[:2]
            ch, cw = int(h * rng.uniform(0.4, 0.8)), int(w * rng.uniform(0.4, 0.8))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            im = Image.fromarray(src[y:y + ch, x:x + cw])
            long_ = 64 if roll < 0.08 else int(rng.integers(256, 769))
            scale = long_ / max(im.size)
            im = im.resize((max(8, int(im.width * scale)), max(8, int(im.height * scale))))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(rng.integers(75, 95)))
        data = buf.getvalue()
        if 0.08 <= roll < 0.10:
            data = data[:len(data) // 2] + b"\xff\xd9"
        out.append(data)
    return out


def write_corpora(folder: Path, images: list[bytes], seed: int = 25) -> tuple[Path, Path, int]:
    """(single-image tar, document tar, number of documents)."""
    from demo_data.sample import TEXT_TOPICS, write_tar
    rng = np.random.default_rng(seed)
    singles = []
    for i, data in enumerate(images):
        singles += [(f"s{i:06d}.jpg", data), (f"s{i:06d}.txt", f"Photo {i}: {TEXT_TOPICS[i % len(TEXT_TOPICS)]}".encode())]
    write_tar(folder / "singles.tar", singles)
    docs, at, d = [], 0, 0
    while at < len(images):
        k = min(len(images) - at, int(rng.integers(1, 9)) if rng.random() < 0.5 else int(rng.integers(1, 4)))
        texts, refs = [f"Page {d}. {TEXT_TOPICS[d % len(TEXT_TOPICS)]}"], [None]
        members = []
        for j in range(k):
            texts += [None, TEXT_TOPICS[(d + j) % len(TEXT_TOPICS)]]
            refs += [f"{j}.jpg", None]
            members.append((f"d{d:06d}.{j}.jpg", images[at + j]))
        docs.append((f"d{d:06d}.json", json.dumps({"texts": texts, "images": refs}).encode()))
        docs += members
        at += k
        d += 1
    write_tar(folder / "documents.tar", docs)
    return folder / "singles.tar", folder / "documents.tar", d


def measure(tar: Path, fmt: str, stages: list[str]) -> dict[str, tuple[float, float, int]]:
    """Per stage: (CPU s, wall s, images judged), the stages chained on the rows ingest read."""
    from curate.base import build
    from curate.readers.read import read_source
    table = read_source(str(tar), fmt, source="b", category="interleaved" if fmt == "mint1t" else "caption").kept
    out = {}
    for name in stages:
        settings = {"preset": "default"} if name == "image_filter" else {}
        if name == "image_dedup":
            settings = {"categories": []}
        stage = build(name, settings)
        stage.ensure_setup()   # model loads are not the rules' cost
        images = sum(len(v or []) for v in table.column("images").to_pylist())
        cpu, wall = time.process_time(), time.perf_counter()
        table = stage.run(table).kept
        out[name] = (time.process_time() - cpu, time.perf_counter() - wall, images)
    return out


def main() -> None:
    from run import format_table, quick
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=160 if quick() else 480)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--stages", default="image_filter,image_dedup,nsfw_filter")
    args = p.parse_args()
    stages = args.stages.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        singles, documents, n_docs = write_corpora(Path(tmp), _images(args.images))
        runs: dict[str, list[dict]] = {"single": [], "documents": []}
        for _ in range(args.rounds):
            runs["single"].append(measure(singles, "webdataset", stages))
            runs["documents"].append(measure(documents, "mint1t", stages))
    rows = []
    ratios = {}
    for name in [*stages, "chain"]:
        per = {}
        for who, rounds in runs.items():
            if name == "chain":
                cpu = [sum(r[s][0] for s in stages) for r in rounds]
                wall = [sum(r[s][1] for s in stages) for r in rounds]
                imgs = rounds[0][stages[0]][2]
            else:
                cpu, wall, imgs = [r[name][0] for r in rounds], [r[name][1] for r in rounds], rounds[0][name][2]
            per[who] = (statistics.median(cpu), statistics.median(wall), imgs)
            rows.append([name, who, imgs, f"{per[who][0]:.2f}", f"{per[who][1]:.2f}", f"{imgs / per[who][0]:.0f}",
                         f"[{min(cpu):.2f}-{max(cpu):.2f}]"])
        ratios[name] = (per["documents"][2] / per["documents"][0]) / (per["single"][2] / per["single"][0])
    print(f"{args.images} images; {n_docs} documents ({args.images / n_docs:.1f} images each); "
          f"{args.rounds} rounds, median; cpus={os.cpu_count()}")
    print(format_table(["stage", "as", "images in", "CPU s", "wall s", "images/CPU-s", "CPU range"], rows))
    print(format_table(["stage", "documents / single (images per CPU-second)", f"target >= {TARGET}"],
                       [[k, f"{v:.3f}", "ok" if v >= TARGET else "BELOW"] for k, v in ratios.items()]))


if __name__ == "__main__":
    main()
