"""Atomic replacement of an output directory: a crash leaves either the old or the new one."""
from __future__ import annotations

import os
import shutil

from curate.base.ownership import MARKER, is_owned, mark_owned


def sibling_dir(final: str, suffix: str) -> str:
    """`{parent}/.{name}.{suffix}`: the temp (and old) folders live beside the output, on its filesystem."""
    final = os.path.abspath(final)
    return os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.{suffix}")


def replace_dir(tmp: str, final: str) -> None:
    """Make `tmp` the new `final`, replacing an older one; a crash leaves either the old or the new.

    Only a `final` that mmcurate created (ownership marker) or an empty one is replaced; anything else
    is a user's directory and is refused before a byte moves. The new one is marked as ours."""
    if os.path.lexists(final) and not (os.path.isdir(final) and not os.path.islink(final)
                                       and (is_owned(final) or not os.listdir(final))):
        raise FileExistsError(f"refusing to replace {final!r}: it was not created by mmcurate (no {MARKER} "
                              f"marker); choose another output directory")
    mark_owned(tmp, kind="shards")
    old = sibling_dir(final, "old")
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(final):
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
