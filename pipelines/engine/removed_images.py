"""The images a stage took out of documents: one row per image in the stage's ``images_removed.parquet``
(and the run's), and the report's ``images_removed[reason]`` per stage.

Why a file of its own: a removed image is not a sample (its document is kept), so it has no place in
``rejects.parquet``, whose rows balance the stage's accounting (in = out + rejected + quarantined). But
nothing may disappear silently: each removal is recorded on its row (``images_removed``, written by
curate.documents.record.remove_images with the stage's name), and here it is listed by document key,
position in the document as read, the reference as the document gave it, stage, reason and detail.

A stage's removals are the entries naming it in the rows of its chain's data (kept and dropped: a
document a later stage of the chain rejects still lost the image here). A stage whose name an earlier
stage of the recipe has records its removals as ``name@index`` (curate.documents.per_image.removal_stage),
so two ``image_filter`` stages each count their own.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from curate.base import records as R
from pipelines.engine.tables import PARQUET_OPTIONS, data_files, write_table

FILE_NAME = "images_removed.parquet"
SCHEMA = pa.schema([("key", pa.string()), ("source", pa.string()), (R.ORDINAL, pa.int64()),
                    ("position", pa.int32()), ("ref", pa.string()), ("stage", pa.string()),
                    ("reason", pa.string()), ("detail", pa.string())])


def _removals(files: list[str]) -> pa.Table:
    """Every removal recorded on the rows of `files`, flattened (one row per image), in ordinal order."""
    if not files or "images_removed" not in pq.read_schema(files[0]).names:
        return SCHEMA.empty_table()
    # The list column alone first: most runs remove no image, and reading key and source of every
    # row to find none cost the driver ~45 MB of Arrow's pool per 100k-row file (measured, issue 31).
    if not any(_removes_any(f) for f in files):
        return SCHEMA.empty_table()
    ds = pads.dataset(files, format="parquet")
    rows = ds.to_table(columns=["key", "source", R.ORDINAL, "images_removed"],
                       filter=pc.list_value_length(pc.field("images_removed")) > 0)
    if rows.num_rows == 0:
        return SCHEMA.empty_table()
    rows = rows.take(pc.sort_indices(rows, sort_keys=[(R.ORDINAL, "ascending")]))
    lists = rows.column("images_removed").combine_chunks()
    parents = pc.list_parent_indices(lists)
    flat = pc.list_flatten(lists)
    columns = {c: pc.take(rows.column(c), parents) for c in ("key", "source", R.ORDINAL)}
    columns.update({f: flat.field(f) for f in ("position", "ref", "stage", "reason", "detail")})
    return pa.table(columns).cast(SCHEMA)


def _removes_any(path: str) -> bool:
    """Whether a row of the file lists a removed image: its list column a row group at a time, on this
    thread. A whole-file read of it on Arrow's threads left their allocator holding ~4 MB of the
    driver per 100k rows of the file (+49 MB over a 5M-row ingest's files, measured for issue 31)."""
    parquet = pq.ParquetFile(path)
    for g in range(parquet.metadata.num_row_groups):
        lists = parquet.read_row_group(g, columns=["images_removed"], use_threads=False).column(0)
        if pc.any(pc.greater(pc.list_value_length(lists), 0)).as_py():
            return True
    return False


def write_removed_images(data: Path, targets: dict[int, tuple[str, Path]]) -> dict[int, dict[str, int]]:
    """For each chain stage (index -> (the stage name its removals record, the file to write)), its
    removals to the file (only when it removed any) and their count per reason, sorted by reason. File
    by file (each covers its own increasing range of ordinals): the driver holds one file's removals."""
    counts: dict[int, Counter] = {index: Counter() for index in targets}
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for f in data_files(data):
            removals = _removals([f])
            for index, (label, path) in targets.items():
                mine = removals.filter(pc.equal(removals.column("stage"), label))
                if not mine.num_rows:
                    continue
                counts[index].update(mine.column("reason").to_pylist())
                if index not in writers:
                    writers[index] = pq.ParquetWriter(str(path), SCHEMA, **PARQUET_OPTIONS)
                writers[index].write_table(mine)
    finally:
        for writer in writers.values():
            writer.close()
    return {index: dict(sorted(c.items())) for index, c in counts.items()}


def collect(stage_dirs: list[Path], out: Path) -> None:
    """The run's ``images_removed.parquet``: every stage's file, in stage order (none: no file)."""
    tables = [pq.read_table(d / FILE_NAME) for d in stage_dirs if (d / FILE_NAME).exists()]
    target = out / FILE_NAME
    if tables:
        write_table(pa.concat_tables(tables), target)
    elif target.exists():
        target.unlink()


def report_entry(counts: dict[str, int]) -> dict[str, Any]:
    """What a stage's report entry gains: nothing for a stage that removed no image (so the reports of
    runs without documents stay as they were)."""
    return {"images_removed": counts} if counts else {}
