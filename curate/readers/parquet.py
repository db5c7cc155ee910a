"""Parquet: one row per sample. The image column holds raw bytes, a path/URL string (resolved like a
LLaVA reference, inside the source root), or a ``{bytes, path}`` struct; null means a text-only
sample. Anything else (``list<binary>``, ``int64``...) is rejected as ``image:unsupported_value`` —
never silently read as a caption-only sample.

The remaining columns become the sample's metadata JSON. Arrow types without a JSON form are
converted faithfully: timestamps, dates and times to ISO 8601 text, decimals to their exact decimal
text, durations to seconds, maps to objects; NaN/Infinity are a per-row rejection.

A damaged file never ends the run: no readable footer (a 15-byte file, a truncated tail) makes one
quarantined row ``unreadable_parquet`` for the file; a damaged page costs the rows of its row group
from there on, as one quarantined ``unreadable_parquet`` row naming them; the other row groups are read.
"""
from __future__ import annotations

import datetime as dt
import decimal
import math
import posixpath
from typing import Any, Callable, Iterator

import fsspec
import pyarrow as pa

from curate.media import images as I
from curate.base import records as R
from curate.readers.jsonl import normalize_conversations, referenced_image
from curate.readers.parquet_columns import column_tables, guarded_batches, open_plain
from curate.readers.refs import ReferenceMemo
from curate.readers.sources import BadSample, SourceSpec, bad_row, image_ref_from_bytes, make_row, unreadable
from curate.readers.timed_io import open_timed


# What pyarrow raises for a damaged file (ArrowInvalid for a missing footer, OSError for a cut one).
PARQUET_ERRORS: tuple[type[BaseException], ...] = (pa.ArrowException, OSError)

# A task of about this many rows keeps a worker's memory at a batch's worth while amortising the
# per-task cost; row groups are never split (they are parquet's unit of reading).
ROWS_PER_PART = 200_000


def plan_parts(uri: str, rows_per_part: int = ROWS_PER_PART) -> list[tuple[int, int]]:
    """[first, stop) row-group ranges of about `rows_per_part` rows, from the footer only.

    Deterministic (a function of the file alone, not of the number of workers), so keys, ordinals
    and bytes are the same whether a file is read whole or in parts.
    """
    import pyarrow.parquet as pq
    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as fh:
        meta = pq.ParquetFile(fh).metadata
    parts, first, rows = [], 0, 0
    for rg in range(meta.num_row_groups):
        rows += meta.row_group(rg).num_rows
        if rows >= rows_per_part:
            parts.append((first, rg + 1))
            first, rows = rg + 1, 0
    if first < meta.num_row_groups or not parts:
        parts.append((first, meta.num_row_groups))
    return parts


def read_parquet(spec: SourceSpec, uri: str, source_index: int, file_index: int,
                 row_groups: tuple[int, int] | None = None) -> Iterator[dict]:
    """Every row of the file, or of the row groups [first, stop) (numbered as in the whole file)."""
    seen: set[str] = set()
    memo = ReferenceMemo()   # each distinct image path of this read once
    yield from parquet_rows(spec, uri, source_index, file_index, row_groups, 1024,
                            lambda records, row_index: _batch_rows(spec, uri, records, row_index, seen,
                                                                   source_index, file_index, memo))


def parquet_rows(spec: SourceSpec, uri: str, source_index: int, file_index: int,
                 row_groups: tuple[int, int] | None, batch_rows: int,
                 rows_of: Callable[[list[dict], int], Iterator[dict]]) -> Iterator[dict]:
    """The rows `rows_of(records, first row index)` makes of each batch of the file's row groups [first,
    stop): an unreadable file is one bad row, a damaged row group costs only its rows (guarded_batches).
    Every parquet reader (records, documents) reads its files through here."""
    import pyarrow.parquet as pq
    with open_timed(uri, spec.read_timeout_s) as fh:
        try:
            pf = pq.ParquetFile(fh)
        except Exception as exc:  # noqa: BLE001 — arrow raises ArrowInvalid/OSError for garbage
            yield bad_row(spec, posixpath.basename(uri), R.make_ordinal(source_index, file_index, 0),
                          {"uri": uri}, unreadable("unreadable_parquet", exc))
            return
        first, stop = row_groups or (0, pf.metadata.num_row_groups)
        for row_index, batch in guarded_batches(pf, batch_rows, range(first, stop)):
            if isinstance(batch, BaseException):
                yield rest_unreadable(spec, uri, source_index, file_index, row_index, batch)
            else:
                yield from rows_of(batch.to_pylist(), row_index)


def rest_unreadable(spec: SourceSpec, uri: str, source_index: int, file_index: int, row_index: int,
                    exc: BaseException) -> dict:
    """The one quarantined row standing for the rows of a row group from `row_index` on, which a
    damaged page made unreadable (named by file and row, so two damaged row groups never share a key)."""
    return bad_row(spec, f"{posixpath.basename(uri)}@row{row_index}", R.make_ordinal(source_index, file_index, row_index),
                   {"uri": uri, "row": row_index}, BadSample("unreadable_parquet", str(exc), R.QUARANTINED))


def read_parquet_tables(spec: SourceSpec, uri: str, source_index: int, file_index: int,
                        row_groups: tuple[int, int] | None = None, rows_per_table: int = 4096) -> Iterator[pa.Table]:
    """The records as conformed tables: column by column for a metadata-only file
    (curate.readers.parquet_columns), else from ``read_parquet``'s rows."""
    opened = open_plain(spec, uri)
    if opened is None:
        yield from R.row_tables(read_parquet(spec, uri, source_index, file_index, row_groups), rows_per_table)
        return
    fh, pf = opened
    memo, root = ReferenceMemo(), spec.image_root or posixpath.dirname(uri)
    with fh:
        def row_path(table: pa.Table, first_row: int, seen: set[str]) -> pa.Table:
            return R.rows_to_table(list(_batch_rows(spec, uri, table.to_pylist(), first_row, seen,
                                                    source_index, file_index, memo)))

        def broken(first_row: int, exc: BaseException) -> pa.Table:
            return R.rows_to_table([rest_unreadable(spec, uri, source_index, file_index, first_row, exc)])

        def image_cells(values: list[Any]) -> list[Any]:
            return [_image_cell(spec, uri, root, v, memo) for v in values]
        yield from column_tables(spec, uri, source_index, file_index, pf, row_groups or (0, pf.metadata.num_row_groups),
                                 row_path, broken, rows_per_table, image_cells)


def _image_cell(spec: SourceSpec, uri: str, root: str, value: Any, memo: ReferenceMemo) -> Any:
    """One image-path cell as the row path sees it: None, the image references, or its BadSample."""
    try:
        return _image_field(spec, uri, root, value, -1, memo)   # a path: the row number is not used
    except BadSample as bad:
        return bad


def _batch_rows(spec: SourceSpec, uri: str, records: list[dict], row_index: int, seen: set[str],
                source_index: int, file_index: int, memo: ReferenceMemo | None = None) -> Iterator[dict]:
    root = spec.image_root or posixpath.dirname(uri)
    for rec in records:
        ordinal = R.make_ordinal(source_index, file_index, row_index)
        raw_key = rec.get(spec.key_column) if spec.key_column else None
        key = str(raw_key) if raw_key is not None else str(row_index)
        prov = {"uri": uri, "row": row_index}
        try:
            if key in seen:   # across parts, ingest's whole-run duplicate check finds it
                raise BadSample("duplicate_key", f"{key} appears twice in {uri}", R.REJECTED)
            seen.add(key)
            yield make_row(spec, key, ordinal, prov, **_parquet_fields(spec, uri, root, rec, row_index, memo))
        except BadSample as bad:
            yield bad_row(spec, key, ordinal, prov, bad)
        row_index += 1


def json_safe(value: Any) -> Any:
    """Arrow's Python values as JSON values, faithfully (see the module docstring)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadSample("invalid_metadata", "non-finite number in metadata", R.REJECTED)
        return value
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise BadSample("invalid_metadata", f"non-finite decimal {value}", R.REJECTED)
        return str(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):   # an Arrow map
            return {str(k): json_safe(v) for k, v in value}
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    raise BadSample("invalid_metadata", f"value of type {type(value).__name__} has no JSON form", R.REJECTED)


def _image_field(spec: SourceSpec, uri: str, root: str, image: Any, row_index: int,
                 memo: ReferenceMemo | None = None) -> list[dict] | None:
    if isinstance(image, dict) and ("bytes" in image or "path" in image):
        image = image.get("bytes") or image.get("path")
    if image is None:
        return None
    if isinstance(image, (bytes, bytearray)):
        return [image_ref_from_bytes(bytes(image), uri, I.parquet_member(row_index, spec.image_column), -1)]
    if isinstance(image, str) and image:
        return [referenced_image(spec, root, image, memo)]
    raise BadSample("image:unsupported_value",
                    f"column {spec.image_column!r} holds {type(image).__name__}; expected bytes, a path or "
                    f"{{bytes, path}}", R.REJECTED)


def _parquet_fields(spec: SourceSpec, uri: str, root: str, rec: dict, row_index: int,
                    memo: ReferenceMemo | None = None) -> dict:
    fields: dict[str, Any] = {}
    images = _image_field(spec, uri, root, rec.get(spec.image_column), row_index, memo)
    if images is not None:
        fields["images"] = images
    if rec.get("conversations") is not None:
        fields["conversations"] = normalize_conversations(rec["conversations"])
    text = rec.get(spec.text_column)
    if text is not None and not isinstance(text, str):
        raise BadSample("invalid_text", f"column {spec.text_column} is {type(text).__name__}", R.REJECTED)
    if text is None and "conversations" not in fields:
        raise BadSample("missing_text", f"no {spec.text_column!r} and no conversations", R.REJECTED)
    fields["text"] = text
    skip = {spec.image_column, spec.text_column, spec.key_column, "conversations"}
    meta = json_safe({k: v for k, v in rec.items() if k not in skip and not isinstance(v, (bytes, bytearray))})
    fields["meta"] = R.dumps_meta(meta or None)
    if isinstance(rec.get("category"), str):
        fields["category"] = rec["category"]
    return fields
