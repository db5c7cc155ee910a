"""Ingest of metadata parquet that references image files (the LAION / DataComp / HF-datasets layout),
this code beside a checkout of an earlier commit ("before"), inline and on Ray.

Three shapes of the same rows (key, caption, a few metadata columns):
  * ``no image``: no image column — the caption-only speed the issue compares against;
  * ``200 files``: an ``image`` path column whose rows point at 200 distinct files (repeated refs);
  * ``distinct``: every row points at its own small JPEG (page-cached after the first pass).
Each run is ``mmcurate run --until ingest`` in its own process; figures: the ingest stage's wall
seconds (run.json) and rows/s per core from it (inline: one core; Ray: every core), and the CPU
seconds of the whole process tree (driver, Ray daemons, workers — interpreter start-up and Ray's
start included, a fixed 1-2 CPU-s inline and ~10 on Ray). Targets of issue #27: >= 20k rows/s per
core for distinct files; the 200-file shape within 5x of ``no image``.

    python bench/bench_ingest_refs.py [ROWS] [--distinct ROWS] [--before COMMIT] [--before-max ROWS]
                                      [--executors inline,ray]
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

BENCH_CORES = "all"      # Ray uses every core; rows per CPU-second is the per-core figure
BENCH_TIMEOUT_S = 3600
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from proctree import run_tree  # noqa: E402

DRIVER = r'''
import json, sys, time
from pipelines import run
t0, c0 = time.perf_counter(), time.process_time()
res = run(sys.argv[1], out=sys.argv[2], executor=sys.argv[3], until="ingest", progress=False)
e = res.report["stages"][0]
stage_s = json.loads((res.out_dir / "run.json").read_text())["stages"][0]["seconds"]
print(json.dumps({"wall": time.perf_counter() - t0, "driver_cpu": time.process_time() - c0, "stage_s": stage_s,
                  "in": e["in"], "out": e["out"], "rejected": e["rejected"], "quarantined": e["quarantined"]}))
'''


def small_jpegs(folder: Path, count: int) -> list[str]:
    """`count` distinct ~1.5 KB JPEGs (one image, a numbered comment segment each), 1000 per folder."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(buf, format="JPEG")
    data = buf.getvalue()
    names = []
    for i in range(count):
        sub = folder / f"{i // 1000:05d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i}.jpg").write_bytes(data[:2] + b"\xff\xfe\x00\x06" + i.to_bytes(4, "little") + data[2:])
        names.append(f"{folder.name}/{i // 1000:05d}/{i}.jpg")
    return names


def corpus(root: Path, rows: int, images: list[str] | None) -> Path:
    """One source folder of parquet files (250k rows each); `images`: the image column cycles these."""
    src = root / ("meta-" + ("none" if images is None else str(len(images))))
    src.mkdir(parents=True)
    words = "a photo of the red bus parked near an old stone bridge at sunset with people".split()
    for f, start in enumerate(range(0, rows, 250_000)):
        n = min(250_000, rows - start)
        idx = np.arange(start, start + n)
        cols = {"key": [f"r{i}" for i in idx], "text": [" ".join(words[: 4 + i % 10]) + f" {i}" for i in idx],
                "width": idx % 1024, "similarity": (idx % 100) / 100.0}
        if images is not None:
            cols["image"] = [images[i % len(images)] for i in idx]   # relative to the source's image_root
        pq.write_table(pa.table(cols), src / f"part-{f:04d}.parquet", row_group_size=50_000)
    return src


def run_once(code: Path, src: Path, executor: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="ingest-refs-"))
    (work / "r.yaml").write_text(f"name: ingest-refs\nseed: 1\nsources:\n  - {{name: m, path: \"{src}/*.parquet\", "
                                 f"format: parquet, category: caption, image_root: \"{src.parent}\"}}\n"
                                 f"stages:\n  - {{name: text_filter}}\n")
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        proc, tree_cpu, wall = run_tree([sys.executable, "-c", DRIVER, str(work / "r.yaml"), str(work / "out"), executor],
                                        env=env, cwd=work, timeout=BENCH_TIMEOUT_S)
        if proc.returncode:
            return {"error": proc.stderr[-800:]}
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        out["tree_cpu"] = tree_cpu
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str]) -> None:
    def option(name: str, default: str | None) -> str | None:
        nonlocal argv
        if name in argv:
            i = argv.index(name)
            value, argv = argv[i + 1], argv[:i] + argv[i + 2:]
            return value
        return default
    before = option("--before", "93a3b38")
    before_max = int(option("--before-max", "0") or 0)
    distinct = int(option("--distinct", "0") or 0)
    executors = (option("--executors", "inline,ray") or "inline,ray").split(",")
    rows = int(argv[0]) if argv else (20_000 if os.environ.get("MMCURATE_BENCH_QUICK") == "1" else 200_000)
    distinct = distinct or rows
    old = Path(tempfile.mkdtemp(prefix="mmcurate-before-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), before], check=True,
                   capture_output=True)
    data = Path(tempfile.mkdtemp(prefix="ingest-refs-data-"))
    table = []
    try:
        shapes = [("no image", rows, corpus(data, rows, None)),
                  ("200 files", rows, corpus(data, rows, small_jpegs(data / "img200", 200))),
                  (f"{distinct:,} distinct files", distinct, corpus(data, distinct, small_jpegs(data / "imgall", distinct)))]
        for shape, n, src in shapes:
            for executor in executors:
                for label, code in (("now", ROOT), (f"before ({before})", old)):
                    if code is old and before_max and n > before_max:
                        table.append([shape, n, executor, label, "not run (--before-max)", "", "", "", ""])
                        continue
                    r = run_once(code, src, executor)
                    if "error" in r:
                        table.append([shape, n, executor, label, "failed: " + r["error"].strip().splitlines()[-1][:60],
                                      "", "", "", ""])
                    else:
                        dropped = sum(r["rejected"].values()) + sum(r["quarantined"].values())
                        cores = 1 if executor == "inline" else os.cpu_count() or 1
                        table.append([shape, n, executor, label, f"{r['stage_s']:.1f}",
                                      f"{n / r['stage_s'] / cores:,.0f}", f"{r['tree_cpu']:.1f}",
                                      f"{n / r['tree_cpu']:,.0f}", f"{r['out']:,} kept, {dropped:,} dropped"])
                    print(table[-1], flush=True)
    finally:
        shutil.rmtree(data, ignore_errors=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
    from run import format_table
    print(format_table(["shape", "rows", "executor", "code", "ingest stage wall s", "rows/s per core (stage wall)",
                        "CPU s (whole process tree)", "rows per CPU-s (tree)", "verdicts"], table))


if __name__ == "__main__":
    main(sys.argv[1:])
