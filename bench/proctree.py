"""CPU of a whole process tree (a driver and the Ray daemons and workers it starts), for benchmarks on
a shared machine where wall time is noise.

The benchmark process becomes a child subreaper: descendants orphaned by their parents (Ray's daemons
and workers) are re-parented to it, so once they exit and are reaped their CPU shows in
``RUSAGE_CHILDREN``. ``RAY_ADDRESS=local`` makes a Ray child start its own cluster as our descendant
instead of joining another run's cluster, whose CPU no rusage of ours could see.
"""
from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_descendants(timeout: float = 60.0) -> None:
    """Wait for every re-parented descendant to exit (Ray's daemons stop shortly after shutdown);
    past `timeout`, kill the ones still there (they are ours: re-parented to this subreaper)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > deadline:
                for child in _children():
                    os.kill(child, 9)
                deadline = float("inf")
            time.sleep(0.05)


def _children() -> list[int]:
    """Direct children of this process (from /proc: orphans re-parented to us included)."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                found.append(int(entry))
    return found


def run_tree(cmd: list[str], env: dict[str, str], cwd: str | Path | None = None,
             timeout: float | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run `cmd`; return (its result, CPU seconds of it and every descendant, wall seconds)."""
    become_subreaper()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "RAY_ADDRESS": "local"}, cwd=cwd,
                          timeout=timeout)
    reap_descendants()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, cpu, wall
