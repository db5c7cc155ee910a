"""`make bench`: run every bench/bench_*.py in its own process, pinned to one core, print their tables.

Each benchmark is a plain script that prints its own table to stdout. Running them as separate
processes keeps their imports and caches apart; pinning to one CPU and setting the thread variables
to 1 makes "per core" numbers honest (tokenizers, BLAS and Arrow otherwise use every core). A
benchmark that measures multi-core throughput opts out with a module-level line
``BENCH_CORES = "all"``: it then runs unpinned with the environment as is.

    python bench/run.py                 # all benchmarks
    python bench/run.py packing tokens  # only those whose file name contains a word given
    python bench/run.py --quick         # smaller inputs (MMCURATE_BENCH_QUICK=1), for a smoke run
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false", "ARROW_NUM_THREADS": "1", "OMP_THREAD_LIMIT": "1",
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
}


def format_table(headers: list[str], rows: list[list[object]]) -> str:
    """A plain fixed-width table (benchmarks import this: `from run import format_table`)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def quick() -> bool:
    """True under `run.py --quick`: benchmarks shrink their inputs."""
    return os.environ.get("MMCURATE_BENCH_QUICK") == "1"


def discover(words: list[str]) -> list[Path]:
    scripts = sorted(HERE.glob("bench_*.py"))
    if words:
        scripts = [s for s in scripts if any(w in s.stem for w in words)]
    return scripts


def _pin_to_one_core() -> None:
    if hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[-1]})


def wants_all_cores(script: Path) -> bool:
    return re.search(r"""^BENCH_CORES\s*=\s*["']all["']""", script.read_text(), flags=re.M) is not None


def own_timeout(script: Path) -> int:
    """A benchmark that needs longer than the default declares ``BENCH_TIMEOUT_S = <seconds>``."""
    m = re.search(r"^BENCH_TIMEOUT_S\s*=\s*(\d+)", script.read_text(), flags=re.M)
    return int(m.group(1)) if m else 0


def run_one(script: Path, quick: bool, timeout: int) -> tuple[int, float, str]:
    timeout = max(timeout, own_timeout(script))
    all_cores = wants_all_cores(script)
    env = dict(os.environ) if all_cores else dict(os.environ, **SINGLE_THREAD_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if quick:
        env["MMCURATE_BENCH_QUICK"] = "1"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout, preexec_fn=None if all_cores else _pin_to_one_core)
        out = proc.stdout + (("\n" + proc.stderr[-4000:]) if proc.returncode else "")
        return proc.returncode, time.perf_counter() - t0, out
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return 124, time.perf_counter() - t0, partial + f"\n(timed out after {timeout}s)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("only", nargs="*", help="run only benchmarks whose file name contains one of these words")
    ap.add_argument("--quick", action="store_true", help="smaller inputs for a smoke run")
    ap.add_argument("--timeout", type=int, default=900, help="seconds allowed per benchmark")
    args = ap.parse_args(argv)
    scripts = discover(args.only)
    if not scripts:
        print("no benchmarks matched", file=sys.stderr)
        return 2
    results = []
    for script in scripts:
        print(f"=== {script.stem} " + "=" * max(0, 72 - len(script.stem)), flush=True)
        rc, seconds, out = run_one(script, args.quick, args.timeout)
        print(out.rstrip(), flush=True)
        print(flush=True)
        results.append((script.stem, rc, seconds))
    print("=== summary " + "=" * 66)
    for name, rc, seconds in results:
        print(f"{name:<28} {'ok' if rc == 0 else f'FAILED (exit {rc})':<20} {seconds:8.1f} s")
    return 0 if all(rc == 0 for _, rc, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
