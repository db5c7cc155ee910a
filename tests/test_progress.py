"""Progress of a run (pipelines.engine.progress): the plain lines a log file gets, on both executors, and a
console with no line that mmcurate did not write (no Ray log lines)."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from curate.base import records as R
from pipelines.engine.progress import LocalCounter, Progress, entered_rows, progress_line
from pipelines.recipe import load
from pipelines.runner import run
from tests.corpus import caption_corpus

ROOT = Path(__file__).resolve().parents[1]
COUNTED = re.compile(r"^(?P<label>\[\d\d\] \S+(?: \+ \S+)*)  (?P<phase>[a-z_ ]+?)  (?P<done>[\d,]+)/(?P<est>~?)"
                     r"(?P<expected>[\d,]+|\?) rows(?:  (?P<pct>\d+)%)?  [\d,]+ rows/s(?:  (?P<end>ETA \S+|done in \S+))?$")
UNCOUNTED = re.compile(r"^\[\d\d\] \S+(?: \+ \S+)*  [a-z_ ,]+  (running|done in) \d+:\d\d:\d\d$")
STAGE_LINE = re.compile(r"^\[\d\d\] \S+(?: \+ \S+)* +(running \((ray|inline)(, fused)?\)|in=\d+ out=\d+ rejected=\d+ "
                        r"quarantined=\d+|complete, skipped \(resume\))$")


def recipe(tmp_path: Path, data: Path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(f"""\
name: progress-test
seed: 3
plugins: [tests.plugins.slow_stage]
sources:
  - {{name: web, path: "{data}/*.tar", format: webdataset, category: caption}}
stages:
  - {{name: slow_caption_length, settings: {{seconds_per_batch: 0.05, max_words: 30}}}}
  - {{name: actor_caption_length, settings: {{seconds_per_batch: 0.05, max_words: 20}}}}
  - {{name: exact_dedup}}
""")
    return path


def counted_lines(lines: list[str]) -> dict[tuple[str, str], list[re.Match]]:
    """Counted progress lines by (stage label, phase), in order."""
    found: dict[tuple[str, str], list[re.Match]] = {}
    for line in lines:
        m = COUNTED.match(line)
        if m:
            found.setdefault((m["label"], m["phase"]), []).append(m)
    return found


def check_lines(lines: list[str], report: dict) -> None:
    """Every counted pass: counts never go down, never pass a known expectation, and the last line
    (`done in`) carries the stage's row count."""
    passes = counted_lines(lines)
    ins = {e["name"]: e["in"] for e in report["stages"]}
    assert ("[00] ingest", "read") in passes
    for (label, phase), matches in passes.items():
        done = [int(m["done"].replace(",", "")) for m in matches]
        assert done == sorted(done), (label, phase, done)
        for m in matches[:-1]:
            assert m["end"] is None or m["end"].startswith("ETA"), m.string
            if m["expected"] != "?" and not m["est"]:
                assert int(m["done"].replace(",", "")) <= int(m["expected"].replace(",", ""))
        last = matches[-1]
        assert last["end"].startswith("done in") and last["pct"] == "100", last.string
        head = label.split("] ", 1)[1].split(" + ")[0]
        if phase in ("read", "map", "signatures"):
            assert done[-1] == ins[head], (label, phase, done[-1], ins[head])
    # the per-batch pass of every stage that ran one shows
    phases = {p for _, p in passes}
    assert {"read", "signatures", "apply"} <= phases


def test_plain_lines_on_the_inline_executor(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MMCURATE_PROGRESS_INTERVAL", "0.1")
    data = caption_corpus(tmp_path / "data", n_files=3, per_file=20)
    result = run(load(recipe(tmp_path, data)), out=tmp_path / "out", executor="inline")
    lines = capsys.readouterr().out.splitlines()
    check_lines(lines, result.report)
    # a line mid-pass, not only the last one: the 60-row map pass sleeps 0.05 s per 4-row batch
    map_lines = counted_lines(lines)[("[01] slow_caption_length + actor_caption_length + exact_dedup", "signatures")]
    assert len(map_lines) >= 3
    assert any(m["end"].startswith("ETA") for m in map_lines)


def test_quiet_prints_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MMCURATE_PROGRESS_INTERVAL", "0.05")
    data = caption_corpus(tmp_path / "data", n_files=1, per_file=8)
    run(load(recipe(tmp_path, data)), out=tmp_path / "out", executor="inline", progress=False)
    assert capsys.readouterr().out == ""


def test_ray_run_prints_progress_and_no_line_of_ray(tmp_path):
    """A Ray run with an actor-pool stage, through the CLI in a subprocess (Ray's core worker writes
    to the process's stderr): every line of its output is one that mmcurate writes."""
    data = caption_corpus(tmp_path / "data", n_files=3, per_file=20)
    env = {**os.environ, "MMCURATE_PROGRESS_INTERVAL": "0.2", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "pipelines.present.cli", "run", str(recipe(tmp_path, data)),
                           "--out", str(tmp_path / "out"), "--executor", "ray"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    lines = proc.stdout.splitlines()
    check_lines(lines, report)
    ours = [l for l in lines if COUNTED.match(l) or UNCOUNTED.match(l) or STAGE_LINE.match(l)
            or l.startswith("report: ") or re.match(r"^  \S+ +in=", l)]
    assert [l for l in lines if l not in ours] == []
    # stderr: only our own warnings (large losses, in our words), no Ray log line, no Python warning
    assert [l for l in proc.stderr.splitlines() if not l.startswith("warning: ")] == [], proc.stderr
    assert "too_many_words" in proc.stderr
    assert "core_worker" not in proc.stdout + proc.stderr and "raylet" not in proc.stdout + proc.stderr


def test_line_format_and_estimate():
    assert progress_line("[02] a + b  map", 1500, 6000, False, 3.0, final=False) == \
        "[02] a + b  map  1,500/6,000 rows  25%  500 rows/s  ETA 0:00:09"
    assert progress_line("[00] ingest  read", 6000, 6000, False, 4.0, final=True) == \
        "[00] ingest  read  6,000/6,000 rows  100%  1,500 rows/s  done in 0:00:04"
    assert progress_line("[05] d  shuffle by key", None, None, False, 61.0, final=False) == \
        "[05] d  shuffle by key  running 0:01:01"
    assert "[####" in progress_line("x  map", 50, 100, False, 1.0, final=False, bar=True)
    # ingest: expected rows estimated from the bytes read so far
    counter, out = LocalCounter(), io.StringIO()
    progress = Progress(stream=out, interval=0.02, live=False)
    progress.stage("[00] ingest")
    with progress.phase("read", None, counter, expected_bytes=1000) as phase:
        counter.add(40, 100)     # 40 rows from 10% of the bytes -> ~400
        deadline = time.monotonic() + 5
        while "~" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        phase.finish(400)
    lines = out.getvalue().splitlines()
    assert "[00] ingest  read  40/~400 rows  10%" in lines[0]
    assert lines[-1].startswith("[00] ingest  read  400/400 rows  100%")


def test_live_bar_rewrites_one_line_and_ends_it():
    counter, out = LocalCounter(), io.StringIO()
    progress = Progress(stream=out, live=True)
    with progress.phase("map", 10, counter) as phase:
        counter.add(5)
        time.sleep(0.7)
        counter.add(5)
        phase.finish(10)
    text = out.getvalue()
    assert text.startswith("\r") and "[############............]" in text
    assert text.endswith("\n") and text.rstrip().endswith("done in 0:00:00")
    assert text.rstrip().split("\r")[-1].startswith("map  10/10 rows  100%")
    assert text.count("\n") == 1


def test_entered_rows_counts_what_entered_the_pass():
    batch = pa.table({R.STATUS: [R.KEPT, R.REJECTED, R.REJECTED, R.KEPT],
                      "_dropped_at": pa.array([None, 3, None, None], pa.int32())})
    assert entered_rows(batch, carries_dropped=True) == 3    # the rejected row without _dropped_at came rejected
    assert entered_rows(batch, carries_dropped=False) == 2


def _add_in_another_process(directory: str, batches: int) -> None:
    from pipelines.engine.progress import FileCounter
    counter = FileCounter(directory)
    for _ in range(batches):
        counter.add(100, 10)


def test_file_counter_sums_what_each_worker_process_wrote(tmp_path):
    """Ray's counter: each worker process rewrites its own running totals; the driver sums the files."""
    import multiprocessing
    from pipelines.engine.progress import FileCounter
    directory = tmp_path / ".progress-map-x"
    directory.mkdir()
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_add_in_another_process, args=(str(directory), n)) for n in (3, 5)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    counter = FileCounter(directory)
    assert counter.read() == (800, 80) and counter.adds == 8 and len(list(directory.iterdir())) == 2
    counter.close()
    assert not directory.exists()
    counter.add(1)   # after the pass: never raises, writes nothing
    assert not directory.exists()
