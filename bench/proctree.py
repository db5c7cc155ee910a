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


# Who a process of the tree is: its executable (Ray's C++ daemons), the title Ray gives a worker once it
# has registered ("ray::IDLE", "ray::<task or actor>"), or the Python script it runs.
DAEMONS = (("gcs_server", "ray: gcs_server"), ("raylet", "ray: raylet"))
TITLES = (("ray::_StatsActor", "ray: stats actor"), ("ray::AutoscalingRequester", "ray: autoscaling actor"),
          ("ray::DashboardAgent", "ray: dashboard agent"), ("ray::RuntimeEnvAgent", "ray: runtime_env agent"),
          ("ray::", "ray workers"))
SCRIPTS = (("default_worker.py", "ray workers"), ("dashboard/agent.py", "ray: dashboard agent"),
           ("runtime_env/agent", "ray: runtime_env agent"), ("dashboard/dashboard.py", "ray: dashboard"),
           ("log_monitor.py", "ray: log_monitor"), ("autoscaler/_private/monitor.py", "ray: monitor"))


def process_role(argv: list[str]) -> str:
    """The role of a process of a Ray run from its command line (see ``DAEMONS``, ``TITLES``, ``SCRIPTS``)."""
    if not argv:
        return "other"
    exe = argv[0].rsplit("/", 1)[-1]
    for name, role in DAEMONS:
        if exe == name:
            return role
    for prefix, role in TITLES:
        if argv[0].startswith(prefix):
            return role
    cmd = " ".join(argv)
    return next((role for needle, role in SCRIPTS if needle in cmd), "other")


class ProcessSampler:
    """CPU seconds per process of a tree, sampled from /proc every `interval` s while it runs, summed by
    role (``process_role``; the root process is "driver"). A process's figure is its last sample (utime +
    stime, its own threads, not its children), so up to `interval` of CPU before each exit is missed:
    the roles add up to a little less than the tree's counter, which stays the figure compared."""

    def __init__(self, interval: float = 0.2) -> None:
        import threading
        self.interval, self.root = interval, 0
        self.last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def start(self, root: int) -> None:
        self.root = root
        self._thread.start()

    def stop(self) -> dict[str, tuple[float, int]]:
        """{role: (CPU seconds, processes)}; stops sampling (called again, it only answers)."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
        out: dict[str, tuple[float, int]] = {}
        for pid, (role, cpu) in self.last.items():
            total, count = out.get(role, (0.0, 0))
            out[role] = (total + cpu, count + 1)
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        parents: dict[int, int] = {}
        stats: dict[int, list[str]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    text = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                fields = text.rsplit(")", 1)[1].split()
                parents[int(entry)], stats[int(entry)] = int(fields[1]), fields
        me = os.getpid()
        for pid, fields in stats.items():
            up, ours = pid, False
            while up > 1:
                if up == self.root or (up != pid and up == me):
                    ours = True
                    break
                up = parents.get(up, 0)
            if not ours or pid == me:
                continue
            cpu = (int(fields[11]) + int(fields[12])) / self._tick
            role = self._role(pid)   # every time: Ray retitles a worker as it starts, runs tasks, hosts an actor
            known = self.last.get(pid, ("other", 0.0))[0]
            if role == "other" or (role == "ray workers" and known != "other"):
                role = known             # an exited process (no cmdline) or an actor's stays what it was
            self.last[pid] = (role, cpu)

    def _role(self, pid: int) -> str:
        if pid == self.root:
            return "driver"
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            return "other"
        return process_role([a for a in argv if a])


def run_tree(cmd: list[str], env: dict[str, str], cwd: str | Path | None = None,
             timeout: float | None = None, sampler: ProcessSampler | None = None
             ) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run `cmd`; return (its result, CPU seconds of it and every descendant, wall seconds). With a
    `sampler`, it follows the tree's processes while it runs (``ProcessSampler.stop`` gives the split)."""
    become_subreaper()
    try:
        group: CpuCgroup | None = CpuCgroup()
    except OSError:
        group = None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**env, "RAY_ADDRESS": "local"}, cwd=cwd,
                                 preexec_fn=group.join if group else None)
        if sampler is not None:
            sampler.start(child.pid)
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise
        proc = subprocess.CompletedProcess(cmd, child.returncode, out, err)
        reap_descendants()
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = group.cpu_seconds() if group else \
            (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    finally:
        if group:
            group.remove()
    return proc, cpu, wall
