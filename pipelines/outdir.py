"""Output safety: mmcurate deletes only what it wrote, never writes where the sources are, and one run
at a time owns an output directory.

Why: a run replaces its own stage and shard folders (rename aside, delete). Pointed by mistake at a
home directory or a folder of source tars, that is data loss. So every directory mmcurate creates
carries an ownership marker (``.mmcurate-output``); a directory without it is replaced only when it
is empty, and deleted never (``remove_owned``). A run's output may not contain a source or lie inside
one (a re-run would read its own output, a cleanup would delete inputs).

Concurrency: ``claim_output`` holds an exclusive ``fcntl.flock`` on ``OUT/.mmcurate.lock`` for the
whole run. The kernel drops the lock when its holder dies (SIGKILL included), so a stale lock needs
no guessing: the next run gets it and reports whom it took over from (pid, host, start time written
in the file). A second live run is refused at once, naming the holder.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from curate.base.diskspace import writing
from curate.base.ownership import MARKER, is_owned, mark_owned  # noqa: F401  (re-exported for callers)

LOCK = ".mmcurate.lock"
_GLOB_CHARS = re.compile(r"[*?\[{]")


class OutputRefused(RuntimeError):
    """The output location is unsafe to write or delete; the message says why and what to do."""


@dataclass
class OutputClaim:
    """An output directory this process owns until the context exits."""
    path: Path
    holder: dict
    took_over_from: dict | None = None


# --- ownership (markers: curate.base.ownership, so pack/ can mark what it writes) -------------
def _is_empty_dir(p: Path) -> bool:
    return p.is_dir() and not p.is_symlink() and next(p.iterdir(), None) is None


# Names a run directory of an mmcurate version before markers holds, and nothing else.
_LEGACY_RUN_NAMES = {"recipe.json", "recipe.json.tmp", "stages", "shards", ".shards.tmp", ".shards.old",
                     "rejects.parquet", "report.json", "report.json.tmp", LOCK}


def _is_legacy_run(p: Path) -> bool:
    """A run directory written before ownership markers existed: recipe.json + stages/ and only
    names a run writes (a user's folder that merely contains such names also has its own files)."""
    names = {c.name for c in p.iterdir()}
    return "recipe.json" in names and (p / "stages").is_dir() and names <= _LEGACY_RUN_NAMES


def check_output_target(path: str | Path, what: str = "output directory") -> None:
    """Refuse a target that mmcurate would replace but did not create.

    Allowed: a missing path, an empty directory, a directory carrying our marker (or inside one),
    or a run directory of an earlier mmcurate (see ``_is_legacy_run``).
    """
    p = Path(path)
    if not os.path.lexists(p):
        return
    if p.is_symlink() or not p.is_dir():
        raise OutputRefused(f"{what} {str(p)!r} exists and is not a directory; mmcurate replaces only "
                            f"directories it created. Choose another path.")
    if _is_empty_dir(p) or is_owned(p) or _is_legacy_run(p):
        return
    raise OutputRefused(f"{what} {str(p)!r} is not empty and was not created by mmcurate (no {MARKER} "
                        f"marker); mmcurate only replaces directories it created. Choose a new or empty "
                        f"directory, or move your files away.")


def remove_owned(path: str | Path) -> None:
    """Delete a directory only if mmcurate created it (marker in it or in an ancestor)."""
    p = Path(path)
    if not os.path.lexists(p):
        return
    if p.is_symlink() or not p.is_dir():
        raise OutputRefused(f"refusing to delete {str(p)!r}: not a directory mmcurate created")
    if not is_owned(p):
        raise OutputRefused(f"refusing to delete {str(p)!r}: it has no {MARKER} marker, so mmcurate did not "
                            f"create it")
    shutil.rmtree(p)


# --- sources vs outputs ------------------------------------------------------------------------
def source_root(pattern: str) -> Path | None:
    """The local directory a source glob reads below (None for remote URLs)."""
    if "://" in pattern and not pattern.startswith("file://"):
        return None
    pattern = pattern[len("file://"):] if pattern.startswith("file://") else pattern
    m = _GLOB_CHARS.search(pattern)
    if m:
        base = os.path.dirname(pattern[:m.start()])     # "data/x/*.tar" -> "data/x"
    else:
        base = pattern if os.path.isdir(pattern) else os.path.dirname(pattern)
    return Path(os.path.realpath(base or "."))


def check_disjoint(out: str | Path, sources: Iterable[str], what: str = "output directory") -> None:
    """Refuse an output that is a source root, contains one, or lies where a recursive glob reads.

    An output *beside* the source files (``data/*.tar`` with ``--out data/run``) is allowed: the glob
    does not descend into it. With ``**`` it would, so that is refused too.
    """
    o = Path(os.path.realpath(out))
    for i, pattern in enumerate(sources):
        root = source_root(pattern)
        if root is None:
            continue
        recursive = "**" in pattern or os.path.isdir(pattern)
        if o == root or (recursive and root in o.parents):
            raise OutputRefused(f"{what} {str(out)!r} is where source {i} ({pattern!r}) reads; write the output "
                                f"elsewhere so a run never mixes with or deletes its inputs")
        if o in root.parents:
            raise OutputRefused(f"source {i} ({pattern!r}) lies inside the {what} {str(out)!r}; write the output "
                                f"elsewhere so a run never mixes with or deletes its inputs")


# --- the lock ----------------------------------------------------------------------------------
def _holder_text(info: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')}, started {started}"


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        info = json.loads(raw.decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def _acquire(out: Path) -> tuple[int, dict, dict | None]:
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise OutputRefused(f"output directory {str(out)!r} is in use by another mmcurate run "
                            f"({_holder_text(holder)}); wait for it or choose another --out") from None
    previous = _read_holder(fd) or None  # content left by a run that died holding the lock
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": round(time.time(), 3)}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        with writing(out / LOCK):
            os.write(fd, (json.dumps(me, sort_keys=True) + "\n").encode())
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd, me, previous


def _release(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def claim_output(out: str | Path, sources: Iterable[str] = (), kind: str = "run") -> Iterator[OutputClaim]:
    """Own `out` for the duration: safe target, disjoint from sources, marked, exclusively locked."""
    p = Path(out)
    check_disjoint(p, list(sources))
    check_output_target(p)
    mark_owned(p, kind)
    fd, me, previous = _acquire(p)
    try:
        yield OutputClaim(p, me, previous)
    finally:
        _release(fd)
