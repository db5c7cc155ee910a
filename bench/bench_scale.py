"""Scale: metadata-only corpora through ingest -> text_filter -> count_tokens -> mixture -> pack on Ray,
this code beside a checkout of an earlier commit ("before": the driver-side decide() spine).

For each size: end-to-end rows/s, each stage's rows/s (wall, from run.json), the driver process's
peak resident memory (VmHWM: that process alone, not its Ray workers nor its parent) and its CPU seconds. The target of
the scale issue: driver peak memory at 5M within 1.3x of 1M (flat, not linear) and end-to-end rows/s
at least 5x the earlier code's. Sizes are arguments; `--quick` (MMCURATE_BENCH_QUICK=1) runs 20k/100k.

    python bench/bench_scale.py 1000000 5000000 --before adcf8ab [--before-max 1000000]
    python bench/bench_scale.py 200000 1000000 --conversations --before 93596a9   # driver memory, issue 31

`--conversations`: text-only grounding conversations in parquet through grounding_check ->
text_filter -> count_tokens -> pack -> shards (8 ranks x 4 micro-batches) instead.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BENCH_CORES = "all"   # Ray uses every core; the driver's own numbers are what this measures
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from proctree import run_tree  # noqa: E402
WORDS = ("a photo of the red bus parked near an old stone bridge at sunset with people walking by "
         "river city tree dog cat mountain market street food table chart page text").split()

# Peak memory is VmHWM, the high-water mark of this process's own address space. ru_maxrss is not:
# Linux carries it across exec, so a driver started by a large parent (this script, after building a
# 5M-row corpus) reported the parent's size at fork (786 MB for a driver that peaked at ~600).
DRIVER = r'''
import glob, json, os, resource, sys, threading, time
from pipelines import run

def peak_mb():
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

samples, done = [], threading.Event()

def sample():   # the driver's resident memory every 50 ms, to tell which stage it grew in
    while not done.is_set():
        with open("/proc/self/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
        samples.append((time.time_ns(), rss))
        done.wait(0.05)

threading.Thread(target=sample, daemon=True).start()
t0, c0 = time.perf_counter(), time.process_time()
res = run(sys.argv[1], out=sys.argv[2], executor="ray", progress=False)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
done.set()
per_stage = {}
for marker in sorted(glob.glob(os.path.join(sys.argv[2], "stages", "*", "_COMPLETE.json"))):
    doc = json.load(open(marker))
    if doc.get("fused_into"):
        continue
    start, end = doc["started_ns"], os.stat(marker).st_mtime_ns
    inside = [rss for t, rss in samples if start <= t <= end]
    per_stage[os.path.basename(os.path.dirname(marker))] = round(max(inside), 1) if inside else None
print(json.dumps({"wall": wall, "cpu": cpu, "peak_rss_mb": peak_mb(), "stage_rss_mb": per_stage,
                  "stages": [[e["name"], e["in"]] for e in res.report["stages"]]}))
'''


def corpus(root: Path, rows: int, seed: int = 0) -> None:
    """Two parquet sources (captions and texts), 250k rows per file, no image bytes anywhere."""
    rng = np.random.default_rng(seed)
    for name, share, lo, hi in (("captions", 0.8, 6, 30), ("texts", 0.2, 40, 200)):
        n = int(rows * share)
        (root / name).mkdir(parents=True, exist_ok=True)
        for f, start in enumerate(range(0, n, 250_000)):
            m = min(250_000, n - start)
            lengths = rng.integers(lo, hi, m)
            words = rng.integers(0, len(WORDS), int(lengths.sum()))
            cuts = np.cumsum(lengths)[:-1]
            texts = [" ".join(WORDS[i] for i in part) for part in np.split(words, cuts)]
            pq.write_table(pa.table({"key": [f"{name}-{start + i}" for i in range(m)], "text": texts}),
                           root / name / f"part-{f:04d}.parquet")


def conversation_corpus(root: Path, rows: int, seed: int = 0) -> None:
    """Text-only grounding conversations (LLaVA from/value, two turns, a box label in the answer), one
    parquet source, 250k rows per file: the issue's driver-memory corpus."""
    rng = np.random.default_rng(seed)
    (root / "grounding").mkdir(parents=True, exist_ok=True)
    for f, start in enumerate(range(0, rows, 250_000)):
        m = min(250_000, rows - start)
        obj = rng.integers(0, len(WORDS), m)
        box = np.sort(rng.integers(0, 1000, (m, 2, 2)), axis=1)
        convs = [[{"from": "human", "value": f"Where is the {WORDS[o]} in the picture?"},
                  {"from": "gpt", "value": f"<|object_ref_start|>{WORDS[o]}<|object_ref_end|><|box_start|>"
                                           f"({b[0, 0]:03d},{b[0, 1]:03d}),({b[1, 0]:03d},{b[1, 1]:03d})<|box_end|>"}]
                 for o, b in zip(obj, box)]
        pq.write_table(pa.table({"key": [f"g-{start + i}" for i in range(m)], "conversations": convs}),
                       root / "grounding" / f"part-{f:04d}.parquet")


def conversation_recipe(root: Path, new: bool) -> str:
    model = "model: {preset: qwen2-vl, context_length: 4096}\n" if new else ""
    return (f"name: scale-conv\nseed: 1\nsources:\n  - {{name: grounding, path: \"{root}/grounding/*.parquet\", "
            f"format: parquet, category: grounding}}\nstages:\n  - {{name: grounding_check}}\n"
            f"  - {{name: text_filter}}\n  - {{name: count_tokens}}\n  - {{name: pack, settings: {{context_length: 4096}}}}\n"
            f"  - {{name: shards, settings: {{dp_size: 8, micro_batches: 4}}}}\n{model}")


def recipe(root: Path, new: bool) -> str:
    sources = "\n".join(f"  - {{name: {n}, path: \"{root}/{n}/*.parquet\", format: parquet, category: {c}}}"
                        for n, c in (("captions", "caption"), ("texts", "text")))
    model = "model: {preset: qwen2-vl, context_length: 4096}\n" if new else ""
    return (f"name: scale\nseed: 1\nsources:\n{sources}\nstages:\n  - {{name: text_filter}}\n"
            f"  - {{name: count_tokens}}\n  - {{name: pack, settings: {{context_length: 4096}}}}\n"
            f"mixture: {{by: category, unit: samples, ratios: {{caption: 0.8, text: 0.2}}}}\n{model}")


def run_once(code: Path, root: Path, rows: int, new: bool, conversations: bool = False) -> dict:
    work = Path(tempfile.mkdtemp(prefix="scale-run-"))
    (work / "r.yaml").write_text((conversation_recipe if conversations else recipe)(root, new))
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.perf_counter()
    proc, tree_cpu, _ = run_tree([sys.executable, "-c", DRIVER, str(work / "r.yaml"), str(work / "out")],
                                 env=env, cwd=work, timeout=7200)
    if proc.returncode:
        shutil.rmtree(work, ignore_errors=True)
        return {"error": proc.stderr[-1500:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["rows_per_s"] = rows / out["wall"]
    out["tree_cpu"] = tree_cpu   # driver + Ray daemons + workers: the load-independent figure
    run_json = work / "out" / "run.json"
    if run_json.exists():
        out["stage_seconds"], fused = {}, []
        for s in json.loads(run_json.read_text())["stages"]:   # a fused chain is timed as one
            if s.get("fused_into"):
                fused.append(s["name"])
                continue
            out["stage_seconds"]["+".join(fused + [s["name"]])] = s["seconds"]
            fused = []
    out["total_wall"] = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)   # a 5M run's stage files are ~1 GB
    return out


def main(argv: list[str]) -> None:
    before, before_max = "adcf8ab", None
    conversations = "--conversations" in argv   # the conversation corpus through ... pack -> shards
    argv = [a for a in argv if a != "--conversations"]
    if "--before" in argv:
        i = argv.index("--before")
        before = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    if "--before-max" in argv:   # the earlier code only up to this size (it is slow and linear in memory)
        i = argv.index("--before-max")
        before_max = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    sizes = [int(a) for a in argv if a.isdigit()] or (
        [20_000, 100_000] if os.environ.get("MMCURATE_BENCH_QUICK") == "1" else [1_000_000, 5_000_000])
    cores = os.cpu_count() or 1   # Ray runs on every core (BENCH_CORES): the per-core figures divide by this
    old = Path(tempfile.mkdtemp(prefix="mmcurate-before-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), before],
                   check=True, capture_output=True)
    try:
        rows = []
        for n in sizes:
            data = Path(tempfile.mkdtemp(prefix=f"scale-{n}-"))
            try:
                (conversation_corpus if conversations else corpus)(data, n)
                for label, code, new in (("now", ROOT, True), (f"before ({before})", old, False)):
                    if not new and before_max is not None and n > before_max:
                        rows.append([n, label, "not run (--before-max)", "", "", "", ""])
                        continue
                    r = run_once(code, data, n, new, conversations)
                    if "error" in r:
                        print(f"{label} at {n:,} rows failed:\n{r['error']}", flush=True)
                        rows.append([n, label, "failed: " + r["error"].strip().splitlines()[-1][:80], "", "", "", ""])
                        continue
                    per_stage = ", ".join(f"{k} {n / v:,.0f}/s ({n / v / cores:,.0f}/s/core)"
                                          for k, v in (r.get("stage_seconds") or {}).items() if v)
                    rows.append([n, label, f"{r['rows_per_s']:,.0f}", f"{n / r['tree_cpu']:,.0f}",
                                 f"{r['peak_rss_mb']:.0f}", f"{r['cpu']:.1f}", per_stage])
                    print(rows[-1], "driver peak RSS MB while each chain ran:", r.get("stage_rss_mb"), flush=True)
            finally:   # the corpus: 391 MB at 5M rows
                shutil.rmtree(data, ignore_errors=True)
        from run import format_table
        print(format_table(["rows", "code", "end-to-end rows/s (wall)", "rows per CPU-s (whole tree)",
                            "driver peak MB", "driver CPU s", "per stage or fused chain (rows in / wall s, and per core)"], rows))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)


if __name__ == "__main__":
    main(sys.argv[1:])
