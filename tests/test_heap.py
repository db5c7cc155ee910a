"""The driver hands freed heap back to the OS (pipelines.engine.heap): its resident size follows what it holds."""
from __future__ import annotations

import time

import pytest

from pipelines.engine.heap import HeapTrimmer, has_malloc_trim, release_freed_memory


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not has_malloc_trim(), reason="malloc_trim is glibc's")
def test_release_returns_the_holes_that_free_leaves_inside_the_heap():
    # 2 KiB buffers come from malloc's heap (below the mmap threshold); keeping every 16th pins
    # the heap's top, so free() alone cannot shrink it: the ~300 MB of holes stay resident.
    blocks = [bytearray(2048) for _ in range(160_000)]
    for b in blocks:
        b[::512] = b"x" * len(b[::512])   # touch every page
    pinned = blocks[::16]
    del blocks
    held = _rss_mb()
    release_freed_memory()
    released = _rss_mb()
    assert len(pinned) == 10_000
    assert held - released > 150, (held, released)


def test_trimmer_runs_on_its_timer_and_stops():
    trimmer = HeapTrimmer(interval=0.01).start()
    deadline = time.monotonic() + 5
    while has_malloc_trim() and trimmer.trims < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    trimmer.stop()
    done = trimmer.trims
    time.sleep(0.05)
    assert trimmer.trims == done                     # stopped: no trim after stop()
    assert (done >= 3) if has_malloc_trim() else done == 0
