"""Fused per-row stages: which stages run as one streaming pass, and how each one's rows are read back.

Consecutive stages that only map batches (filters, OCR, scorers, token counting) run as one chain
(``Executor.map_stages``): on Ray one streaming pass of chained ``map_batches``, inline one part at a
time through every stage. Nothing is written between them. A chain ends at, and includes, the next
stage with a whole-dataset step that also has a per-batch step (dedup's signatures: the chain's last
link; its global step runs on the chain's output). A whole-dataset stage without a per-batch step
(mixture, pack, shards) runs alone, reading the chain's rows in place — the same reads and writes as
fusing it, and the chain before it stays a resume point, so changing mixture ratios re-runs only the
mixture. A chain also ends at a source stage, at a stage the recipe marks ``checkpoint: true``, at
``--until``, and before a second actor-pool (model) stage, so that two model pools never wait on each
other's CPUs.

The chain's last stage ("the owner") writes ``data/``: every row that entered the chain's first stage,
each dropped row with ``_dropped_at``, the index of the stage that dropped it (null: the owner's
global step dropped it, or it is kept). Each stage of the chain still gets its own directory with its
``rejects.parquet`` and ``_COMPLETE.json`` (``fused_into`` naming the owner), so the report keeps
per-stage in/out/rejected/quarantined exactly; resume restarts at the first stage after the last
complete stage that owns its data.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from curate import base as S
from curate.base import inline as E
from curate.base import records as R
from curate.base.diskspace import writing
from pipelines.engine.heap import release_freed_memory
from pipelines.engine.links import DROPPED_AT, REPEAT_ROW
from pipelines.engine.tables import PARQUET_OPTIONS, data_files

FUSED_INTO = "fused_into"
REJECT_COLUMNS = ("key", "source", "category", R.ORDINAL, R.STATUS, R.REASON, R.DETAIL, "provenance")


@dataclass
class Member:
    """One stage of the plan, built, with where it lives and its fingerprint."""
    index: int
    stage: S.Stage
    final: Path
    fingerprint: str
    checkpoint: bool = False

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def tmp(self) -> Path:
        return self.final.with_name(self.final.name + ".tmp")


def fusion_groups(members: list[Member]) -> list[list[Member]]:
    """Split the plan into chains (see the module docstring for where a chain ends)."""
    groups: list[list[Member]] = []
    current: list[Member] = []
    for m in members:
        s = m.stage
        starts_new = (s.reads_sources or (s.has_global_step() and not s.has_batch_step()) or
                      (s.resources.kind == "actor" and any(x.stage.resources.kind == "actor" for x in current)))
        if current and starts_new:
            groups.append(current)
            current = []
        current.append(m)
        if s.reads_sources or s.has_global_step() or m.checkpoint:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def rows_filter(names: list[str], stage_index: int, owner: bool, kept: bool | None) -> Any:
    """The dataset filter selecting, in a data directory with columns `names`, the rows of the stage
    at `stage_index`: kept by it (True), dropped by it (False) or every row that entered it (None).
    `owner`: the stage wrote that directory (its global step's drops carry no ``_dropped_at``)."""
    status = pc.field(R.STATUS)
    if DROPPED_AT not in names:
        return {True: status == R.KEPT, False: status != R.KEPT, None: None}[kept]
    at = pc.field(DROPPED_AT)
    if owner:   # its rows: every row but the ones earlier stages dropped
        mine = at.is_null() | (at == stage_index) | (at == REPEAT_ROW)
        return {True: status == R.KEPT, False: (status != R.KEPT) & mine, None: mine}[kept]
    # an earlier stage of the chain: rows it let through were dropped later or not at all (repeat
    # rows, REPEAT_ROW, appeared after it)
    return {True: at.is_null() | (at > stage_index), False: at == stage_index,
            None: at.is_null() | (at >= stage_index)}[kept]


def stage_rows(stage_dir: Path, columns: list[str] | None, kept: bool | None = True,
               limit: int | None = None) -> pa.Table | None:
    """A stage's rows (kept / dropped / all) from its directory or from its chain owner's; None when
    the stage wrote no rows. `limit`: at most that many rows (plots need a sample, not every row)."""
    found = _stage_dataset(stage_dir, kept)
    if found is None:
        return None
    ds, flt = found
    cols = [c for c in (columns or ds.schema.names) if c in ds.schema.names and c != DROPPED_AT]
    rows = ds.head(limit, columns=cols, filter=flt) if limit is not None else ds.to_table(columns=cols, filter=flt)
    release_freed_memory()
    return rows


def stage_batches(stage_dir: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """A stage's kept rows, batch by batch (for numbers that must see every row without holding them)."""
    found = _stage_dataset(stage_dir, kept=True)
    if found is not None:
        ds, flt = found
        for batch in ds.to_batches(columns=[c for c in columns if c in ds.schema.names], filter=flt):
            yield batch
            release_freed_memory()


def _stage_dataset(stage_dir: Path, kept: bool | None) -> tuple[pads.Dataset, Any] | None:
    """(the dataset holding the stage's rows, the filter selecting them): its own data directory, or
    the one of the chain owner its marker names; None when there are no rows."""
    marker = stage_dir / "_COMPLETE.json"
    info = json.loads(marker.read_text()) if marker.exists() else {}
    owner_dir = stage_dir.parent / info[FUSED_INTO] if info.get(FUSED_INTO) else stage_dir
    files = data_files(owner_dir / "data")
    if not files:
        return None
    index = info.get("stage_index", int(stage_dir.name.split("_", 1)[0]))
    return rows_of(files, index, owner_dir == stage_dir, kept)


def rows_of(files: list[str], stage_index: int, owner: bool, kept: bool | None) -> tuple[pads.Dataset, Any]:
    """(the dataset over `files`, the filter selecting the stage's rows); see rows_filter."""
    ds = pads.dataset(files, format="parquet")
    return ds, rows_filter(ds.schema.names, stage_index, owner, kept)


def write_rejects(data: Path, targets: dict[int, Path], owner_index: int) -> dict[int, dict[str, Any]]:
    """Each chain stage's dropped rows (sorted by _ordinal) to its rejects file, file by file, and
    their tally per stage index. Every data file covers an increasing, disjoint range of ordinals
    (executors keep input order), so sorting each file's dropped rows gives the global order without
    holding them all."""
    files = data_files(data)
    schema = pq.read_schema(files[0]) if files else R.BASE_SCHEMA
    cols = [c for c in REJECT_COLUMNS if c in schema.names]
    out_schema = pa.schema([schema.field(c) for c in cols])
    with writing(data.parent):   # a full disk: OutOfSpace naming the stage being built
        return _write_rejects(files, targets, owner_index, cols, out_schema)


def _write_rejects(files: list[str], targets: dict[int, Path], owner_index: int, cols: list[str],
                   out_schema: pa.Schema) -> dict[int, dict[str, Any]]:
    read_cols = cols + ([DROPPED_AT] if files and DROPPED_AT in pq.read_schema(files[0]).names else [])
    counts: dict[int, Counter[tuple[str, str | None]]] = {i: Counter() for i in targets}
    writers = {i: pq.ParquetWriter(str(p), out_schema, **PARQUET_OPTIONS) for i, p in targets.items()}
    try:
        for f in files:
            t = pads.dataset(f, format="parquet").to_table(columns=read_cols, filter=pc.field(R.STATUS) != R.KEPT)
            release_freed_memory()
            if t.num_rows == 0:
                continue
            t = t.take(pc.sort_indices(t, sort_keys=[(R.ORDINAL, "ascending")]))
            at = (pc.fill_null(t.column(DROPPED_AT), owner_index) if DROPPED_AT in t.column_names
                  else pa.array([owner_index] * t.num_rows, type=pa.int32()))
            for index, writer in writers.items():
                mine = t.filter(pc.equal(at, index))
                if mine.num_rows:
                    writer.write_table(mine.select(cols).cast(out_schema))
                    groups = mine.group_by([R.STATUS, R.REASON], use_threads=False).aggregate([([], "count_all")])
                    for st, why, n in zip(*(groups.column(c).to_pylist() for c in (R.STATUS, R.REASON, "count_all"))):
                        counts[index][(st, why)] += n
            unknown = set(pc.unique(at).to_pylist()) - set(writers)
            if unknown:
                raise E.AccountingError(f"rows dropped by stage(s) {sorted(unknown)}, outside this chain")
    finally:
        for writer in writers.values():
            writer.close()
    tallies = {}
    for index, c in counts.items():
        keys = sorted(c, key=lambda k: (k[0], k[1] or ""))
        tallies[index] = E.tally([k[0] for k in keys], [k[1] for k in keys], [c[k] for k in keys])
    return tallies
