"""Conversation records at metadata speed (issue 31, item 1), in one process, per CPU-second.

* Ingest: the records of N caption rows (bench_scale's captions) and of N text-only grounding
  conversations (bench_scale's conversation corpus: LLaVA from/value, two turns, a box label in the
  answer), both parquet, read by ``curate.readers.read.iter_file_tables`` exactly as an ingest task
  does, twice each (the faster kept). The target: conversations within 1.3x of captions (CPU seconds).
* JSONL ingest: the same conversations as LLaVA JSON lines (``{"id", "conversations"}``), read by the
  llava reader as an ingest task does (column by column where the shape allows since issue 31's
  JSONL step, ``curate.readers.jsonl_columns``): rows per CPU-second, and the ratio to caption-only
  ingest of as many rows (target 1.3x).
* The fused per-row pass: grounding_check -> text_filter -> count_tokens on the conversation
  records, part by part, each stage over the part in its own batch size, as the executors run a chain: rows per
  CPU-second. The target: >= 3x the code before (`--before COMMIT`: the same script run against a
  checkout of that commit, in the same call, so that both numbers come from the same machine state).

Single process, one thread per library (the numbers are per core). CPU seconds are the process's
own (time.process_time), next to wall seconds (the machine may be shared).

    python bench/bench_conversations.py 1000000 --before 379b43d
    python bench/bench_conversations.py 200000 --before dba7047   # JSONL: before its column path
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

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def _timed(fn) -> tuple[float, float, object]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - c0, time.perf_counter() - t0, out


def measure(data: Path) -> dict:
    """Run in the code under test (cwd / PYTHONPATH): ingest both corpora, then the fused pass."""
    import pyarrow as pa

    from curate.base import StageContext
    from curate.base import records as R
    from curate.grounding.stage import GroundingCheck
    from curate.filters.text_rules import TextFilter
    from curate.readers.read import iter_file_tables
    from curate.readers.sources import SourceSpec
    from pack.tokens.stage import CountTokensStage

    def ingest(name: str, category: str, fmt: str) -> list[pa.Table]:
        ext = "parquet" if fmt == "parquet" else "jsonl.gz" if name.endswith("_gz") else "jsonl"
        spec = SourceSpec(name=name, path=str(data / name / f"*.{ext}"), format=fmt, category=category)
        out = []
        for i, f in enumerate(sorted((data / name).glob(f"*.{ext}"))):
            out += list(iter_file_tables(spec, str(f), 0, i))
        return out

    res: dict = {}
    read: dict = {}
    for _ in range(2):   # twice each, alternating; the faster of the two (the first pays one-time costs)
        for name, cat, fmt in (("captions", "caption", "parquet"), ("grounding", "grounding", "parquet"),
                               ("grounding_jsonl", "grounding", "llava"), ("grounding_jsonl_gz", "grounding", "llava")):
            cpu, wall, read[name] = _timed(lambda: ingest(name, cat, fmt))
            rows = sum(t.num_rows for t in read[name])
            kept_rows = sum(pa.compute.sum(pa.compute.equal(t.column(R.STATUS), R.KEPT)).as_py() or 0
                            for t in read[name])
            if f"ingest_{name}" not in res or cpu < res[f"ingest_{name}"]["cpu"]:
                res[f"ingest_{name}"] = {"cpu": cpu, "wall": wall, "rows": rows, "kept": kept_rows}
    tables = read["grounding"]
    kept = pa.concat_tables(tables)
    kept = kept.filter(pa.compute.equal(kept.column(R.STATUS), R.KEPT))
    ctx = StageContext(seed=1)
    stages = [GroundingCheck(context=ctx), TextFilter(context=ctx), CountTokensStage(context=ctx)]
    for s in stages:
        s.ensure_setup()

    def fused() -> int:   # part by part (200k rows), each stage in its own batch size, as the executors run a chain
        out = 0
        for start in range(0, kept.num_rows, 200_000):
            part = kept.slice(start, 200_000)
            for s in stages:
                size = s.resources.batch_size
                part = pa.concat_tables([s.process_batch(part.slice(lo, size)).kept
                                         for lo in range(0, part.num_rows, size)])
            out += part.num_rows
        return out

    stages[2].process_batch(kept.slice(0, 64))   # the tokenizer's first call outside the timing
    cpu, wall, out = _timed(fused)
    res["fused"] = {"cpu": cpu, "wall": wall, "rows": kept.num_rows, "kept": out}
    return res


def build(data: Path, n: int) -> None:
    sys.path.insert(0, str(HERE))
    from bench_scale import conversation_corpus, corpus
    tmp = data / "tmp"
    corpus(tmp, int(n / 0.8) + 1)   # its captions source holds 80% of the rows
    shutil.move(str(tmp / "captions"), str(data / "captions"))
    shutil.rmtree(tmp)
    conversation_corpus(data, n)
    jsonl_corpus(data)


def jsonl_corpus(data: Path) -> None:
    """The grounding conversations again, as LLaVA JSON lines (one file per parquet file), plain and gzip."""
    import gzip

    import pyarrow.parquet as pq
    (data / "grounding_jsonl").mkdir()
    (data / "grounding_jsonl_gz").mkdir()
    for f in sorted((data / "grounding").glob("*.parquet")):
        table = pq.read_table(f)
        lines = "".join(json.dumps({"id": key, "conversations": conv}, ensure_ascii=False) + "\n" for key, conv
                        in zip(table.column("key").to_pylist(), table.column("conversations").to_pylist())).encode()
        (data / "grounding_jsonl" / f"{f.stem}.jsonl").write_bytes(lines)
        (data / "grounding_jsonl_gz" / f"{f.stem}.jsonl.gz").write_bytes(gzip.compress(lines, compresslevel=6, mtime=0))


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--measure":
        print(json.dumps(measure(Path(argv[1]))))
        return
    before = None
    if "--before" in argv:
        i = argv.index("--before")
        before, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    n = int(argv[0]) if argv else (100_000 if os.environ.get("MMCURATE_BENCH_QUICK") == "1" else 1_000_000)
    data = Path(tempfile.mkdtemp(prefix="bench-conv-"))
    old = None
    try:
        build(data, n)
        codes = [("now", ROOT)]
        if before:
            old = Path(tempfile.mkdtemp(prefix="bench-conv-before-"))
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), before],
                           check=True, capture_output=True)
            codes.append((f"before ({before})", old))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ARROW_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1",
               "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
        results = {}
        for label, code in codes:
            proc = subprocess.run([sys.executable, str(HERE / "bench_conversations.py"), "--measure", str(data)],
                                  cwd=code, env={**env, "PYTHONPATH": str(code)}, capture_output=True, text=True)
            if proc.returncode:
                print(f"{label} failed:\n{proc.stderr[-2000:]}")
                continue
            results[label] = json.loads(proc.stdout.strip().splitlines()[-1])
        rows, jsonl_rows = [], []
        for label, r in results.items():
            cap, conv, fused = r["ingest_captions"], r["ingest_grounding"], r["fused"]
            rows.append([label, f"{cap['cpu']:.2f} / {cap['wall']:.2f}", f"{conv['cpu']:.2f} / {conv['wall']:.2f}",
                         f"{conv['cpu'] / cap['cpu']:.2f}x", f"{fused['cpu']:.1f} / {fused['wall']:.1f}",
                         f"{fused['rows'] / fused['cpu']:,.0f}", f"{fused['kept']:,}"])
            for kind in ("jsonl", "jsonl_gz"):
                js = r[f"ingest_grounding_{kind}"]
                jsonl_rows.append([f"{label}, {kind.replace('_', '.')}", f"{js['cpu']:.2f} / {js['wall']:.2f}",
                                   f"{js['cpu'] / cap['cpu']:.2f}x", f"{js['cpu'] / conv['cpu']:.2f}x",
                                   f"{js['rows'] / js['cpu']:,.0f}", f"{js['kept']:,} of {js['rows']:,}"])
        sys.path.insert(0, str(HERE))
        from run import format_table
        print(f"{n:,} rows each")
        print(format_table(["code", "ingest captions CPU/wall s", "ingest conversations CPU/wall s",
                            "conv/caption CPU", "fused pass CPU/wall s", "fused rows per CPU-s", "kept"], rows))
        print("JSONL (LLaVA JSON lines) conversations, the same rows:")
        print(format_table(["code", "ingest CPU/wall s", "/ parquet captions CPU", "/ parquet conversations CPU",
                            "rows per CPU-s", "kept"], jsonl_rows))
        print(json.dumps(results))
    finally:
        shutil.rmtree(data, ignore_errors=True)
        if old is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)


if __name__ == "__main__":
    main(sys.argv[1:])
