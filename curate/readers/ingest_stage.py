"""Ingest: the first stage of every run — sources in, sample records out, duplicate keys named.

It is an ordinary stage with one difference, declared by ``reads_sources``: its input is a table of
file tasks (one row per input file, in a stable order), and each batch of tasks expands into the
records of those files. The whole-run step rejects every occurrence of a key after its first (by
``_ordinal``) as ``duplicate_key``; it runs as a shuffle by key, so no process holds every key.
Keys are prefixed by the source name, so sources never collide.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import Resources, Stage, register
from curate.base import records as R
from curate.readers.read import SourceSpec, plan_file_parts, read_file, source_files

# One task per file, or per part of a large file (curate.readers.read.plan_file_parts; -1: whole file).
TASK_SCHEMA = pa.schema([("source_index", pa.int32()), ("file_index", pa.int32()), ("uri", pa.string()),
                         ("part_start", pa.int64()), ("part_stop", pa.int64()), ("part_first_row", pa.int64())])

# Keys per shuffle partition for the duplicate-key step: one partition is one reduce call (sort, then
# compare neighbours), so 2M made a 1M-row check one task on one core; 500k keeps a few per run
# (2,000 at 10^9 rows) and one partition's keys a few tens of MB.
KEYS_PER_PARTITION = 500_000


@register
class IngestStage(Stage):
    name = "ingest"
    description = "Read the recipe's sources into sample records (header-only image probing) and reject duplicate keys."
    requires = ()
    resources = Resources(cpus=1, batch_size=8)
    reads_sources = True
    global_columns = ("key",)

    @dataclass
    class Config:
        sources: list[dict[str, Any]] = field(default_factory=list, metadata={
            "doc": "filled from the recipe's top-level `sources` (not set by hand)"})

    def specs(self) -> list[SourceSpec]:
        return [SourceSpec(**s) for s in self.config.sources]

    def input_table(self) -> pa.Table:
        """One task per file, or per part of a large parquet (row groups) or JSONL (byte ranges) file,
        in a stable order (source order, sorted file names, part order)."""
        rows = [(si, fi, uri, *(part or (-1, -1, -1))) for si, spec in enumerate(self.specs())
                for fi, uri in enumerate(source_files(spec, si)) for part in plan_file_parts(spec, uri)]
        columns = list(zip(*rows)) if rows else [[] for _ in TASK_SCHEMA]
        return pa.table(list(columns), schema=TASK_SCHEMA)

    def input_identity(self) -> Any:
        """Content identities of the input files (sha256, or the store's ETag; see curate.media.identity),
        cached by file stat in the run directory so a re-run does not re-hash every file."""
        from curate.media.identity import IdentityCache, fingerprint_inputs
        cache = IdentityCache(os.path.join(self.context.out_dir, "identity-cache.json") if self.context.out_dir else None)
        uris = [uri for si, spec in enumerate(self.specs()) for uri in source_files(spec, si)]
        identities = fingerprint_inputs(uris, cache)
        cache.save()
        return identities

    def read_tasks(self, tasks: pa.Table) -> pa.Table:
        """The records of every file or part named in `tasks` (kept, rejected and quarantined)."""
        specs = self.specs()
        tables = []
        for si, fi, uri, start, stop, first in zip(*(tasks.column(c).to_pylist() for c in TASK_SCHEMA.names)):
            tables.append(read_file(specs[si], uri, si, fi, None if start < 0 else (start, stop, first)))
        return pa.concat_tables([R.empty_table(), *tables])

    def global_step(self, data: Any) -> Any:
        partitions = max(1, -(-data.count() // KEYS_PER_PARTITION))
        return data.shuffle_reduce("key", mark_duplicate_keys, partitions)


def mark_duplicate_keys(group: pa.Table) -> pa.Table:
    """Decisions for whole key groups sorted by key then _ordinal: the first of each key is kept."""
    keys = group.column("key")
    n = group.num_rows
    dup = np.zeros(n, dtype=bool)
    if n > 1:
        same = pc.equal(keys.slice(1), keys.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        dup[1:] = same
    return pa.table({
        R.ORDINAL: group.column(R.ORDINAL),
        R.STATUS: pa.array(np.where(dup, R.REJECTED, R.KEPT).tolist(), type=pa.string()),
        R.REASON: pa.array(["duplicate_key" if d else None for d in dup], type=pa.string()),
        R.DETAIL: pa.array(["key seen earlier in this source" if d else None for d in dup], type=pa.string()),
    })
