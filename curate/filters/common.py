"""One way to say what happens to a row, and one way to check a stage's settings.

Verdicts: every filter in ``curate.filters`` (and the CLIP and grounding stages) decides per row
``Drop | None`` — None keeps the row; a ``Drop`` carries the reason code, the measured detail and
the status — and turns the list into a ``BatchResult`` with ``split_drops``. A rule that fails
*rejects* the sample (``rejected``); bytes that cannot be fetched *quarantine* it (``quarantined``:
the data may be fine, the storage was not — a rerun after fixing storage can recover it).
``BatchResult.split(reasons, details, status)`` is the special case of one status for the batch:
it equals ``split_drops([Drop(r, d, status) if r else None ...])`` (tested), so the stage
contract can keep one of the two.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import pyarrow as pa

from curate.base import records as R
from curate.base import BatchResult, set_status


@dataclass(frozen=True)
class Drop:
    """Why one row leaves the stage."""
    reason: str
    detail: str | None = None
    status: str = R.REJECTED


def split_drops(table: pa.Table, drops: Sequence[Drop | None]) -> BatchResult:
    """Rows whose entry is None are kept; the others are dropped with their own status and reason."""
    if len(drops) != table.num_rows:
        raise ValueError(f"{len(drops)} verdicts for {table.num_rows} rows")
    kept_idx = [i for i, d in enumerate(drops) if d is None]
    kept = table.take(pa.array(kept_idx, type=pa.int64()))
    parts = []
    for status in (R.REJECTED, R.QUARANTINED):
        idx = [i for i, d in enumerate(drops) if d is not None and d.status == status]
        if idx:
            part = table.take(pa.array(idx, type=pa.int64()))
            parts.append(set_status(part, status, [drops[i].reason for i in idx], [drops[i].detail for i in idx]))
    unknown = {d.status for d in drops if d is not None} - {R.REJECTED, R.QUARANTINED}
    if unknown:
        raise ValueError(f"unknown status {sorted(unknown)}")
    if not parts:
        return BatchResult(kept, table.slice(0, 0))
    dropped = parts[0] if len(parts) == 1 else pa.concat_tables([parts[0], parts[1].cast(parts[0].schema)])
    return BatchResult(kept, dropped)


def read_or_drop(ref: Mapping[str, Any], read: Callable[[Mapping[str, Any]], bytes]) -> bytes | Drop:
    """The bytes of an image reference, or the quarantine Drop that says why they could not be read.

    Missing files and short reads are storage problems, not bad content: quarantined, not rejected.
    """
    from curate.media import images as I
    try:
        return read(ref)
    except I.UnreadableImage as exc:
        return Drop(f"image:unreadable:{exc.reason}", exc.detail or str(exc), R.QUARANTINED)
    except FileNotFoundError as exc:
        return Drop("image:unreadable:missing_file", str(exc), R.QUARANTINED)
    except OSError as exc:
        return Drop("image:unreadable:io_error", f"{type(exc).__name__}: {exc}", R.QUARANTINED)
