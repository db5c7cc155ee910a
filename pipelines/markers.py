"""What a committed stage leaves behind, and whether a re-run may reuse it.

A stage's ``_COMPLETE.json`` (written last, atomically) holds its fingerprint, its report entry,
``input_digest`` (the content digest of the upstream stage it read), ``digest`` (its own) and the
size, sha256 and stat key of every file it wrote. A re-run reuses the stage only when all of that
still holds (``stale_reason``); a marker that is missing or unreadable means the stage re-runs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads

from curate.base.diskspace import writing
from pipelines.engine.tables import data_files
from pipelines.fingerprint import inventory_problem
from pipelines.engine.fusion import Member


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename: a crash or a full disk leaves the old file
    or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with writing(path):
        try:
            tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
        except OSError:
            tmp.unlink(missing_ok=True)   # a full disk leaves no half-written file behind
            raise
    os.replace(tmp, path)


def read_marker(stage_dir: Path) -> dict[str, Any] | None:
    """A stage's ``_COMPLETE.json``, or None when it is missing or damaged (then the stage re-runs)."""
    try:
        done = json.loads((stage_dir / "_COMPLETE.json").read_text())
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) and isinstance(done.get("report"), dict) else None


def stale_reason(m: Member, done: dict[str, Any], upstream_digest: str | None, out: Path) -> str | None:
    """Why a stage's committed output (its marker `done`) cannot be reused, or None: other settings,
    code or inputs; an upstream that now holds other bytes than the ones it read; a file changed
    since commit; for a source stage, a referenced image or video changed since it was read."""
    if done.get("fingerprint") != m.fingerprint:
        return "its settings, code or inputs changed"
    if done.get("input_digest") != upstream_digest:
        return "the stage before it was re-run and wrote other bytes"
    damaged = inventory_problem(done.get("outputs", {}), out)
    if damaged:
        return damaged
    if m.stage.reads_sources and media_changed(m.final, done):
        return "a referenced image or video changed since it was read"
    return None


def media_changed(stage_dir: Path, marker: dict[str, Any]) -> bool:
    """Whether an image or video file referenced by a record changed since the source stage hashed it
    (then the stage re-runs). Refs are streamed batch by batch, never all in memory."""
    from curate.media.identity import stale_media
    files = data_files(stage_dir / "data")
    if not files or "started_ns" not in marker:
        return bool(files)
    started_ns = int(marker["started_ns"]) - 2_000_000_000   # 2 s slack for timestamp granularity
    dataset = pads.dataset(files, format="parquet")
    columns = [c for c in ("images", "videos") if c in dataset.schema.names]
    batches = dataset.to_batches(columns=columns)
    refs = (ref for b in batches for col in b.columns for refs in col.to_pylist() for ref in (refs or []))
    return bool(stale_media(refs, changed_after_ns=started_ns))
