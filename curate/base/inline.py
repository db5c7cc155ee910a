"""Inline execution: how one stage is applied to data, with the accounting checks.

Both executors (Ray Data in ``pipelines`` and inline here) use these functions, so a stage behaves the same on a laptop,
in a notebook and on a cluster. The adapter is where the accounting promise is enforced: every input
row comes out exactly once, kept or dropped with a reason; a batch that raises ``BadSample`` is
retried row by row and only those rows are quarantined; any other exception fails the run.
"""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import records as R
from curate.base.global_data import InlineData, as_table, step_result
from curate.base.batch import BadSample, BatchResult, error_detail, set_status

if TYPE_CHECKING:   # the stage contract imports this module (Stage.run): no import back
    from curate.base.stage import Stage

STATUS_COLUMNS = (R.STATUS, R.REASON, R.DETAIL)


def with_bookkeeping(table: pa.Table) -> pa.Table:
    """Give a user-made table the runner's bookkeeping columns (notebook convenience)."""
    n = table.num_rows
    if R.ORDINAL not in table.column_names:
        table = table.append_column(R.ORDINAL, pa.array(np.arange(n, dtype=np.int64)))
    if R.STATUS not in table.column_names:
        table = table.append_column(R.STATUS, pa.array([R.KEPT] * n, type=pa.string()))
    for col in (R.REASON, R.DETAIL):
        if col not in table.column_names:
            table = table.append_column(col, pa.nulls(n, type=pa.string()))
    return table


def only_kept(table: pa.Table) -> pa.Table:
    """The kept rows; `table` itself when all are (the usual batch: a filter would copy every column)."""
    kept = pc.equal(table.column(R.STATUS), R.KEPT)
    return table if kept.null_count == 0 and pc.all(kept).as_py() else table.filter(kept)


def conform_loose(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Like records.conform but tolerates the input already having more columns than the stage adds."""
    return R.conform(table.select([c for c in table.column_names if c in schema.names]), schema)


def apply_batch(stage: Stage, batch: pa.Table) -> pa.Table:
    """Run process_batch on the kept rows of `batch`; return kept + dropped rows in the output schema.

    A ``BadSample`` raised by the stage drops the rows that raise it (found by retrying the batch row
    by row) with its status: quarantined unless it says rejected. Any other exception is a bug in the
    stage and fails the run, naming the stage and the first row of the batch — unless the recipe tolerates errors (``max_error_fraction`` > 0): then the
    failing rows are quarantined as ``error:<Type>`` and the runner fails the stage past that fraction.
    """
    batch = only_kept(batch)
    out_schema = stage.output_schema(batch.schema)
    if batch.num_rows == 0:
        return out_schema.empty_table()
    stage.ensure_setup()
    try:
        result = stage.process_batch(batch)
    except BadSample:
        result = _row_by_row(stage, batch, out_schema)
    except Exception as exc:  # noqa: BLE001 — a bug: find and name the row (StageError), or tolerate it
        result = _row_by_row(stage, batch, out_schema)
        if not stage.context.max_error_fraction:  # every row passed alone: the batch as a whole fails
            raise StageError(f"stage {stage.name!r} failed on the batch starting at key "
                             f"{_first_key(batch)!r}: {error_detail(exc)}") from exc
    check_accounting(stage.name, batch, result)
    return pa.concat_tables([conform_loose(result.kept, out_schema), conform_loose(result.dropped, out_schema)])


def _first_key(batch: pa.Table) -> str:
    return str(batch.column("key")[0].as_py()) if "key" in batch.column_names and batch.num_rows else "?"


def _row_by_row(stage: Stage, batch: pa.Table, out_schema: pa.Schema) -> BatchResult:
    """Find the rows that raise: BadSample rows are quarantined with their reason; other errors are
    quarantined as error:<Type> only when the recipe tolerates errors, else they fail the run."""
    kept, dropped = [], []
    for i in range(batch.num_rows):
        row = batch.slice(i, 1)
        try:
            res = stage.process_batch(row)
        except BadSample as bad:
            dropped.append(conform_loose(set_status(row, bad.status, bad.reason, bad.detail or None), out_schema))
            continue
        except Exception as exc:  # noqa: BLE001
            if not stage.context.max_error_fraction:
                raise StageError(f"stage {stage.name!r} failed in the batch starting at key {_first_key(batch)!r}, "
                                 f"on row key {_first_key(row)!r}: {error_detail(exc)}") from exc
            dropped.append(conform_loose(set_status(row, R.QUARANTINED, f"error:{type(exc).__name__}",
                                                     error_detail(exc)), out_schema))
            continue
        check_accounting(stage.name, row, res)
        kept.append(conform_loose(res.kept, out_schema))
        dropped.append(conform_loose(res.dropped, out_schema))
    empty = out_schema.empty_table()
    return BatchResult(pa.concat_tables([empty, *kept]), pa.concat_tables([empty, *dropped]))


class StageError(RuntimeError):
    """Stage code raised something other than BadSample: a bug, reported with where it happened."""


def check_accounting(stage_name: str, batch: pa.Table, result: BatchResult) -> None:
    """Every input row must come out exactly once; dropped rows must carry a status and reason."""
    if result.num_rows != batch.num_rows:
        raise AccountingError(f"stage {stage_name!r} returned {result.num_rows} rows for {batch.num_rows}")
    got = Counter(result.kept.column(R.ORDINAL).to_pylist() + result.dropped.column(R.ORDINAL).to_pylist())
    if got != Counter(batch.column(R.ORDINAL).to_pylist()):
        raise AccountingError(f"stage {stage_name!r} changed the set of samples in a batch")
    if result.dropped.num_rows:
        status = result.dropped.column(R.STATUS).to_pylist()
        reasons = result.dropped.column(R.REASON).to_pylist()
        if any(s not in (R.REJECTED, R.QUARANTINED) for s in status) or any(not r for r in reasons):
            raise AccountingError(f"stage {stage_name!r} dropped rows without a status and reason")
    if result.kept.num_rows and pc.any(pc.not_equal(result.kept.column(R.STATUS), R.KEPT)).as_py():
        raise AccountingError(f"stage {stage_name!r} returned kept rows whose _status is not 'kept'")


class AccountingError(RuntimeError):
    """A stage broke the in = kept + rejected + quarantined promise. This is a bug in the stage."""


def global_input(stage: Stage, table: pa.Table) -> pa.Table:
    """The columns decide() sees: key, _ordinal and the stage's global_columns, kept rows only."""
    kept = only_kept(table)
    cols = stage.global_columns or ()
    if tuple(cols) == ("*",):
        return kept
    # Columns a stage *may* use (e.g. num_tokens for a mixture by samples) are passed when present.
    wanted = ["key", R.ORDINAL] + [c for c in cols if c not in ("key", R.ORDINAL) and c in kept.column_names]
    return kept.select(wanted)


def validate_decisions(stage: Stage, inputs: pa.Table, decisions: pa.Table) -> pa.Table:
    for col in (R.ORDINAL, R.STATUS):
        if col not in decisions.column_names:
            raise AccountingError(f"stage {stage.name!r}: decide() result lacks column {col!r}")
    originals, repeats = split_repeats(decisions)
    if sorted(originals.column(R.ORDINAL).to_pylist()) != sorted(inputs.column(R.ORDINAL).to_pylist()):
        raise AccountingError(f"stage {stage.name!r}: decide() must answer for every kept row exactly once")
    extra = set(decisions.column_names) - {R.ORDINAL, *STATUS_COLUMNS, *REPEAT_COLUMNS} - set(stage.adds)
    if extra:
        raise AccountingError(f"stage {stage.name!r}: decide() returned undeclared columns {sorted(extra)}")
    bad = pc.and_(pc.not_equal(decisions.column(R.STATUS), R.KEPT),
                  pc.is_null(decisions.column(R.REASON)) if R.REASON in decisions.column_names
                  else pa.scalar(True))
    if pc.any(bad).as_py():
        raise AccountingError(f"stage {stage.name!r}: decide() dropped rows without a reason")
    if repeats.num_rows:
        _check_repeats(stage, originals, repeats)
    return decisions


# Repeats: a global step may add rows that copy a kept row (the mixture's up-sampling). Such a decision
# row carries `_repeat_source` (the `_ordinal` of the row it copies), its own new `_ordinal` and `key`,
# status kept and the stage's added columns. Everything else is copied from the source row.
REPEAT_SOURCE = "_repeat_source"
REPEAT_COLUMNS = (REPEAT_SOURCE, "key")


def split_repeats(decisions: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(one decision per input row, the extra repeat rows)."""
    if REPEAT_SOURCE not in decisions.column_names:
        return decisions, decisions.slice(0, 0)
    is_rep = pc.is_valid(decisions.column(REPEAT_SOURCE))
    return decisions.filter(pc.invert(is_rep)), decisions.filter(is_rep)


def count_repeats(decisions: pa.Table | None) -> int:
    return 0 if decisions is None else split_repeats(decisions)[1].num_rows


def _check_repeats(stage: Stage, originals: pa.Table, repeats: pa.Table) -> None:
    kept_ords = originals.filter(pc.equal(originals.column(R.STATUS), R.KEPT)).column(R.ORDINAL)
    if not pc.all(pc.is_in(repeats.column(REPEAT_SOURCE), value_set=kept_ords)).as_py():
        raise AccountingError(f"stage {stage.name!r}: a repeat copies a row that is not kept")
    if pc.any(pc.not_equal(repeats.column(R.STATUS), R.KEPT)).as_py() or repeats.column("key").null_count:
        raise AccountingError(f"stage {stage.name!r}: repeat rows must be kept and carry their own key")
    new = repeats.column(R.ORDINAL)
    if pc.count_distinct(new).as_py() != repeats.num_rows or pc.any(
            pc.is_in(new, value_set=originals.column(R.ORDINAL))).as_py():
        raise AccountingError(f"stage {stage.name!r}: repeat rows need new, distinct _ordinal values")


def apply_decisions(table: pa.Table, decisions: pa.Table, out_schema: pa.Schema) -> pa.Table:
    """Overwrite status and added columns of the rows that `decisions` names (by _ordinal); append the
    repeat rows whose source row is in `table`."""
    decisions, repeats = split_repeats(decisions)
    decisions = decisions.drop_columns([c for c in REPEAT_COLUMNS if c in decisions.column_names])
    table = _overwrite(conform_loose(table, out_schema), decisions, out_schema)
    return _append_repeats(table, repeats, out_schema) if repeats.num_rows else table


def _overwrite(table: pa.Table, decisions: pa.Table, out_schema: pa.Schema) -> pa.Table:
    pos = pc.index_in(table.column(R.ORDINAL), value_set=decisions.column(R.ORDINAL))
    has = pc.is_valid(pos)
    if not pc.any(has).as_py():
        return table
    take_idx = pc.fill_null(pos, 0)
    for name in decisions.column_names:
        if name == R.ORDINAL:
            continue
        new = decisions.column(name).take(take_idx)
        field = out_schema.field(name)
        new = new.cast(field.type)
        old = table.column(name)
        merged = pc.if_else(has, new, old)
        table = table.set_column(table.schema.get_field_index(name), field, merged)
    return table


def _append_repeats(table: pa.Table, repeats: pa.Table, out_schema: pa.Schema) -> pa.Table:
    pos = pc.index_in(repeats.column(REPEAT_SOURCE), value_set=table.column(R.ORDINAL))
    here = repeats.filter(pc.is_valid(pos))
    if here.num_rows == 0:
        return table
    copies = table.take(pc.drop_null(pos))
    for name in here.column_names:
        if name == REPEAT_SOURCE:
            continue
        field = out_schema.field(name)
        copies = copies.set_column(copies.schema.get_field_index(name), field, here.column(name).cast(field.type))
    return pa.concat_tables([table, copies])


def run_stage_inline(stage: Stage, table: pa.Table, batch_size: int | None = None) -> BatchResult:
    """The whole stage in this process: batches, then the global step. Returns kept and dropped rows.

    Rows that arrive already dropped (e.g. ``read_source`` output with rejected rows) come back in
    ``dropped`` unchanged, so in a notebook too every row in is accounted for."""
    table = with_bookkeeping(table)
    size = batch_size or stage.resources.batch_size
    parts = [apply_batch(stage, table.slice(i, size)) for i in range(0, table.num_rows, size)]
    out_schema = stage.output_schema(table.schema)
    out = pa.concat_tables([out_schema.empty_table(), *parts]) if parts else out_schema.empty_table()
    step_report: dict[str, Any] = {}
    if stage.has_global_step():
        stage.ensure_setup()
        inputs = global_input(stage, out)
        step = step_result(stage.global_step(InlineData([inputs])))
        decisions = validate_decisions(stage, inputs, as_table(step.decisions))
        out = apply_decisions(out, decisions, out_schema)
        step_report = step.report
    is_kept = pc.equal(out.column(R.STATUS), R.KEPT)
    arrived_dropped = conform_loose(table.filter(pc.not_equal(table.column(R.STATUS), R.KEPT)), out_schema)
    kept = out.filter(is_kept)
    return BatchResult(kept, pa.concat_tables([out.filter(pc.invert(is_kept)), arrived_dropped]),
                       report_numbers(stage, kept, step_report))


def report_numbers(stage: Stage, kept: pa.Table, step_report: dict[str, Any]) -> dict[str, Any]:
    """The numbers report.json shows for a stage beside its counts, the one way they get there:
    ``summarize`` of the merged ``summary_partial``s of its kept rows, then what its global step
    returned (``StepResult.report``). The runner computes the same from the written rows
    (pipelines.engine.chains); here, for a notebook's ``Stage.run``, from `kept` in one batch. A
    table without the stage's summary columns gets the step's numbers only."""
    if not stage.summary_columns:
        return {**stage.summarize(kept.select([])), **step_report}
    if not all(c in kept.column_names for c in stage.summary_columns):
        return dict(step_report)
    cols = [c for c in (*stage.summary_columns, "key", R.ORDINAL) if c in kept.column_names]
    return {**stage.summarize(stage.summary_merge(stage.summary_partial(kept.select(cols)))), **step_report}


def tally(statuses: list[str], reasons: list[str | None], weights: list[int] | None = None) -> dict[str, Any]:
    """Accounting of one stage's output rows: kept, rejected by reason, quarantined by reason
    (``weights``: how many rows each (status, reason) entry stands for; 1 each by default)."""
    rejected: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    kept = 0
    for s, r, w in zip(statuses, reasons, weights or [1] * len(statuses)):
        if s == R.KEPT:
            kept += w
        elif s == R.REJECTED:
            rejected[r or "unspecified"] += w
        else:
            quarantined[r or "unspecified"] += w
    return {"out": kept, "rejected": dict(sorted(rejected.items())), "quarantined": dict(sorted(quarantined.items()))}
