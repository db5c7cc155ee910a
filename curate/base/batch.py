"""What one batch of a stage comes out as: kept rows and dropped rows with a status and a reason.

The stage contract (curate.base.stage) and inline execution (curate.base.inline) both speak these
types; they live apart from both so that neither imports the other back.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, Sequence

import pyarrow as pa

from curate.base import records as R


class BadSample(Exception):
    """This sample's input is unusable (corrupt or unreadable bytes, a decoder's error on them, a field
    of the wrong type): the one exception treated as data rather than as a bug. Raised inside
    ``process_batch``, the rows that raise it are dropped with ``reason`` and ``status`` —
    quarantined by default (the bytes may be fine, their storage or encoding was not); the readers
    raise it with ``status=rejected`` for records whose content breaks a rule (invalid JSON, a
    placeholder mismatch) and turn it into a bad row of the source."""

    def __init__(self, reason: str, detail: str = "", status: str = R.QUARANTINED):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.status = status


@dataclass
class BatchResult:
    """What a stage did to one batch: kept rows, and dropped rows carrying _status/_reason/_detail.
    ``report``: after a whole stage ran in a notebook (``Stage.run``), the numbers report.json would
    show for it beside its counts (curate.base.inline.report_numbers)."""
    kept: pa.Table
    dropped: pa.Table
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return self.kept.num_rows + self.dropped.num_rows

    @staticmethod
    def keep_all(table: pa.Table) -> "BatchResult":
        return BatchResult(table, table.slice(0, 0))

    def concat(self) -> pa.Table:
        """Kept and dropped rows in one table (kept rows have _status == 'kept')."""
        if self.dropped.num_rows == 0:
            return self.kept
        if self.kept.num_rows == 0:
            return self.dropped
        return pa.concat_tables([self.kept, self.dropped.cast(self.kept.schema)])


def set_status(table: pa.Table, status: str, reasons: Sequence[str | None] | str,
               details: Sequence[str | None] | str | None = None) -> pa.Table:
    n = table.num_rows
    if isinstance(reasons, str) or reasons is None:
        reasons = [reasons] * n
    if isinstance(details, str) or details is None:
        details = [details] * n
    out = table
    for name, values in ((R.STATUS, [status] * n), (R.REASON, list(reasons)), (R.DETAIL, list(details))):
        arr = pa.array(values, type=pa.string())
        idx = out.schema.get_field_index(name)
        out = out.set_column(idx, name, arr) if idx >= 0 else out.append_column(name, arr)
    return out


def error_detail(exc: BaseException) -> str:
    """One-line error text for the rejects manifest (type, message, innermost frame)."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"[:500]
