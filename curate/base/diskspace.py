"""A full disk is an error that names the path and the lack of space, never a writer's traceback.

Why its own exception, and not OSError: ``ENOSPC`` out of a tar or parquet writer said neither which
file nor what to do, and several readers rightly treat an ``OSError`` as one bad sample. A full
disk is not bad input: the run must stop, keep every committed stage, and tell the user to free
space (the re-run resumes from the last committed stage and writes the same bytes). ``OutOfSpace``
is a ``RuntimeError`` so no bad-sample handler swallows it, and it pickles with its path so a Ray
worker's error reaches the driver intact.
"""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from typing import Iterator

# ENOSPC: the filesystem is full; EDQUOT: the user's quota is; EFBIG: a file past the filesystem's limit.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class OutOfSpace(RuntimeError):
    """Writing `path` failed for lack of space on its filesystem."""

    def __init__(self, path: str, detail: str = ""):
        self.path, self.detail = str(path), detail or _free_space(str(path))
        super().__init__(f"no space left on the device holding {self.path} ({self.detail}); free space there "
                         f"(or choose another --out) and run again: stages already complete are kept and resume")

    def __reduce__(self):
        return (OutOfSpace, (self.path, self.detail))


def _free_space(path: str) -> str:
    """'N MiB free of M MiB' on the filesystem of `path` (its nearest existing folder)."""
    probe = os.path.abspath(path)
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError:
        return "free space unknown"
    return f"{usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB"


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Around a write of `path`: a full disk becomes OutOfSpace naming it; other errors pass."""
    try:
        yield
    except OSError as exc:
        if is_no_space(exc):
            raise OutOfSpace(os.fspath(path)) from None
        raise


def find_out_of_space(exc: BaseException, default_path: str) -> OutOfSpace | None:
    """The OutOfSpace in `exc`'s chain (causes, contexts, and the ``cause`` Ray's task errors carry),
    or one made from an ENOSPC OSError found there (named by its filename, else `default_path`)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OutOfSpace) and getattr(e, "path", None):
            return OutOfSpace(e.path, getattr(e, "detail", ""))
        if is_no_space(e):
            return OutOfSpace(getattr(e, "filename", None) or default_path)
        todo += [c for c in (e.__cause__, e.__context__, getattr(e, "cause", None)) if isinstance(c, BaseException)]
    return None
