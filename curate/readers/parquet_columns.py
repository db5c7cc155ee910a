"""Metadata-only parquet (key, caption or conversation turns, scalar columns, at most an image *path*
column; no image bytes) read column by column instead of row by row: the same records as
``curate.readers.parquet.read_parquet``, byte for byte, at a fraction of the CPU, because a
billion-row metadata corpus (the scale issue's case) spends most of ingest building Python dicts.
Image paths are resolved by the reader's ``image_cells`` (each distinct path of a task read once,
``curate.readers.refs.ReferenceMemo``), the same function the row path calls per row.

A file qualifies by its schema alone (``plain_schema``); anything else, or a batch holding a value
the row path would reject in a way this path does not model (a non-finite float), goes through the
row path. Keys, ordinals, provenance, metadata JSON, in-file duplicate keys and missing captions are
the row path's, and a property test compares the two on random files. A conversations column of LLaVA
``from/value`` or ``role/content`` turns is normalised by ``curate.readers.parquet_turns``.
"""
from __future__ import annotations

import json
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import records as R
from curate.readers.parquet_turns import normalized_turns, turn_fields
from curate.readers.sources import SourceSpec, shard_label
from curate.readers.timed_io import open_timed

BATCH_ROWS = 4096


def plain_schema(spec: SourceSpec, schema: pa.Schema) -> bool:
    """Whether every column is one the column path reproduces exactly: no image bytes, a string
    caption and/or a conversations column of turns (``parquet_turns.turn_fields``), a string or
    integer key, and string / integer / bool / float metadata."""
    names = set(schema.names)
    turns = "conversations" in names
    if turns and (turn_fields(schema.field("conversations").type) is None
                  or "conversations" in (spec.text_column, spec.image_column, spec.key_column)
                  or (spec.image_column in names and spec.max_images_per_record < 1)):
        return False   # the row path names what it makes of these
    if spec.text_column not in names and not turns:
        return False
    for field in schema:
        t = field.type
        if field.name == "conversations":
            continue
        if field.name == spec.image_column:
            if not pa.types.is_string(t):   # bytes or {bytes, path} structs: the row path
                return False
        elif field.name == spec.text_column:
            if not pa.types.is_string(t):
                return False
        elif field.name == spec.key_column:
            if not (pa.types.is_string(t) or pa.types.is_integer(t)):
                return False
        elif not (pa.types.is_string(t) or pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_floating(t)
                  or pa.types.is_null(t)):
            return False
    return True


def column_tables(spec: SourceSpec, uri: str, source_index: int, file_index: int, pf, row_groups: tuple[int, int],
                  row_path, broken, batch_rows: int = BATCH_ROWS, image_cells=None) -> Iterator[pa.Table]:
    """Conformed record tables of row groups [first, stop) of an open, plain ParquetFile `pf`.
    `row_path(batch, first_row, seen)` gives the row path's table for a batch this path declines;
    `broken(first_row, error)` the table recording rows a damaged row group lost;
    `image_cells(values)` the image field of each image-column cell: None (null), the row's image
    references, or the BadSample the row path raises for it."""
    first, stop = row_groups
    seen: set[str] = set()
    prefix = f"{spec.name}/" + (f"{shard_label(spec.path, uri)}/" if spec.key_prefix == "shard" else "")
    uri_json = json.dumps(uri, ensure_ascii=False)
    for row_index, batch in guarded_batches(pf, batch_rows, range(first, stop)):
        if isinstance(batch, BaseException):
            yield broken(row_index, batch)
            continue
        table = pa.Table.from_batches([batch])
        turns = normalized_turns(table.column("conversations"), turn_fields(table.schema.field("conversations").type)) \
            if "conversations" in table.column_names else None
        if _has_non_finite(spec, table) or (turns is None and "conversations" in table.column_names):
            yield row_path(table, row_index, seen)
        else:
            yield _records(spec, table, row_index, seen, prefix, uri, uri_json, source_index, file_index, image_cells,
                           turns)


class DamagedRowGroup(Exception):
    """Rows of a row group that a damaged page (or cut data) made unreadable."""


def guarded_batches(pf, batch_rows: int, row_groups: range) -> Iterator[tuple[int, pa.RecordBatch | DamagedRowGroup]]:
    """(number of its first row in the file, batch) for the record batches of `row_groups`, read one
    row group at a time so that a damaged one costs only its own rows: for it, (its first unread
    row, DamagedRowGroup) comes instead of raising out of the read, and reading goes on."""
    meta = pf.metadata
    row = sum(meta.row_group(rg).num_rows for rg in range(row_groups.start))
    for rg in row_groups:
        end = row + meta.row_group(rg).num_rows
        try:
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[rg]):
                yield row, batch
                row += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            if isinstance(exc, TimeoutError):
                raise   # stalled, not damaged: the rest of the file is recorded as read_timeout (curate.readers.read)
            yield row, DamagedRowGroup(f"row group {rg}, rows {row} to {end - 1}: {type(exc).__name__}: {exc}")
        row = end


def _has_non_finite(spec: SourceSpec, table: pa.Table) -> bool:
    for name in table.column_names:
        col = table.column(name)
        if name != spec.text_column and pa.types.is_floating(col.type):
            if not pc.all(pc.fill_null(pc.is_finite(col), True)).as_py():
                return True
    return False


def _records(spec: SourceSpec, table: pa.Table, row0: int, seen: set[str], prefix: str, uri: str, uri_json: str,
             source_index: int, file_index: int, image_cells=None, turns=None) -> pa.Table:
    n = table.num_rows
    rows = np.arange(row0, row0 + n, dtype=np.int64)
    raw_keys = table.column(spec.key_column).cast(pa.string()).to_pylist() if spec.key_column in table.column_names \
        else [None] * n
    keys = [str(r) if k is None else k for k, r in zip(raw_keys, rows.tolist())]
    text = table.column(spec.text_column) if spec.text_column in table.column_names else pa.nulls(n, pa.string())
    missing = pc.is_null(text).to_numpy(zero_copy_only=False)
    text_bytes = np.asarray(pc.fill_null(pc.binary_length(text), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    invalid = np.zeros(n, dtype=bool)
    if turns is not None:   # the row path: the conversations, then the caption's presence, then the size
        missing &= ~turns.present
        invalid = turns.present & turns.invalid
        text_bytes = text_bytes + turns.content_bytes
    too_long = text_bytes > spec.max_text_bytes
    duplicate = np.zeros(n, dtype=bool)
    for i, k in enumerate(keys):   # in-file duplicates: the row path's check, in its order
        if k in seen:
            duplicate[i] = True
        else:
            seen.add(k)
    cells = image_cells(table.column(spec.image_column).to_pylist()) \
        if spec.image_column in table.column_names else [None] * n
    refused = np.array([isinstance(c, Exception) for c in cells], dtype=bool)   # a BadSample for the image
    bad = duplicate | refused | invalid | missing | too_long
    status = np.where(bad, R.REJECTED, R.KEPT).tolist()
    reason = np.where(duplicate, "duplicate_key", np.where(invalid, "invalid_conversations", np.where(
        missing, "missing_text", np.where(too_long, "text_too_long", None)))).tolist()
    long_detail = f"over {spec.max_text_bytes} bytes of text (max_text_bytes)"
    detail = [f"{k} appears twice in {uri}"[:500] if d else
              (f"no {spec.text_column!r} and no conversations"[:500] if m else long_detail if t else None)
              for k, d, m, t in zip(keys, duplicate, missing, too_long)]   # bad_row keeps 500 characters of a detail
    for i in np.flatnonzero(invalid & ~duplicate):
        detail[i] = turns.detail[i][:500]
    for i in np.flatnonzero(refused & ~duplicate):   # the row path: the key check, then the image, then the text
        status[i], reason[i], detail[i] = cells[i].status, cells[i].reason, cells[i].detail[:500] or None
    images = [c if isinstance(c, list) and not b else [] for c, b in zip(cells, bad)]
    others = [c for c in table.column_names
              if c not in {spec.text_column, spec.key_column, spec.image_column, "conversations"}]
    meta = [None] * n if not others else [R.dumps_meta(m) for m in table.select(others).to_pylist()]
    category = table.column("category") if "category" in table.column_names and \
        pa.types.is_string(table.schema.field("category").type) else None
    cats = pa.array([spec.category] * n, pa.string()) if category is None else \
        pc.fill_null(category, spec.category)
    keep = pa.array(~bad)
    columns = {
        "key": pa.array([prefix + k for k in keys], pa.string()),
        "source": pa.array([spec.name] * n, pa.string()),
        "category": pc.if_else(keep, cats, pa.scalar(spec.category)),
        "images": pa.array(images, R.BASE_SCHEMA.field("images").type),
        "videos": pa.array([[]] * n, R.BASE_SCHEMA.field("videos").type),
        "text": pc.if_else(keep, text, pa.scalar(None, pa.string())),
        "conversations": None if turns is None else turns.lists(~bad),
        "meta": pc.if_else(keep, pa.array(meta, pa.string()), pa.scalar(None, pa.string())),
        "provenance": pa.array([f'{{"row":{r},"uri":{uri_json}}}' for r in rows.tolist()], pa.string()),
        R.ORDINAL: pa.array((source_index << 55) | (file_index << 31) | rows, pa.int64()),
        R.STATUS: pa.array(status, pa.string()),
        R.REASON: pa.array(reason, pa.string()),
        R.DETAIL: pa.array(detail, pa.string()),
    }
    if (rows >= 1 << 31).any() or file_index >= 1 << 24 or source_index >= 1 << 8:
        R.make_ordinal(source_index, file_index, int(rows[-1]))   # raises, naming the overflow
    return R.conform(pa.table({k: v for k, v in columns.items() if v is not None and k in R.BASE_SCHEMA.names}),
                     R.BASE_SCHEMA)


def open_plain(spec: SourceSpec, uri: str):
    """(an open file handle, its ParquetFile) when the file opens and its schema is plain, else None."""
    import pyarrow.parquet as pq
    fh = open_timed(uri, spec.read_timeout_s)
    try:
        pf = pq.ParquetFile(fh)
    except TimeoutError:
        raise   # stalled: recorded as read_timeout by the reader (curate.readers.read), not re-read by the row path
    except Exception:  # noqa: BLE001 — garbage: the row path names it (unreadable_parquet)
        fh.close()
        return None
    if not plain_schema(spec, pf.schema_arrow):
        fh.close()
        return None
    return fh, pf

