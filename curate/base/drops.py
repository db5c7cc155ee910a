"""The one way a stage says what happens to a row: a ``Drop`` per dropped row, ``split_drops`` to
turn them into the ``BatchResult`` the contract returns.

A stage decides per row ``Drop | None`` — None keeps the row; a ``Drop`` carries the reason code, the
measured detail and the status — the shape of DataTrove's ``filter(doc) -> bool | (bool, reason)``,
with room for the detail a rejects manifest needs. A rule that fails *rejects* the sample
(``rejected``); bytes that cannot be fetched *quarantine* it (``quarantined``: the data may be fine,
the storage was not — a rerun after fixing storage can recover it). Every built-in stage and every
plugin drops rows this way (a stage that finds a sample unusable mid-batch may also raise
``BadSample``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa

from curate.base import records as R
from curate.base.batch import BatchResult, set_status


@dataclass(frozen=True)
class Drop:
    """Why one row leaves the stage."""
    reason: str
    detail: str | None = None
    status: str = R.REJECTED


def split_drops(table: pa.Table, drops: Sequence[Drop | None]) -> BatchResult:
    """Rows whose entry is None are kept; the others are dropped with their own status and reason
    (rejected rows first, then quarantined ones, each in input order)."""
    if len(drops) != table.num_rows:
        raise ValueError(f"{len(drops)} verdicts for {table.num_rows} rows")
    unknown = {d.status for d in drops if d is not None} - {R.REJECTED, R.QUARANTINED}
    if unknown:
        raise ValueError(f"unknown status {sorted(unknown)}")
    kept_idx = [i for i, d in enumerate(drops) if d is None]
    kept = table.take(pa.array(kept_idx, type=pa.int64()))
    parts = []
    for status in (R.REJECTED, R.QUARANTINED):
        idx = [i for i, d in enumerate(drops) if d is not None and d.status == status]
        if idx:
            part = table.take(pa.array(idx, type=pa.int64()))
            parts.append(set_status(part, status, [drops[i].reason for i in idx], [drops[i].detail for i in idx]))
    if not parts:
        return BatchResult(kept, table.slice(0, 0))
    dropped = parts[0] if len(parts) == 1 else pa.concat_tables([parts[0], parts[1].cast(parts[0].schema)])
    return BatchResult(kept, dropped)
