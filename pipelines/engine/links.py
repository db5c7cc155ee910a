"""The bookkeeping of a fused chain (pipelines.engine.fusion): which stage of the chain dropped a row.

Consecutive per-row stages run as one streaming pass and write one data directory. A row dropped
inside the chain carries ``_dropped_at``, the index of the stage that dropped it, so the runner can
still report and write rejects per stage: null on kept rows (and on rows the closing global step
drops), REPEAT_ROW on the repeat rows that step adds (no earlier stage saw them).

Why here and not in the base layer: only the engine runs stages as a chain. The base layer's
``apply_batch`` and ``apply_decisions`` (curate.base.inline) know one stage and one table; this
module wraps them for a link of a chain, and the engine strips the column before any stage sees a
batch, so that a stage never meets the engine's bookkeeping.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from curate.base import Stage
from curate.base import inline as E
from curate.base import records as R

DROPPED_AT = "_dropped_at"
DROPPED_AT_FIELD = pa.field(DROPPED_AT, pa.int32())
REPEAT_ROW = -1


def without_dropped_at(table: pa.Table) -> pa.Table:
    return table.drop_columns([DROPPED_AT]) if DROPPED_AT in table.column_names else table


def schema_without_dropped_at(schema: pa.Schema) -> pa.Schema:
    return schema.remove(schema.get_field_index(DROPPED_AT)) if DROPPED_AT in schema.names else schema


def apply_alone(stage: Stage, batch: pa.Table) -> pa.Table:
    """A stage that is a chain of its own: ``apply_batch`` on its upstream's rows, whose
    ``_dropped_at`` (the upstream chain's bookkeeping) is no input of the stage."""
    return E.apply_batch(stage, without_dropped_at(batch))


def apply_link(stage: Stage, batch: pa.Table, stage_index: int, carries_dropped: bool) -> pa.Table:
    """One stage of a fused chain: ``apply_batch`` on the kept rows, its drops tagged with
    ``stage_index``; rows an earlier link dropped pass through unchanged (``carries_dropped``; the
    chain's first link gets its upstream's rows, whose dropped ones belong to no stage of the chain).
    Output is ordered by ``_ordinal``, as a stage's own output is."""
    out = apply_alone(stage, batch)
    tags = pc.if_else(pc.equal(out.column(R.STATUS), R.KEPT), pa.scalar(None, pa.int32()),
                      pa.scalar(stage_index, pa.int32()))
    out = out.append_column(DROPPED_AT_FIELD, tags)
    if not carries_dropped:
        return out
    earlier = batch.filter(pc.not_equal(batch.column(R.STATUS), R.KEPT))
    if earlier.num_rows == 0:
        return out
    merged = pa.concat_tables([out, E.conform_loose(earlier, out.schema)])
    return merged.take(pc.sort_indices(merged, sort_keys=[(R.ORDINAL, "ascending")]))


def chain_schema(stages: list[Stage], input_schema: pa.Schema) -> pa.Schema:
    """The schema a fused chain writes: each stage's output schema in turn, plus ``_dropped_at``."""
    input_schema = schema_without_dropped_at(input_schema)
    for stage in stages:
        input_schema = stage.output_schema(input_schema)
    return input_schema.append(DROPPED_AT_FIELD)


def apply_decisions(rows: pa.Table, decisions: pa.Table, schema: pa.Schema) -> pa.Table:
    """``apply_decisions`` on rows of a data directory; in a chain's (``_dropped_at`` in `schema`)
    the repeat rows it appends at the end are tagged REPEAT_ROW."""
    out = E.apply_decisions(rows, decisions, schema)
    added = out.num_rows - rows.num_rows
    if not added or DROPPED_AT not in out.column_names:
        return out
    i = out.schema.get_field_index(DROPPED_AT)
    tags = pa.chunked_array(out.column(i).slice(0, rows.num_rows).chunks
                            + [pa.array([REPEAT_ROW] * added, type=pa.int32())], type=pa.int32())
    return out.set_column(i, DROPPED_AT_FIELD, tags)
