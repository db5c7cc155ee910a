"""CPU of a whole process tree (a driver and the Ray daemons and workers it starts), for benchmarks on
a shared machine where wall time is noise.

Where a cgroup can be made (root, cgroup v1 ``cpuacct`` or v2), the command runs in a cgroup of its
own and its CPU is the cgroup's counter: every descendant is in it, however it exits. Otherwise the
benchmark process becomes a child subreaper: descendants orphaned by their parents (Ray's daemons and
workers) are re-parented to it, so once they exit and are reaped their CPU shows in
``RUSAGE_CHILDREN`` — which misses a process whose parent exited without waiting for it (a 1M-row
Ray run once reported a tenth of its CPU that way). ``RAY_ADDRESS=local`` makes a Ray child start
its own cluster as our descendant instead of joining another run's cluster.
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


class CpuCgroup:
    """A fresh cgroup whose CPU counter covers every process put in it and all their descendants."""

    V1 = Path("/sys/fs/cgroup/cpuacct")
    V2 = Path("/sys/fs/cgroup/unified")

    def __init__(self) -> None:
        name = f"mmcurate-bench-{os.getpid()}-{time.monotonic_ns()}"
        for root, counter in ((self.V1, "cpuacct.usage"), (self.V2, "cpu.stat")):
            try:
                (root / name).mkdir()
            except OSError:
                continue
            self.path, self.counter = root / name, counter
            return
        raise OSError("no writable cgroup")

    def join(self) -> None:
        """Run in the child before exec: move it into the cgroup."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def cpu_seconds(self) -> float:
        text = (self.path / self.counter).read_text()
        if self.counter == "cpuacct.usage":
            return int(text) / 1e9
        return int(next(line.split()[1] for line in text.splitlines() if line.startswith("usage_usec"))) / 1e6

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def run_tree(cmd: list[str], env: dict[str, str], cwd: str | Path | None = None,
             timeout: float | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run `cmd`; return (its result, CPU seconds of it and every descendant, wall seconds)."""
    become_subreaper()
    try:
        group: CpuCgroup | None = CpuCgroup()
    except OSError:
        group = None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "RAY_ADDRESS": "local"}, cwd=cwd,
                              timeout=timeout, preexec_fn=group.join if group else None)
        reap_descendants()
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = group.cpu_seconds() if group else \
            (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    finally:
        if group:
            group.remove()
    return proc, cpu, wall
