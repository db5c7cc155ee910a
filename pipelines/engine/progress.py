"""Progress of a run: rows done of the rows expected, rows per second and an ETA for every pass.

Workers count per batch (never per row) into a counter — in this process for the inline executor;
for the Ray executor a small file per worker process in the pass's own (temporary) stage directory,
on the output filesystem every worker already writes the stage's rows to (``FileCounter``: no
extra process, no call to the driver) — and a thread of the driver reads the counter: every
LIVE_TICK_S as a live bar on a terminal, every PLAIN_INTERVAL_S as a plain line when the output is
a file, a pipe or a notebook (CI logs, ``nohup``), never with ``--quiet``.
``MMCURATE_PROGRESS_INTERVAL`` (seconds) overrides the interval of the plain lines.

A plain line reads::

    [01] text_filter + clip_score  map  12,288/60,000 rows  20%  4,096 rows/s  ETA 0:00:11
    [01] text_filter + clip_score  map  60,000/60,000 rows  100%  4,210 rows/s  done in 0:00:14
    [00] ingest  read  40,960/~1,000,000 rows  4%  20,480 rows/s  ETA 0:00:46
    [05] image_dedup  buckets  running 0:00:10

The expected rows are known for every pass after ingest (the upstream's kept rows); ingest's are
estimated from the bytes of the source files read so far (``~``). A pass's last line carries its
true row count. Phases of a whole-dataset step (a shuffle, a components round) have no row count:
they print their running time, and a final line when they took longer than a second.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
from collections import Counter as _Tally
from typing import Any, Protocol, TextIO

import pyarrow as pa
import pyarrow.compute as pc

from curate.base import records as R
from pipelines.engine.links import DROPPED_AT

INTERVAL_ENV = "MMCURATE_PROGRESS_INTERVAL"
PLAIN_INTERVAL_S = 10.0
LIVE_TICK_S = 0.5
# A phase without a row count (a shuffle, an aggregate) gets a final line only when it took this long:
# a dedup runs a dozen sub-second aggregates that would only add noise to a log.
QUIET_PHASE_S = 1.0
BAR_WIDTH = 24
BYTES = "_bytes"   # a source task's share of the source bytes (ingest's estimate of its rows)


# A shuffle's phase is named after what its key groups (the stages' internal key columns), so that a
# dedup reads as buckets -> component rounds -> join -> survivors rather than a list of column names.
SHUFFLE_PHASES = {"key": "duplicate keys", "_one": "one reduce", "_all": "components in one reduce",
                  "_bucket": "buckets", "_node": "components large star", "_hi": "components small star",
                  "_ordinal": "join components back", "_component": "survivors per component",
                  "_cell": "cluster cells", "_cluster_leaf": "cluster leaves", "_semdedup_key": "semantic groups",
                  "source": "cutoffs per source"}


def shuffle_phase(key: str) -> str:
    return SHUFFLE_PHASES.get(key, f"shuffle by {key.lstrip('_')}")


class RowCounter(Protocol):
    def add(self, rows: int, nbytes: int = 0) -> None: ...
    def read(self) -> tuple[int, int]: ...


class LocalCounter:
    """Rows and bytes done, counted in this process (inline executor)."""

    def __init__(self) -> None:
        self.rows = 0
        self.bytes = 0
        self.adds = 0

    def add(self, rows: int, nbytes: int = 0) -> None:
        self.rows += rows
        self.bytes += nbytes
        self.adds += 1

    def read(self) -> tuple[int, int]:
        return self.rows, self.bytes


_DONE: dict[str, list[int]] = {}   # per worker process: each FileCounter's rows, bytes and adds so far


class FileCounter:
    """Rows and bytes done by a pass's tasks: each worker process keeps its own running totals and
    rewrites them (one 64-byte pwrite per batch) into its own file under `directory`; the driver sums
    the files. Progress never fails a task: a write that cannot happen is skipped."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = str(directory)
        self.adds = 0

    def add(self, rows: int, nbytes: int = 0) -> None:
        done = _DONE.setdefault(self.directory, [0, 0, 0])
        done[0] += rows
        done[1] += nbytes
        done[2] += 1
        record = f"{done[0]:>20} {done[1]:>20} {done[2]:>20}\n".encode()
        try:
            fd = os.open(os.path.join(self.directory, f"{socket.gethostname()}-{os.getpid()}"),
                         os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                os.pwrite(fd, record, 0)
            finally:
                os.close(fd)
        except OSError:
            pass

    def read(self) -> tuple[int, int]:
        rows = nbytes = adds = 0
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return 0, 0
        for entry in entries:
            try:
                with open(entry.path, "rb") as fh:
                    r, b, a = (int(x) for x in fh.read(64).split())
            except (OSError, ValueError):   # a file being written for the first time: the next tick reads it
                continue
            rows, nbytes, adds = rows + r, nbytes + b, adds + a
        self.adds = adds
        return rows, nbytes

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def entered_rows(batch: pa.Table, carries_dropped: bool) -> int:
    """Rows of a batch handed to a pass's last stage that entered the pass kept: what a stage's
    ``in`` counts. In a fused chain (`carries_dropped`) rows dropped by an earlier link carry
    ``_dropped_at``; rows that arrived rejected from upstream carry neither."""
    kept = pc.equal(batch.column(R.STATUS), R.KEPT)
    if carries_dropped and DROPPED_AT in batch.column_names:
        kept = pc.or_(pc.fill_null(kept, False), pc.is_valid(batch.column(DROPPED_AT)))
    return int(pc.sum(kept.cast(pa.int64())).as_py() or 0)


def with_task_bytes(tasks: pa.Table) -> pa.Table:
    """Source tasks with BYTES: the bytes each task reads (a JSONL byte range, a share of a parquet
    file split by row groups, a whole file), so that ingest's progress can estimate its rows.
    0 where the file cannot be stat'ed here (a remote store): then there is no estimate."""
    uris = tasks.column("uri").to_pylist()
    parts_of = _Tally(uris)
    sizes: dict[str, int] = {}
    for uri in parts_of:
        try:
            sizes[uri] = os.stat(uri).st_size
        except (OSError, ValueError):
            sizes[uri] = 0
    start, stop, first = (tasks.column(c).to_pylist() for c in ("part_start", "part_stop", "part_first_row"))
    weights = [b - a if f >= 0 else sizes[u] // parts_of[u] for u, a, b, f in zip(uris, start, stop, first)]
    return tasks.append_column(BYTES, pa.array(weights, pa.int64()))


def task_bytes(tasks: pa.Table) -> int:
    return int(pc.sum(tasks.column(BYTES)).as_py() or 0) if BYTES in tasks.column_names else 0


def clock(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_line(label: str, rows: int | None, expected: int | None, estimated: bool, elapsed: float,
                  final: bool, bar: bool = False) -> str:
    """One progress line (module docstring); `bar`: with a bar after the label (a terminal's live line)."""
    if bar and rows is not None and expected:
        filled = min(BAR_WIDTH, BAR_WIDTH * rows // expected)
        label = f"{label}  [{'#' * filled}{'.' * (BAR_WIDTH - filled)}]"
    if rows is None:
        return f"{label}  {'done in' if final else 'running'} {clock(elapsed)}"
    rate = rows / elapsed if elapsed > 0 else 0.0
    if final:
        return f"{label}  {rows:,}/{rows:,} rows  100%  {rate:,.0f} rows/s  done in {clock(elapsed)}"
    if not expected:
        return f"{label}  {rows:,}/? rows  {rate:,.0f} rows/s"
    eta = f"ETA {clock((expected - rows) / rate)}" if rate > 0 else "ETA ?"
    return (f"{label}  {rows:,}/{'~' if estimated else ''}{expected:,} rows  {min(100, 100 * rows // expected)}%"
            f"  {rate:,.0f} rows/s  {eta}")


class Phase:
    """One pass or phase being shown; a context manager. ``finish(rows)`` gives the true row count
    for the last line (a retried task may have counted twice)."""

    def __init__(self, progress: "Progress", label: str, expected: int | None, counter: RowCounter | None,
                 expected_bytes: int | None):
        self.progress, self.label, self.counter = progress, label, counter
        self.expected, self.expected_bytes = expected, expected_bytes
        self.final_rows: int | None = None
        self.shown = 0            # the last count shown: lines never go backwards
        self.lines = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = time.monotonic()

    def finish(self, rows: int) -> None:
        self.final_rows = rows

    def __enter__(self) -> "Phase":
        self.started = self.progress.last_plain = time.monotonic()
        if self.progress.enabled:
            self._thread = threading.Thread(target=self._loop, name="mmcurate-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        elapsed = time.monotonic() - self.started
        counted = None if self.counter is None else max(self._read()[0], self.shown)
        self._close_counter()
        if exc_type is not None:
            self.progress.end_live()
            return
        if self.counter is None and elapsed < QUIET_PHASE_S and not self.lines:
            self.progress.end_live(clear=True)
            return
        rows = self.final_rows if self.final_rows is not None else counted
        self.progress.emit(progress_line(self.label, rows, rows, False, elapsed, final=True), final=True)

    def _close_counter(self) -> None:
        """Count the counter's adds into the run's progress cost and remove what it left on disk."""
        if self.counter is None:
            return
        self.progress.cost["adds"] = self.progress.cost.get("adds", 0) + getattr(self.counter, "adds", 0)
        close = getattr(self.counter, "close", None)
        if close is not None:
            close()

    def _read(self) -> tuple[int, int]:
        try:
            return self.counter.read() if self.counter is not None else (0, 0)
        except Exception:   # noqa: BLE001 — a counter that cannot answer now: the next tick asks again
            return self.shown, 0

    def _loop(self) -> None:
        progress = self.progress
        try:
            while not self._stop.wait(progress.tick):
                if not progress.live and time.monotonic() - progress.last_plain < progress.interval:
                    continue
                self.progress.emit(self.current(), final=False)
                self.lines += 1
        finally:
            progress.cost["poll_cpu_s"] += time.thread_time()   # this thread's CPU, for run.json

    def current(self) -> str:
        """The line for now, with monotonic counts."""
        elapsed = time.monotonic() - self.started
        if self.counter is None:
            return progress_line(self.label, None, None, False, elapsed, final=False)
        rows, done_bytes = self._read()
        expected, estimated = self.expected, False
        if expected is None and self.expected_bytes and done_bytes:
            expected, estimated = max(rows, int(rows * self.expected_bytes / done_bytes)), True
        if expected is not None and not estimated:
            rows = min(rows, expected)
        self.shown = rows = max(rows, self.shown)
        return progress_line(self.label, rows, expected, estimated, elapsed, final=False, bar=self.progress.live)


class Progress:
    """Where a run's progress goes: a live bar on a terminal, plain lines elsewhere, nothing when
    disabled. `stage(label)` names the stage the following phases belong to."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, interval: float | None = None,
                 live: bool | None = None):
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty()) if live is None else live
        env = os.environ.get(INTERVAL_ENV)
        self.interval = float(env) if env else (interval if interval is not None else PLAIN_INTERVAL_S)
        self.tick = LIVE_TICK_S if self.live else min(self.interval, LIVE_TICK_S)
        self.label = ""
        self.last_plain = time.monotonic()
        # What showing progress cost (run.json): the driver's polling threads' CPU, and how many
        # per-batch adds the workers made (bench/bench_progress.py prices one).
        self.cost: dict[str, float] = {"poll_cpu_s": 0.0, "adds": 0}
        self._live_width = 0
        self._lock = threading.Lock()

    def stage(self, label: str) -> None:
        self.label = label

    def phase(self, name: str, expected: int | None = None, counter: RowCounter | None = None,
              expected_bytes: int | None = None) -> Phase:
        return Phase(self, f"{self.label}  {name}" if self.label else name, expected, counter, expected_bytes)

    def emit(self, line: str, final: bool) -> None:
        with self._lock:
            if self.live:
                width = max(20, shutil.get_terminal_size().columns - 1)
                text = line[:width]
                pad = " " * max(0, self._live_width - len(text))
                self.stream.write("\r" + text + pad + ("\n" if final else ""))
                self._live_width = 0 if final else len(text)
            else:
                self.stream.write(line + "\n")
                self.last_plain = time.monotonic()
            self.stream.flush()

    def end_live(self, clear: bool = False) -> None:
        """Leave the live line: erased (`clear`) or kept, the cursor on a fresh line."""
        with self._lock:
            if self.live and self._live_width:
                self.stream.write("\r" + " " * self._live_width + "\r" if clear else "\n")
                self.stream.flush()
                self._live_width = 0


DISABLED = Progress(enabled=False)
