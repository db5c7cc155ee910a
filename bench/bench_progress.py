"""What showing progress costs on a large run (issue #27's target: under 1% of the run's CPU).

A metadata-only corpus (bench_scale's: captions and texts) through ingest -> text_filter ->
count_tokens -> mixture -> pack on Ray, with progress on and its lines going to a file (the plain
lines a log gets every ~10 s). An A/B of two runs cannot resolve 1% on a shared machine, so the cost
is counted, not guessed from a difference:

* the driver's polling threads' own CPU (``time.thread_time`` in each, summed into run.json), which
  includes reading the counter files;
* each add's cost on the worker that makes it (one per batch of a pass's last stage: the
  ``entered_rows`` count of the batch and the rewrite of that worker's counter file), measured here
  on this machine, times the number of adds run.json records;

against the CPU seconds of the whole process tree (driver, Ray daemons, workers).

    python bench/bench_progress.py [ROWS]        # default 1,000,000 (MMCURATE_BENCH_QUICK=1: 100,000)
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

BENCH_CORES = "all"
BENCH_TIMEOUT_S = 1800
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import corpus, recipe  # noqa: E402
from proctree import run_tree  # noqa: E402

DRIVER = r'''
import json, sys, tempfile, time
import pyarrow as pa
from pipelines.engine.progress import FileCounter, entered_rows

# the per-add cost a worker pays: count the batch's entering rows, rewrite its counter file
batch = pa.table({"_status": ["kept"] * 4000 + ["rejected"] * 96, "_dropped_at": pa.nulls(4096, pa.int32())})
counter = FileCounter(tempfile.mkdtemp(prefix="probe-", dir=sys.argv[2] + "-probe"))
n = 3000
c0 = time.process_time()
for _ in range(n):
    counter.add(entered_rows(batch, True))
per_add = (time.process_time() - c0) / n
counter.close()

from pipelines import run
t0 = time.perf_counter()
res = run(sys.argv[1], out=sys.argv[2], executor="ray", progress=True)
info = json.loads((res.out_dir / "run.json").read_text())
print(json.dumps({"wall": time.perf_counter() - t0, "per_add_s": per_add, "cost": info["progress_cost"]}))
'''


def main(argv: list[str]) -> None:
    rows = int(argv[0]) if argv else (100_000 if os.environ.get("MMCURATE_BENCH_QUICK") == "1" else 1_000_000)
    data = Path(tempfile.mkdtemp(prefix=f"progress-{rows}-"))
    try:
        corpus(data, rows)
        (data / "r.yaml").write_text(recipe(data, new=True))
        (data / "out-probe").mkdir()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("MMCURATE_PROGRESS_INTERVAL", None)
        proc, tree_cpu, wall = run_tree([sys.executable, "-c", DRIVER, str(data / "r.yaml"), str(data / "out")],
                                        env=env, cwd=data, timeout=BENCH_TIMEOUT_S)
        if proc.returncode:
            print(proc.stderr[-2000:])
            sys.exit(1)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        lines = [l for l in proc.stdout.splitlines() if " rows  " in l or "running " in l or "done in" in l]
    finally:
        shutil.rmtree(data, ignore_errors=True)
    cost = result["cost"]
    adds = int(cost.get("adds", 0))
    workers = adds * result["per_add_s"]
    total = cost["poll_cpu_s"] + workers
    from run import format_table
    print(format_table(["rows", "run wall s", "process-tree CPU s", "progress lines", "driver poll CPU s",
                        "adds (batches)", "per add (worker) ms", "progress CPU s", "share of the run's CPU"],
                       [[f"{rows:,}", f"{wall:.1f}", f"{tree_cpu:.1f}", len(lines), f"{cost['poll_cpu_s']:.3f}",
                         adds, f"{result['per_add_s'] * 1e3:.3f}", f"{total:.3f}", f"{total / tree_cpu:.3%}"]]))
    print("\n".join(lines[:12]))


if __name__ == "__main__":
    main(sys.argv[1:])
