"""Ingest: the first stage of every run — sources in, sample records out, duplicates named.

Reading is split into one task per input file (the runner fans these out with Ray Data); the
whole-run step then rejects later occurrences of a key already seen in an earlier file of the same
source ("duplicate_key"). Keys are prefixed by the source name, so sources never collide.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate import records as R
from curate.readers import SourceSpec, read_file, source_files
from curate.stage import Resources, Stage, register


@dataclass(frozen=True)
class FileTask:
    source_index: int
    file_index: int
    uri: str


@register
class IngestStage(Stage):
    name = "ingest"
    description = "Read the recipe's sources into sample records (header-only image probing) and reject duplicate keys."
    requires = ()
    resources = Resources(cpus=1, batch_size=1)
    global_columns = ()

    @dataclass
    class Config:
        pass

    @staticmethod
    def plan(sources: list[SourceSpec]) -> list[FileTask]:
        """One task per file, in a stable order (source order, then sorted file names)."""
        tasks = []
        for si, spec in enumerate(sources):
            for fi, uri in enumerate(source_files(spec, si)):
                tasks.append(FileTask(si, fi, uri))
        return tasks

    @staticmethod
    def read(sources: list[SourceSpec], task: FileTask) -> pa.Table:
        return read_file(sources[task.source_index], task.uri, task.source_index, task.file_index)

    def decide(self, table: pa.Table) -> pa.Table:
        """Reject every occurrence of a key after its first (by _ordinal)."""
        order = pc.sort_indices(table, sort_keys=[(R.ORDINAL, "ascending")])
        t = table.take(order)
        keys = t.column("key").to_pylist()
        seen: set[str] = set()
        dup = np.zeros(len(keys), dtype=bool)
        for i, k in enumerate(keys):
            if k in seen:
                dup[i] = True
            seen.add(k)
        status = np.where(dup, R.REJECTED, R.KEPT)
        return pa.table({
            R.ORDINAL: t.column(R.ORDINAL),
            R.STATUS: pa.array(status.tolist(), type=pa.string()),
            R.REASON: pa.array(["duplicate_key" if d else None for d in dup], type=pa.string()),
            R.DETAIL: pa.array(["key seen in an earlier file of this source" if d else None for d in dup],
                               type=pa.string()),
        })
