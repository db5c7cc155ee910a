"""Atomic replacement of an output directory: a crash leaves either the old or the new one."""
from __future__ import annotations

import os
import shutil


def sibling_dir(final: str, suffix: str) -> str:
    """`{parent}/.{name}.{suffix}`: the temp (and old) folders live beside the output, on its filesystem."""
    final = os.path.abspath(final)
    return os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.{suffix}")


def replace_dir(tmp: str, final: str) -> None:
    """Make `tmp` the new `final`, replacing an older one; a crash leaves either the old or the new."""
    old = sibling_dir(final, "old")
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(final):
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
