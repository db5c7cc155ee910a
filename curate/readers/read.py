"""Readers: turn source files into sample records, recording every bad sample instead of crashing.

Formats (one module each): ``webdataset`` (``curate.readers.webdataset``), ``parquet``
(``curate.readers.parquet``), ``llava`` JSON/JSONL (``curate.readers.jsonl``), and the interleaved
documents ``obelics`` (``curate.readers.obelics``) and ``mint1t`` (``curate.readers.mint1t``). What they share — the
source spec, file listing, row builders — is in ``curate.readers.sources``; where an image reference inside
a record may point, and how it is read with bounds, is ``curate.readers.refs``.

Every reader yields plain dict rows in the record schema with ``_status`` set; image width/height
come from the header only (``curate.media.images.probe``), video size/duration/rate/frame count from the
container header (``curate.media.video.probe_video``), and each image or video reference carries the
sha256 of the bytes read. Paths and globs go through fsspec, so local paths and ``s3://``-style URLs both work.
"""
from __future__ import annotations

import dataclasses
import posixpath
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from curate.base import BatchResult

from curate.base import records as R
from curate.readers.jsonl import normalize_conversations, plan_line_parts, read_llava, strict_json
from curate.readers.jsonl_columns import read_llava_tables
from curate.readers.mint1t import read_mint1t
from curate.readers.obelics import is_parquet, read_obelics
from curate.readers.parquet import PARQUET_ERRORS, plan_parts, read_parquet, read_parquet_tables
from curate.readers.sources import (FORMATS, BadSample, NoSourceFiles, SourceSpec, bad_row, expand_braces, list_files,
                            source_files, unreadable)
from curate.readers.timed_io import ReadTimeout
from curate.readers.webdataset import read_webdataset

__all__ = ["FORMATS", "BadSample", "NoSourceFiles", "SourceSpec", "expand_braces", "list_files", "source_files",
           "normalize_conversations", "strict_json", "iter_file_tables", "read_file", "read_source", "READERS",
           "plan_file_parts", "BYTES_PER_PART"]

READERS: dict[str, Callable[[SourceSpec, str, int, int], Iterator[dict]]] = {
    "webdataset": read_webdataset, "parquet": read_parquet, "llava": read_llava,
    "obelics": read_obelics, "mint1t": read_mint1t,   # interleaved documents (curate.readers.documents)
}


# A JSONL file larger than this is read by several tasks, in byte ranges cut after a newline; a
# parquet file by several tasks of about this many rows (whole row groups).
BYTES_PER_PART = 64 << 20
PARQUET_ROWS_PER_PART = 200_000
# One task: the whole file, or (start, stop, first row): parquet row groups [start, stop) or JSONL
# bytes [start, stop) whose first line is line first_row + 1.
Part = tuple[int, int, int]


def plan_file_parts(spec: SourceSpec, uri: str) -> list[Part | None]:
    """How ingest splits one file into tasks: a large parquet file by row groups, a large JSONL by
    byte ranges, anything else whole (None). A function of the file alone, never of the workers."""
    if spec.format == "obelics":   # documents: planned as the container they are stored in
        try:
            parquet = is_parquet(uri, spec.read_timeout_s)
        except OSError:   # unreadable: one task, whose reader records the file as unreadable
            return [None]
        return plan_file_parts(dataclasses.replace(spec, format="parquet" if parquet else "llava"), uri)
    if spec.format == "parquet":
        try:
            parts = plan_parts(uri, PARQUET_ROWS_PER_PART)
        except PARQUET_ERRORS:   # no readable footer: one task, whose reader records the file as unreadable
            return [None]
        return [None] if len(parts) == 1 else [(a, b, -1) for a, b in parts]
    if spec.format == "llava":
        return plan_line_parts(uri, BYTES_PER_PART) or [None]
    return [None]


def iter_file_tables(spec: SourceSpec, uri: str, source_index: int, file_index: int,
                     rows_per_table: int = 4096, part: Part | None = None) -> Iterator[pa.Table]:
    """The records of one file (or one part of it) as conformed tables of at most `rows_per_table`
    rows, streamed: memory is bounded by the batch, not by the file (every reader streams its file)."""
    if spec.format not in READERS:
        raise ValueError(f"unknown source format {spec.format!r}; known: {', '.join(FORMATS)}")
    if spec.format in ("parquet", "llava"):   # column by column where the shape allows
        last = None   # the last ordinal read: a read that stalls quarantines the rest of the file after it
        tables = read_parquet_tables(spec, uri, source_index, file_index, None if part is None else part[:2],
                                     rows_per_table) if spec.format == "parquet" else \
            read_llava_tables(spec, uri, source_index, file_index, part, rows_per_table)
        try:
            for table in tables:
                if table.num_rows:
                    last = pc.max(table.column(R.ORDINAL)).as_py()
                yield table
        except ReadTimeout as exc:
            yield R.rows_to_table([_stalled_row(spec, uri, source_index, file_index, part, last, exc)])
        return
    if part is None:
        records = READERS[spec.format](spec, uri, source_index, file_index)
    else:
        records = read_obelics(spec, uri, source_index, file_index, part=part)
    yield from R.row_tables(_until_stalled(records, spec, uri, source_index, file_index, part), rows_per_table)


def _until_stalled(records: Iterator[dict], spec: SourceSpec, uri: str, source_index: int, file_index: int,
                   part: Part | None) -> Iterator[dict]:
    """`records`, then, if a read stalled (curate.readers.timed_io), one row standing for the rest of the file."""
    last = None
    try:
        for row in records:
            last = row[R.ORDINAL]
            yield row
    except ReadTimeout as exc:
        yield _stalled_row(spec, uri, source_index, file_index, part, last, exc)


def _stalled_row(spec: SourceSpec, uri: str, source_index: int, file_index: int, part: Part | None,
                 last: int | None, exc: ReadTimeout) -> dict:
    """One quarantined row (``read_timeout``) standing for the unread rest of a file or part. Its
    ordinal follows the last row read; with none read, the part's first row (a JSONL part's first line;
    for a parquet part, whose rows are unknown without its footer, a row number counted down from the
    top of the file's row space by its first row group, which no real file reaches)."""
    if last is not None:
        ordinal = last + 1
    elif part is None:
        ordinal = R.make_ordinal(source_index, file_index, 0)
    else:
        start, _, first_row = part
        ordinal = R.make_ordinal(source_index, file_index, first_row if first_row >= 0 else (1 << 31) - 1 - start)
    where = "" if part is None else f"@{part[0]}"
    return bad_row(spec, f"{posixpath.basename(uri)}{where}", ordinal, {"uri": uri}, unreadable("read_timeout", exc))


def read_file(spec: SourceSpec, uri: str, source_index: int, file_index: int, part: Part | None = None) -> pa.Table:
    """All records of one file or part (kept, rejected and quarantined) as a conformed table."""
    tables = list(iter_file_tables(spec, uri, source_index, file_index, part=part))
    return pa.concat_tables(tables) if tables else R.empty_table()


def read_source(path: str, format: str, source: str = "source", category: str = "caption",
                **options: Any) -> "BatchResult":
    """Notebook helper: every record of every file matching `path`, split as a stage's result is.

    ``.kept`` is what a stage should run on; ``.dropped`` holds the rejected and quarantined rows
    with their reasons, so that ``read.num_rows`` = rows read = kept + dropped, and after
    ``stage.run(read.kept)`` every row read is accounted for (nothing silently vanishes).
    """
    import pyarrow.compute as pc

    from curate.base import BatchResult
    spec = SourceSpec(name=source, path=path, format=format, category=category, **options)
    tables = [read_file(spec, uri, 0, i) for i, uri in enumerate(source_files(spec, 0))]
    table = pa.concat_tables(tables) if tables else R.empty_table()
    is_kept = pc.equal(table.column(R.STATUS), R.KEPT)
    return BatchResult(table.filter(is_kept), table.filter(pc.invert(is_kept)))
