"""``obelics``: interleaved documents as OBELICS and the HF datasets layout store them.

One row (a parquet row, or a JSON/JSONL record) per document, with aligned lists ``texts`` and
``images`` (at each position exactly one of the two is non-null; curate.readers.documents). An image
entry is a URL or a path (resolved and read like a LLaVA image: inside ``image_root``, remote hosts
only from ``allowed_hosts``; curate.readers.refs), raw bytes (parquet: the reference points at the
cell, ``row=N;column=images;item=K``), or an HF ``{bytes, path}`` struct. Every other column becomes
the document's metadata (OBELICS' ``metadata`` / ``general_metadata`` JSON strings stay as given).

Keys: the ``key_column`` (default ``key``) or an ``id`` field, else the row (parquet) or line number.
The parquet path reads one row group at a time: a damaged one costs only its own rows
(curate.readers.parquet_columns.guarded_batches).
"""
from __future__ import annotations

import posixpath
from typing import Any, Iterator

from curate.base import records as R
from curate.media import images as I
from curate.readers.documents import aligned_parts, document_fields
from curate.readers.jsonl import _starts_array, iter_json_records, referenced_image
from curate.readers.parquet import json_safe, parquet_rows
from curate.readers.refs import ReferenceMemo
from curate.readers.sources import BadSample, SourceSpec, admit_record, bad_row, image_ref_from_bytes, make_row
from curate.readers.timed_io import open_timed

TEXTS, IMAGES = "texts", "images"
PARQUET_MAGIC = b"PAR1"


def is_parquet(uri: str, read_timeout_s: float) -> bool:
    """Parquet is recognised by its magic bytes, whatever the file is called."""
    with open_timed(uri, read_timeout_s) as fh:
        return fh.read(4) == PARQUET_MAGIC


def read_obelics(spec: SourceSpec, uri: str, source_index: int, file_index: int,
                 part: tuple[int, int, int] | None = None) -> Iterator[dict]:
    """Every document of one parquet or JSON/JSONL file, or of one part of it as ingest plans large
    files (curate.readers.read.plan_file_parts): parquet row groups [start, stop), or a JSONL byte range."""
    if is_parquet(uri, spec.read_timeout_s):
        yield from _parquet_documents(spec, uri, source_index, file_index, None if part is None else part[:2])
    else:
        yield from _json_documents(spec, uri, source_index, file_index, part)


def _json_documents(spec: SourceSpec, uri: str, source_index: int, file_index: int,
                    part: tuple[int, int, int] | None) -> Iterator[dict]:
    seen: set[str] = set()
    reader = _DocumentReader(spec, uri)
    is_lines = part is not None or not _starts_array(uri, spec.read_timeout_s)
    for line, rec in iter_json_records(uri, part, spec.read_timeout_s):
        row = line - 1 if is_lines else line   # JSONL: line numbers from 1; an array: indices from 0
        yield reader.row(rec, line, R.make_ordinal(source_index, file_index, row), {"uri": uri, "line": line},
                         f"{file_index}-{line}", seen, binary_member=None)


def _parquet_documents(spec: SourceSpec, uri: str, source_index: int, file_index: int,
                       row_groups: tuple[int, int] | None = None) -> Iterator[dict]:
    seen: set[str] = set()
    reader = _DocumentReader(spec, uri)

    def rows_of(records: list[dict], first_row: int) -> Iterator[dict]:
        for row_index, rec in enumerate(records, first_row):
            yield reader.row(rec, row_index, R.make_ordinal(source_index, file_index, row_index),
                             {"uri": uri, "row": row_index}, str(row_index), seen, binary_member=row_index)
    yield from parquet_rows(spec, uri, source_index, file_index, row_groups, 256, rows_of)


class _DocumentReader:
    """One file's documents: resolves image entries (each distinct path once per file) and builds rows."""

    def __init__(self, spec: SourceSpec, uri: str):
        self.spec, self.uri = spec, uri
        self.root = spec.image_root or posixpath.dirname(uri)
        self.memo = ReferenceMemo()

    def row(self, rec: Any, number: int, ordinal: int, prov: dict, fallback_key: str, seen: set[str],
            binary_member: int | None) -> dict:
        spec = self.spec
        raw_key = rec.get(spec.key_column) if isinstance(rec, dict) and spec.key_column else None
        if raw_key is None and isinstance(rec, dict):
            raw_key = rec.get("id")
        key = str(raw_key) if isinstance(raw_key, (str, int)) and not isinstance(raw_key, bool) else fallback_key
        try:
            admit_record(rec, key, seen, self.uri)
            parts = aligned_parts(rec.get(TEXTS), rec.get(IMAGES))
            skip = {TEXTS, IMAGES, spec.key_column, "id"}
            meta = json_safe({k: v for k, v in rec.items() if k not in skip and not isinstance(v, (bytes, bytearray))})

            slots = [i for i, v in enumerate(rec[IMAGES]) if v is not None]   # each image's index in the list

            def resolve(position: int, entry: Any) -> dict:
                return self.image(entry, binary_member, slots[position])
            return make_row(spec, key, ordinal, prov, **document_fields(spec, parts, resolve, meta))
        except BadSample as bad:
            row = bad_row(spec, key, ordinal, prov, bad)
            row["category"] = "interleaved"
            return row

    def image(self, entry: Any, row_index: int | None, item: int) -> dict:
        """One image entry as a reference (BadSample: the image cannot be used)."""
        if isinstance(entry, dict) and ("bytes" in entry or "path" in entry):
            entry = entry.get("bytes") or entry.get("path")
        if isinstance(entry, (bytes, bytearray)):
            if row_index is None:
                raise BadSample("image:unsupported_value", "raw bytes in a JSON record", R.REJECTED)
            member = f"{I.parquet_member(row_index, IMAGES)};item={item}"
            return image_ref_from_bytes(bytes(entry), self.uri, member, -1)
        return referenced_image(self.spec, self.root, entry, self.memo)
