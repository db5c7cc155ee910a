"""Ownership markers: mmcurate deletes or replaces only directories it created itself.

Every directory the tool creates as an output (a run directory, a shards folder) carries a small
marker file; anything without one — a user's home, a source folder — is never renamed aside or
deleted. Lives in the base layer so that both the runner (pipelines.outdir) and the shard writer
(pack) use the same marker.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

MARKER = ".mmcurate-output"


def mark_owned(path: str | Path, kind: str = "run") -> None:
    """Write the ownership marker into `path` (created if missing)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    marker = p / MARKER
    if not marker.exists():
        marker.write_text(json.dumps({"tool": "mmcurate", "kind": kind}, sort_keys=True) + "\n")


def is_owned(path: str | Path) -> bool:
    """True when `path` carries our marker itself, or lies inside a directory that does."""
    p = Path(os.path.abspath(path))
    for candidate in (p, *p.parents):
        if (candidate / MARKER).is_file():
            return True
    return False
