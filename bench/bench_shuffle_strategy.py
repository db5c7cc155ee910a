"""Ray's sort shuffle against its hash shuffle for one ``shuffle_reduce`` with many input blocks (issue 31).

    python bench/bench_shuffle_strategy.py [ROWS] [BLOCKS] [PARTITIONS]   (default 2,000,000 200 200)

ROWS narrow rows (an int64 _ordinal, a string key of 2,000 values, a 40-byte payload) in BLOCKS
parquet files (a read block each) go through ``RayData.shuffle_reduce(key, ..., PARTITIONS)`` — its
reduce returns a row per key — on a local Ray (2 CPUs), once with the sort shuffle and once with the
hash shuffle (``shuffles.SORT_PIECES_BUDGET`` forced), each in a fresh driver process. Per run: the
driver's peak resident memory during the shuffle (VmHWM, reset before it) and its growth over the
resident memory before; the references the driver owns, the most sampled (every 0.25 s) while the
shuffle runs and those still held while its result is; the shuffle's wall and driver CPU seconds;
and the CPU seconds of the whole process tree (driver, Ray's daemons and workers, Ray's start
included: the same in both runs), the figure to compare on a shared machine.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from proctree import run_tree  # noqa: E402

DRIVER = r'''
import gc, json, resource, sys, threading, time
import pyarrow as pa, pyarrow.compute as pc
import ray
from pipelines.engine import shuffles
from pipelines.engine.ray_data import RayData, RayExecutor

files, partitions, hashed = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "hash"
shuffles.SORT_PIECES_BUDGET = 0 if hashed else 10**12

def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field)) / 1024

def per_key(group):
    counts = group.group_by("key", use_threads=False).aggregate([([], "count_all")])
    return counts.rename_columns(["key", "rows"])

executor = RayExecutor(num_cpus=2)
owned = ray._private.worker.global_worker.core_worker.get_all_reference_counts
data = RayData(executor._read(files))
out = data.shuffle_reduce("key", per_key, partitions)
assert shuffles.hash_shuffles(out.ds) == int(hashed)
gc.collect()
refs_before, rss_before = len(owned()), status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")   # resets VmHWM to the current resident memory
peak_refs, done = [0], threading.Event()
def sample():
    while not done.is_set():
        peak_refs[0] = max(peak_refs[0], len(owned()))
        done.wait(0.25)
threading.Thread(target=sample, daemon=True).start()
cpu0, t0 = time.process_time(), time.perf_counter()
result = out.materialize()
wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
done.set()
gc.collect()
held = len(owned()) - refs_before
table = result.gather()
print(json.dumps({"strategy": "hash" if hashed else "sort", "wall_s": round(wall, 1), "driver_cpu_s": round(cpu, 1),
                  "driver_peak_mb": round(status("VmHWM"), 1), "driver_growth_mb": round(status("VmHWM") - rss_before, 1),
                  "peak_refs": peak_refs[0] - refs_before, "held_refs": held, "keys": table.num_rows,
                  "rows": int(pc.sum(table.column("rows")).as_py())}))
executor.close()
'''


def write_corpus(root: Path, rows: int, blocks: int) -> list[str]:
    rng = np.random.default_rng(7)
    per = -(-rows // blocks)
    files = []
    for b in range(blocks):
        ords = np.arange(b * per, min(rows, (b + 1) * per), dtype=np.int64)
        keys = rng.integers(0, 2_000, ords.shape[0]).astype(str)
        table = pa.table({"_ordinal": ords, "key": pa.array(keys), "payload": pa.array(np.char.add("x" * 36, keys))})
        files.append(str(root / f"part-{b:05d}.parquet"))
        pq.write_table(table, files[-1])
    return files


def main() -> None:
    rows, blocks, partitions = (int(a) for a in (sys.argv[1:] + ["2000000", "200", "200"][len(sys.argv[1:]):]))
    with tempfile.TemporaryDirectory() as tmp:
        files = write_corpus(Path(tmp), rows, blocks)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
        for strategy in ("sort", "hash"):
            proc, tree_cpu, tree_wall = run_tree([sys.executable, "-c", DRIVER, json.dumps(files), str(partitions), strategy],
                                                 env, cwd=ROOT, timeout=900)
            if proc.returncode:
                sys.exit(proc.stderr[-3000:])
            line = json.loads(proc.stdout.strip().splitlines()[-1])
            assert line["rows"] == rows
            print(json.dumps({"rows": rows, "blocks": blocks, "partitions": partitions, **line,
                              "tree_cpu_s": round(tree_cpu, 1), "tree_wall_s": round(tree_wall, 1)}), flush=True)


if __name__ == "__main__":
    main()
