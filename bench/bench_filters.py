"""CPU per sample of the rule filters (``image_filter`` + ``text_filter``) against Data-Juicer 1.6.1.

    python bench/bench_filters.py [--n 20000] [--repeat 3] [--no-ray] [--ray-n 2000]
                                  [--only inline,dj,dj-fused,ray,dj-ray] [--corpus small|photos]
    python bench/run.py filters [--quick]                     # via make bench (2,000 samples quick)

The corpus is img2dataset-style (bench/filters_corpus.py): webdataset tars for mmcurate, the same
samples as JSONL + image files for Data-Juicer (it reads images by path). Each contender runs in a
child process; the parent is a Linux *child subreaper*, so every descendant (Ray's raylet, GCS and
workers included) is reaped by it and its CPU shows in ``RUSAGE_CHILDREN``: the figure is the CPU
(user + system) of the whole process tree. Each run is made twice, on all N samples and on N/10,
and the cost per sample is the difference divided by 0.9 N — startup (imports, Ray, reading the
corpus) cancels out; the table also prints the whole-run total.

Rules, side by side (mmcurate: the ``default`` presets; Data-Juicer: its ops with equivalent limits):

=================================  =================================================================
mmcurate (image_filter, text_filter)  Data-Juicer op
=================================  =================================================================
min side 112, min pixels 12544     ``image_shape_filter(min_width=112, min_height=112)``
aspect ratio <= 5                  ``image_aspect_ratio_filter(min_ratio=0.2, max_ratio=5)``
bits per pixel >= 0.04 (size)      ``image_size_filter(min_size="2KB")``
min 2 words, 5 chars, max 50000    ``words_num_filter(min_num=2)``, ``text_length_filter(5, 50000)``
repeated 2/3/4-grams, tail loops   ``word_repetition_filter(rep_len=2, max_ratio=0.2)``,
                                   ``character_repetition_filter(rep_len=10, max_ratio=0.5)``
=================================  =================================================================

mmcurate does more per image (decode budget, JPEG quality, a reduced decode for blank, corrupt and
truncated) and per text (symbol/digit ratios, boilerplate, duplicate lines). Data-Juicer decodes
every image in full (``load_image`` converts to RGB); with ``op_fusion`` its image ops share one
decode per sample ("fused"). Data-Juicer runs from its own virtualenv, ``.djvenv``, that
``make .djvenv`` builds (``make bench`` depends on it; ``--dj-python`` points elsewhere); without
it those rows say "skipped". Target (issue #10 item 6): mmcurate inline <= 0.5x Data-Juicer's best
single-process CPU per sample, taken per round. The Ray rows (mmcurate's RayExecutor, Data-Juicer's
``executor_type: ray``) run once: they show what the engine adds, not the rules.

Rounds: every contender runs once per round, interleaved (mmcurate, Data-Juicer, mmcurate, ...);
the table gives the median and the [min-max] spread, since the machine is shared and its load
drifts.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]
from proctree import run_tree  # noqa: E402  (bench/ is on the path above)

# 20k samples, two corpus sizes, three rounds of three contenders (Data-Juicer decodes every image in
# full) plus two Ray rows on 2k: ~15-30 min here; bench/run.py reads this line and allows an hour and a half.
BENCH_TIMEOUT_S = 5400

DEFAULT_DJ_PYTHON = ROOT / ".djvenv" / "bin" / "python"

# Data-Juicer's process list (its recipe YAML, as Python): the rules equivalent to mmcurate's defaults.
DJ_PROCESS = [
    ("image_shape_filter", {"min_width": 112, "min_height": 112, "any_or_all": "all"}),
    ("image_aspect_ratio_filter", {"min_ratio": 0.2, "max_ratio": 5.0, "any_or_all": "all"}),
    ("image_size_filter", {"min_size": "2KB", "any_or_all": "all"}),
    ("text_length_filter", {"min_len": 5, "max_len": 50_000}),
    ("words_num_filter", {"min_num": 2}),
    ("word_repetition_filter", {"rep_len": 2, "max_ratio": 0.2}),
    ("character_repetition_filter", {"rep_len": 10, "max_ratio": 0.5}),
]


# --- children (one contender, one corpus size, one process tree) --------------------------------------
def child_mmcurate(root: Path, n: int, executor: str, facts: bool = False) -> dict:
    """image_filter -> text_filter built as a recipe of these two stages builds them: no later stage
    reads ``image_facts``, so the filter computes none; `facts`: as if a dedup stage followed (what
    the filter computed in every run before issue #29's step 1)."""
    import pyarrow.parquet as pq
    from curate import base as S
    from curate.media.image_facts import FACTS_COLUMN
    table = pq.read_table(root / "ingested.parquet").slice(0, n)
    later = frozenset(S.columns_read("text_filter")) | ({FACTS_COLUMN} if facts else frozenset())
    stages = [S.build("image_filter", {}, S.StageContext(later_reads=later)),
              S.build("text_filter", {}, S.StageContext(stage_index=1, later_reads=frozenset()))]
    if executor == "inline":
        for stage in stages:
            table = stage.run(table).kept
        return {"in": n, "kept": table.num_rows}
    from pipelines.engine.executor import make_executor
    from pipelines.engine.tables import data_files
    work = root / f"ray-{n}"
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    (work / "in").mkdir(parents=True)
    pq.write_table(table, work / "in" / "part-0.parquet")
    ex = make_executor("ray")
    try:
        files = data_files(work / "in")
        for i, stage in enumerate(stages):
            ex.map_stage(stage, files, work / f"out{i}")
            files = data_files(work / f"out{i}")
    finally:
        ex.close()
    out = pq.read_table(files)
    kept = sum(1 for s in out.column("_status").to_pylist() if s == "kept")
    return {"in": n, "kept": kept}


def child_data_juicer(root: Path, n: int, fused: bool) -> dict:
    import datasets
    from data_juicer.utils.lazy_loader import LazyLoader

    def refuse_install(cls, package_spec, pip_args=None):  # Data-Juicer pip-installs what it lacks (torch!)
        raise ImportError(f"bench: refusing Data-Juicer's run-time install of {package_spec}")
    LazyLoader._install_package = classmethod(refuse_install)
    import data_juicer.ops.base_op as dj_base_op
    dj_base_op.free_models = lambda *a, **k: None  # no models here; its torch.cuda.empty_cache() needs torch
    from data_juicer.core.data import NestedDataset
    from data_juicer.ops import load_ops
    from loguru import logger
    logger.remove()
    datasets.disable_caching()
    datasets.disable_progress_bars()
    ops = load_ops([{name: dict(args, num_proc=1)} for name, args in DJ_PROCESS])
    if fused:
        from data_juicer.ops.op_fusion import fuse_operators
        ops = fuse_operators(ops)
    rows = [json.loads(line) for _, line in zip(range(n), open(root / "dj.jsonl"))]
    ds = NestedDataset(datasets.Dataset.from_list(rows))
    out = ds.process(ops, open_monitor=False)
    return {"in": n, "kept": len(out)}


def child_data_juicer_ray(root: Path, n: int) -> dict:
    """Data-Juicer's own Ray executor (``executor_type: ray``, op fusion on) on the first `n` samples:
    it reads the JSONL with Ray Data, runs the ops as map_batches/filter and exports JSONL."""
    import shutil
    import yaml
    work = root / f"dj-ray-{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with open(root / "dj.jsonl") as src, open(work / "in.jsonl", "w") as dst:
        dst.writelines(line for _, line in zip(range(n), src))
    config = {"project_name": "bench_filters", "dataset_path": str(work / "in.jsonl"),
              "export_path": str(work / "out.jsonl"), "work_dir": str(work), "executor_type": "ray",
              "ray_address": "local", "np": 1, "op_fusion": True, "open_monitor": False,
              "process": [{name: args} for name, args in DJ_PROCESS]}
    (work / "recipe.yaml").write_text(yaml.safe_dump(config))
    from data_juicer.config import init_configs
    from data_juicer.core.executor.ray_executor import RayExecutor
    from loguru import logger
    logger.remove()
    RayExecutor(init_configs(args=["--config", str(work / "recipe.yaml")])).run()
    import ray
    ray.shutdown()
    out = work / "out.jsonl"
    files = [out] if out.is_file() else sorted(out.glob("*.json*"))
    return {"in": n, "kept": sum(1 for f in files for _ in open(f))}


# --- the parent: CPU of the whole process tree --------------------------------------------------------
def tree_cpu(cmd: list[str]) -> tuple[float, float, dict]:
    """(CPU seconds of the process tree, wall seconds, the child's JSON answer); see bench/proctree.py."""
    proc, cpu, wall = run_tree(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{proc.stderr[-3000:]}")
    return cpu, wall, json.loads(proc.stdout.strip().splitlines()[-1])


def measure(name: str, cmd: list[str], n: int) -> dict:
    small = max(1, n // 10)
    cpu_small, _, _ = tree_cpu(cmd + ["--n", str(small)])
    cpu, wall, answer = tree_cpu(cmd + ["--n", str(n)])
    per = (cpu - cpu_small) / (n - small) * 1000.0
    return {"name": name, "ms": per, "total": cpu, "wall": wall, "kept": answer["kept"], "in": answer["in"]}


def ingest(root: Path, shards: Path, keys: set[str] | None = None) -> None:
    """Ingest once (not timed): the filters read references with offsets, as in a real run. With
    `keys`, only those samples (the ones Data-Juicer is given too) are kept."""
    target = root / "ingested.parquet"
    if target.exists():
        return
    import pyarrow as pa
    import pyarrow.parquet as pq
    from curate.readers.read import read_source
    read = read_source(str(shards / "*.tar"), "webdataset", source="bench")
    kept = read.kept
    if keys is not None:
        kept = kept.filter(pa.array([k.split("/")[-1] in keys for k in kept.column("key").to_pylist()]))
        if kept.num_rows != len(keys):
            raise RuntimeError(f"ingest kept {kept.num_rows} of the {len(keys)} samples Data-Juicer reads")
    elif read.dropped.num_rows:
        raise RuntimeError(f"ingest dropped {read.dropped.num_rows} bench samples")
    pq.write_table(kept, target)


def main(argv: list[str] | None = None) -> int:
    from run import quick
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2_000 if quick() else 20_000)
    ap.add_argument("--repeat", type=int, default=1 if quick() else 3,
                    help="rounds; each round runs every contender once, interleaved (load drifts on a shared machine)")
    ap.add_argument("--root", type=Path, default=ROOT / "out" / "bench_filters")
    ap.add_argument("--dj-python", type=Path, default=DEFAULT_DJ_PYTHON)
    ap.add_argument("--no-ray", action="store_true", help="skip the (slow) Ray executor runs")
    ap.add_argument("--ray-n", type=int, default=2_000,
                    help="samples for the Ray rows (the first ones of the corpus; Ray's start-up dominates wall time)")
    ap.add_argument("--only", default="inline,dj,dj-fused,ray,dj-ray",
                    help="contenders to run, comma-separated (also: inline-facts, image_filter computing the "
                         "image_facts a later dedup stage would read)")
    ap.add_argument("--corpus", choices=["small", "photos"], default="small",
                    help="small: 600 small JPEGs cycled (filters_corpus); photos: realistic photos, each sample "
                         "its own bytes (photos_corpus; the default root becomes out/bench_filters_photos)")
    ap.add_argument("--child", choices=["inline", "inline-facts", "ray", "dj", "dj-fused", "dj-ray"])
    args = ap.parse_args(argv)
    if args.corpus == "photos" and args.root == ROOT / "out" / "bench_filters":
        args.root = ROOT / "out" / "bench_filters_photos"
    if args.child:
        if args.child in ("inline", "inline-facts", "ray"):
            answer = child_mmcurate(args.root, args.n, args.child.split("-")[0], args.child == "inline-facts")
        elif args.child == "dj-ray":
            answer = child_data_juicer_ray(args.root, args.n)
        else:
            answer = child_data_juicer(args.root, args.n, args.child == "dj-fused")
        print(json.dumps(answer))
        return 0
    import filters_corpus
    if args.corpus == "photos":   # realistic photos (bench/photos_corpus.py), the samples Pillow decodes
        import photos_corpus
        shards = photos_corpus.build(args.root, args.n)
        if not (args.root / "ingested.parquet").exists():
            _, keys = photos_corpus.dj_inputs(shards, args.root)
            ingest(args.root, shards, keys)
    else:
        paths = filters_corpus.build(args.root, args.n)
        ingest(args.root, paths["shards"])
    me = [sys.executable, str(Path(__file__).resolve()), "--root", str(args.root)]
    dj = [str(args.dj_python), str(Path(__file__).resolve()), "--root", str(args.root)]
    contenders = {"inline": ("mmcurate inline", me), "inline-facts": ("mmcurate inline, image_facts carried", me),
                  "ray": ("mmcurate ray", me),
                  "dj": ("data-juicer 1.6.1", dj), "dj-fused": ("data-juicer 1.6.1 fused", dj),
                  "dj-ray": ("data-juicer 1.6.1 ray", dj)}
    chosen = [c for c in args.only.split(",") if not (args.no_ray and c in ("ray", "dj-ray"))]
    if not args.dj_python.exists() and {"dj", "dj-fused"} & set(chosen):
        print(f"data-juicer: skipped ({args.dj_python} not found: `make .djvenv` builds it)")
        chosen = [c for c in chosen if not c.startswith("dj")]
    rounds: list[dict[str, dict]] = []
    for r in range(args.repeat):
        rounds.append({})
        for key in chosen:   # Ray is slow and noisy: one round is enough for its row
            if key in ("ray", "dj-ray") and r:
                continue
            name, cmd = contenders[key]
            n = min(args.n, args.ray_n) if key in ("ray", "dj-ray") else args.n
            rounds[-1][name] = measure(name, cmd + ["--child", key], n)
            print(f"  round {r + 1}: {name}: {rounds[-1][name]['ms']:.3f} CPU ms/sample", flush=True)
    print_table(rounds, args.n)
    return 0


def _spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """median [min-max] of a list (just the value for one)."""
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def _best_dj(rnd: dict[str, dict]) -> float | None:
    """The round's best single-process Data-Juicer (plain or fused); its Ray mode is compared with ours."""
    single = [v["ms"] for k, v in rnd.items() if k.startswith("data-juicer") and not k.endswith(" ray")]
    return min(single) if single else None


def print_table(rounds: list[dict[str, dict]], n: int) -> None:
    """One row per contender: the median over rounds and the spread. The target ratio is taken per round
    (mmcurate inline against that round's best Data-Juicer), so that load drifting between rounds cancels."""
    from run import format_table
    names = list(dict.fromkeys(name for rnd in rounds for name in rnd))
    ratios = [rnd["mmcurate inline"]["ms"] / _best_dj(rnd)
              for rnd in rounds if "mmcurate inline" in rnd and _best_dj(rnd)]
    table = []
    for name in names:
        runs = [rnd[name] for rnd in rounds if name in rnd]
        table.append([name, _spread([r["ms"] for r in runs]), len(runs), _spread([r["total"] for r in runs], "{:.1f}"),
                      _spread([r["wall"] for r in runs], "{:.1f}"), f"{runs[0]['kept']}/{runs[0]['in']}"])
    print(f"{n} img2dataset-style samples (Ray rows: the first ones, see 'kept'); CPU of the whole process tree, "
          f"per sample = (CPU(N) - CPU(N/10)) / 0.9N; median [min-max] over interleaved rounds")
    print(format_table(["contender", "CPU ms/sample", "rounds", "CPU s total", "wall s", "kept"], table))
    if ratios:
        verdict = "met" if statistics.median(ratios) <= 0.5 else "NOT met"
        print(f"target mmcurate inline <= 0.5x Data-Juicer's best (per round): {_spread(ratios, '{:.2f}')}x "
              f"({verdict} on the median)")
    first = rounds[0] if rounds else {}
    if "mmcurate ray" in first and "data-juicer 1.6.1 ray" in first:
        print(f"Ray modes (one round): mmcurate {first['mmcurate ray']['ms']:.3f} vs Data-Juicer "
              f"{first['data-juicer 1.6.1 ray']['ms']:.3f} CPU ms/sample "
              f"({first['mmcurate ray']['ms'] / first['data-juicer 1.6.1 ray']['ms']:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
