"""The image path against its floor (issue #29): realistic photos through the whole curation pipeline.

    python bench/bench_one_decode.py [--n 3000] [--large] [--only floor,inline,ray,stages] [--repeat 1]

The corpus (``photos_corpus``): img2dataset-style tars, every sample its own bytes, photos of 256-2048 px
on the long side, mostly JPEG with some PNG and WebP, 5% exact and 5% near copies, blanks, thumbnails,
banners, broken files, spam captions. ``--large`` is the issue's 30,000 samples (~2.5 GB, minutes to build).

Contenders, each in a child process whose whole tree's CPU is counted (``proctree``):

* **floor**: one Python process reads every tar member once, sha256s each image, decodes it once at
  1/8 scale (Pillow ``draft``; PNG and WebP in full) to a 32x32 grey thumbnail, and writes the
  survivors' members (decodable, first copy of their bytes) to new tars;
* **inline** / **ray**: ``pipelines.run`` of image_filter -> text_filter -> exact_dedup -> image_dedup ->
  text_dedup -> count_tokens -> pack -> shards (input_ids) with the inline or the Ray executor;
* **stages**: each per-sample stage alone (``Stage.run`` on the ingested rows, one process), its CPU
  seconds, to say where the time goes.

Per sample = (CPU(N) - CPU(N/10)) / 0.9N over the whole tree, so start-up (imports, Ray) cancels out; the
whole-run totals are printed too. The targets: inline and Ray within 1.5x of the floor, Ray within 1.1x of
inline. Each run's verdicts (key -> stage, reason) land in ``OUT/verdicts-<contender>-<n>.json`` so two
checkouts can be compared sample by sample.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]
from proctree import ProcessSampler, run_tree  # noqa: E402

BENCH_CORES = "all"       # the Ray contender uses every core; CPU (not wall) is the figure compared
BENCH_TIMEOUT_S = 3600

STAGES = """stages:
  - {name: image_filter, settings: {preset: default}}
  - {name: text_filter, settings: {preset: default}}
  - {name: exact_dedup, settings: {survivor_by: resolution}}
  - {name: image_dedup, settings: {survivor_by: resolution, max_distance: 12}}
  - {name: text_dedup, settings: {survivor_by: resolution, threshold: 0.6, ngram: 5}}
  - {name: count_tokens}
  - {name: pack, settings: {context_length: 2048, algorithm: plan}}
  - {name: shards, settings: {dp_size: 1, micro_batches: 1, input_ids: true}}
model: {preset: qwen2-vl, template: chat, max_pixels: 1003520, context_length: 2048}
"""
PER_SAMPLE_STAGES = ("image_filter", "text_filter", "exact_dedup", "image_dedup", "text_dedup", "count_tokens")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")


def recipe(shards: Path) -> str:
    return (f"name: one-decode\nseed: 7\nsources:\n  - {{name: photos, path: \"{shards}/*.tar\", "
            f"format: webdataset, category: caption}}\n{STAGES}")


# --- children ---------------------------------------------------------------------------------------
def child_floor(shards: Path, work: Path) -> dict:
    """Read once, sha256, one 1/8-scale decode to a 32x32 grey thumbnail, write the survivors."""
    from PIL import Image
    out = work / "floor"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    seen: set[bytes] = set()
    kept = total = 0
    for path in sorted(shards.glob("*.tar")):
        samples: dict[str, list[tuple[tarfile.TarInfo, bytes]]] = {}
        with tarfile.open(path) as tar:
            for info in tar:
                if info.isfile():
                    samples.setdefault(info.name.split(".", 1)[0], []).append((info, tar.extractfile(info).read()))
        with tarfile.open(out / path.name, "w", format=tarfile.USTAR_FORMAT) as dst:
            for members in samples.values():
                total += 1
                image = next((data for info, data in members if info.name.endswith(IMAGE_EXTS)), None)
                if image is None:
                    continue
                digest = hashlib.sha256(image).digest()
                try:
                    im = Image.open(io.BytesIO(image))
                    im.draft("L", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
                    im.convert("L").resize((32, 32), Image.Resampling.BILINEAR)
                except Exception:   # noqa: BLE001 — the floor only needs to know it did not decode
                    continue
                if digest in seen:
                    continue
                seen.add(digest)
                kept += 1
                for info, data in members:
                    dst.addfile(info, io.BytesIO(data))
    return {"in": total, "kept": kept}


def child_pipeline(shards: Path, work: Path, executor: str) -> dict:
    import pyarrow.parquet as pq
    from pipelines import run
    out = work / f"run-{executor}-{shards.name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "recipe.yaml").write_text(recipe(shards))
    res = run(str(out / "recipe.yaml"), out=str(out / "out"), executor=executor, progress=False)
    rejects = pq.read_table(out / "out" / "rejects.parquet").select(["key", "stage", "_reason"]).to_pylist()
    verdicts = {r["key"]: [r["stage"], r["_reason"]] for r in rejects}
    (work / f"verdicts-{executor}-{shards.name}.json").write_text(json.dumps(verdicts, sort_keys=True))
    timings = json.loads((out / "out" / "run.json").read_text())["stages"]
    shutil.rmtree(out, ignore_errors=True)
    stages = res.report["stages"]
    return {"in": stages[0]["in"], "kept": res.report.get("final_samples", stages[-1]["out"]),
            "chains": {t["name"]: t["seconds"] for t in timings if t.get("seconds") is not None}}


def child_stages(shards: Path) -> dict:
    """CPU seconds of each per-sample stage alone, in this process, on the ingested rows."""
    from curate import base as S
    from curate.readers.read import read_source
    t0 = time.process_time()
    table = read_source(str(shards / "*.tar"), "webdataset", source="photos", category="caption").kept
    cpu = {"ingest": time.process_time() - t0}
    settings = {"image_filter": {"preset": "default"}, "text_filter": {"preset": "default"},
                "exact_dedup": {"survivor_by": "resolution"}, "image_dedup": {"survivor_by": "resolution"},
                "text_dedup": {"survivor_by": "resolution", "threshold": 0.6, "ngram": 5}, "count_tokens": {}}
    for name in PER_SAMPLE_STAGES:
        stage = S.build(name, settings[name])
        t0 = time.process_time()
        table = stage.run(table).kept
        cpu[name] = time.process_time() - t0
    return {"in": None, "kept": table.num_rows, "cpu": cpu}


# --- the parent -------------------------------------------------------------------------------------
def print_roles(who: str, at_small: dict[str, tuple[float, int]], at_n: dict[str, tuple[float, int]],
                cpu_small: float, cpu: float, n: int, small: int) -> None:
    """Where a contender's CPU goes, by process role, at N/10 and N samples (``ProcessSampler``)."""
    from run import format_table
    rows = []
    for role in sorted(set(at_small) | set(at_n), key=lambda r: -at_n.get(r, (0.0, 0))[0]):
        (s_cpu, s_n), (b_cpu, b_n) = at_small.get(role, (0.0, 0)), at_n.get(role, (0.0, 0))
        rows.append([role, f"{s_cpu:.1f} ({s_n})", f"{b_cpu:.1f} ({b_n})", f"{(b_cpu - s_cpu) / (n - small) * 1000:.2f}"])
    rows.append(["(tree counter)", f"{cpu_small:.1f}", f"{cpu:.1f}", f"{(cpu - cpu_small) / (n - small) * 1000:.2f}"])
    print(f"  {who}: CPU by process role (sampled every 0.2 s; processes in brackets)")
    print(format_table(["role", f"CPU s at {small}", f"CPU s at {n}", "CPU ms/sample"], rows), flush=True)


def tree(args: list[str], sampler: ProcessSampler | None = None) -> tuple[float, float, dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    proc, cpu, wall = run_tree(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0"), cwd=ROOT,
                               sampler=sampler)
    if sampler is not None:
        sampler.stop()   # before the next tree starts: its processes would count as this one's
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return cpu, wall, json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300 if os.environ.get("MMCURATE_BENCH_QUICK") == "1" else 3000)
    ap.add_argument("--large", action="store_true", help="the issue's 30,000 samples")
    ap.add_argument("--root", type=Path, default=ROOT / "out" / "bench_one_decode")
    ap.add_argument("--only", default="floor,inline,ray,stages")
    ap.add_argument("--child", choices=["floor", "inline", "ray", "stages"])
    ap.add_argument("--shards", type=Path)
    ap.add_argument("--by-process", action="store_true",
                    help="also split each contender's CPU by process role (driver, raylet, GCS, workers...)")
    args = ap.parse_args(argv)
    if args.child:
        if args.child == "floor":
            answer = child_floor(args.shards, args.root)
        elif args.child == "stages":
            answer = child_stages(args.shards)
        else:
            answer = child_pipeline(args.shards, args.root, args.child)
        print(json.dumps(answer))
        return 0
    import photos_corpus
    from run import format_table
    n = 30_000 if args.large else args.n
    small = max(1, n // 10)
    t0 = time.perf_counter()
    big_dir, small_dir = photos_corpus.build(args.root, n), photos_corpus.build(args.root, small)
    info = json.loads((big_dir / "_ok").read_text())
    print(f"corpus: {n} samples, {info['image_bytes'] / 1e9:.2f} GB of images ({time.perf_counter() - t0:.0f} s to "
          f"build or find); per sample = (CPU(N) - CPU(N/10)) / 0.9N, whole process tree", flush=True)
    rows, results = [], {}
    for who in [w for w in args.only.split(",") if w != "stages"]:
        base = ["--root", str(args.root), "--child", who]
        samplers = (ProcessSampler(), ProcessSampler()) if args.by_process else (None, None)
        cpu_small, _, _ = tree(base + ["--shards", str(small_dir)], samplers[0])
        cpu, wall, answer = tree(base + ["--shards", str(big_dir)], samplers[1])
        per = (cpu - cpu_small) / (n - small) * 1000.0
        if args.by_process:
            print_roles(who, samplers[0].stop(), samplers[1].stop(), cpu_small, cpu, n, small)
        results[who] = per
        rows.append([who, f"{per:.2f}", "", f"{cpu:.1f}", f"{wall:.1f}", f"{answer['kept']}/{n}"])
        if answer.get("chains"):
            print(f"  {who}: wall seconds per stage or fused chain: " +
                  ", ".join(f"{k} {v:.1f}" for k, v in answer["chains"].items()), flush=True)
        print(f"  {who}: {per:.2f} CPU ms/sample", flush=True)
    for row in rows:
        if "floor" in results:
            row[2] = f"{results[row[0]] / results['floor']:.2f}x"
    print(format_table(["contender", "CPU ms/sample", "vs floor", "CPU s total", "wall s", "kept"], rows))
    if "inline" in results and "ray" in results:
        print(f"Ray / inline: {results['ray'] / results['inline']:.2f}x (target <= 1.1x); pipeline / floor target <= 1.5x")
    if "stages" in args.only.split(","):
        _, _, answer = tree(["--root", str(args.root), "--child", "stages", "--shards", str(big_dir)])
        images = n   # one image per sample
        print(format_table(["stage (alone, one process)", "CPU s", "CPU ms/sample"],
                           [[k, f"{v:.2f}", f"{v / images * 1000:.2f}"] for k, v in answer["cpu"].items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
