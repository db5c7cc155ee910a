"""Give the driver's freed memory back to the OS, so its resident size follows what it holds.

The driver holds no per-sample data, yet its resident memory grew with the dataset (371 MB at 1M
rows, 485 MB at 5M in one sampled run). The memory was freed but kept by two allocators:

* Arrow's (mimalloc) keeps the pages of every driver-side scan (rejects, summaries, the report);
  ``release_unused`` returns them.
* glibc's malloc keeps the holes left by Ray's driver-side bookkeeping: the streaming executor
  allocates and frees per task and per block, on several threads (one arena each), and only the
  top of an arena is ever returned by itself. ``malloc_trim(0)`` returns the free pages inside the
  arenas too. In runs sampled the same way, trimming every 0.6 s gave 347 MB at 1M and 386 MB at 5M.

The trim cannot run only between stages: one streaming Ray Data pass over 5M rows is 300 tasks and
grows the heap by ~40 MB on its own, so ``HeapTrimmer`` trims on a timer while an executor lives.
Off glibc (musl, macOS) there is no ``malloc_trim``: the releases are Arrow's alone and no timer runs.
"""
from __future__ import annotations

import ctypes
import threading
import time
from typing import Callable

import pyarrow as pa

TRIM_INTERVAL_S = 1.0   # at least; longer after a slow trim (HeapTrimmer._run)


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):   # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def has_malloc_trim() -> bool:
    return _MALLOC_TRIM is not None


def release_freed_memory() -> None:
    """Return the pages Arrow and malloc hold free to the OS (see the module docstring)."""
    pa.default_memory_pool().release_unused()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class HeapTrimmer:
    """A daemon thread that calls ``release_freed_memory`` every `interval` seconds until ``stop()``."""

    def __init__(self, interval: float = TRIM_INTERVAL_S):
        self.interval = interval
        self.trims = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmcurate-heap-trimmer", daemon=True)

    def start(self) -> "HeapTrimmer":
        if has_malloc_trim():   # without malloc_trim the stage-boundary releases do Arrow's part
            self._thread.start()
        return self

    def _run(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            started = time.perf_counter()
            release_freed_memory()
            self.trims += 1
            # A trim walks every arena under its lock: a few ms on this driver, longer in a process
            # holding gigabytes (a notebook). Waiting 100x the last trim's time keeps it under 1%.
            wait = max(self.interval, 100 * (time.perf_counter() - started))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
