"""LLaVA JSONL records read column by column (issue 31: conversation records at metadata speed): the
same records as ``curate.readers.jsonl.read_llava`` — keys, ordinals, provenance, metadata JSON,
statuses, reasons and details — at a fraction of the CPU, because ``json.loads`` and a dict per
record is most of what ingesting a billion text-only conversations costs.

A file is read in blocks of whole lines (``curate.readers.jsonl_blocks``). A block goes through
Arrow's JSON reader only when its result is provably the row path's; any other block is tried again
in pieces, and a piece declined in turn goes through the row path, line by line, sharing the task's
duplicate-id set and image memo. A block is declined
when its bytes hold what the two parsers read differently (``plain_block``: surrogate escapes,
invalid UTF-8, a byte-order mark, a bare carriage return; an explicit ``null`` where a column has
a null, found by reading the lines holding the bytes ``null`` with ``json.loads``; NaN/Inf where a
column is a float), when Arrow refuses it (duplicate keys in an object, a line
that is not an object, mixed types in a column, bad syntax: the row path names the error), when a
line does not start with ``{`` and end with ``}`` or Arrow's row count differs from its non-blank
lines, and when its columns hold what ``curate.readers.jsonl_fields`` does not model: video
fields, nested metadata, an ``id`` that is neither text nor an integer, a float metadata value
with no fraction (``1.0`` and ``1`` are one double to Arrow, a float and an int to Python), turns
whose role or content is not text, nesting deeper than the row path allows. Image paths are read
as the row path reads them (``referenced_image``, the task's memo), row by row for the rows that
get that far. Date-like text, which Arrow's inference makes timestamps, is read again with those
fields as text. Gzip files are read the same way through their decompressor (a stream cut short
keeps what the row path keeps); JSON arrays go through the row path.
"""
from __future__ import annotations

import io
import json
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from curate.base import records as R
from curate.readers.compression import DECOMPRESS_ERRORS, is_gzip, open_decompressed
from curate.readers.jsonl import (LlavaTask, is_array, iter_lines, llava_rows, read_llava, referenced_image,
                                  strict_json)
from curate.readers.jsonl_blocks import (BLOCK_BYTES, line_blocks, may_hold_non_finite, may_hold_nulls, may_hold_tags,
                                         plain_block)
from curate.readers.jsonl_fields import (PLACEHOLDERS, NOT_META, has_float, holds_nulls, image_values,
                                         insert_placeholders, meta_json, modelled, reads_explicit_null, turns)
from curate.readers.sources import BadSample, SourceSpec, shard_label
from curate.readers.timed_io import open_timed


def read_llava_tables(spec: SourceSpec, uri: str, source_index: int, file_index: int,
                      part: tuple[int, int, int] | None = None, rows_per_table: int = 4096,
                      block_bytes: int = BLOCK_BYTES) -> Iterator[pa.Table]:
    """The records of a LLaVA file or JSONL byte range (``read_llava``'s), as conformed tables."""
    with open_timed(uri, spec.read_timeout_s) as fh:
        try:
            compressed = is_gzip(fh)
            by_rows = (part is None and is_array(open_decompressed(fh))) or spec.max_images_per_record < 0
        except DECOMPRESS_ERRORS:
            by_rows = True   # the row path records a stream that breaks in its first bytes
    if by_rows:
        yield from R.row_tables(read_llava(spec, uri, source_index, file_index, part), rows_per_table)
        return
    task = LlavaTask(spec, uri, source_index, file_index)
    columns = ColumnBlocks(task)
    start, stop, first_line = part if part is not None else (0, None, 0)
    last = first_line   # the line of the last record: the row path names the unread rest after it
    pending: list[tuple[int, object]] = []   # records the row path read, not yet in a table
    with open_timed(uri, spec.read_timeout_s) as raw:
        fh = open_decompressed(raw) if compressed else raw
        for kind, line, item in line_blocks(fh, start, stop, first_line, block_bytes, compressed):
            if kind != "block":
                if kind == "broken":
                    reason = "truncated_file" if isinstance(item, EOFError) else "unreadable_file"
                    line, item = last + 1, BadSample(reason, f"{uri}: from line {last + 1} on: "
                                                             f"{type(item).__name__}: {item}", R.QUARANTINED)
                pending.append((line, item))
                last = line
                continue
            if pending:
                yield R.rows_to_table(list(llava_rows(task, iter(pending), True)))
                pending = []
            for out in _block_tables(columns, item, line, rows_per_table):
                if out.num_rows:
                    last = (out.column(R.ORDINAL)[-1].as_py() & ((1 << 31) - 1)) + 1
                yield out
    if pending:
        yield R.rows_to_table(list(llava_rows(task, iter(pending), True)))


# A declined block of at least this many bytes is tried again in this many pieces (once): what made
# it decline (a null, a line Arrow refuses, a column whose type changes) is usually in a few lines.
SPLIT_MIN_BYTES = 64 << 10
SPLIT_PIECES = 16


def _block_tables(columns: "ColumnBlocks", block: bytes, line: int, rows_per_table: int,
                  split: bool = True) -> Iterator[pa.Table]:
    """The records of a block of whole lines: column by column, else its pieces, else by the row path."""
    table = columns.table(block, line) if plain_block(block) else None
    if table is not None:
        for lo in range(0, table.num_rows, rows_per_table):
            yield table.slice(lo, rows_per_table)
    elif split and len(block) >= SPLIT_MIN_BYTES:
        for piece, piece_line in _pieces(block, line, SPLIT_PIECES):
            yield from _block_tables(columns, piece, piece_line, rows_per_table, split=False)
    else:
        records = iter_lines(io.BytesIO(block), first_line=line)
        yield from R.row_tables(llava_rows(columns.task, records, True), rows_per_table)


def _pieces(block: bytes, line: int, count: int) -> Iterator[tuple[bytes, int]]:
    """About `count` pieces of whole lines of a block, each with the number of lines before it."""
    start = 0
    for k in range(1, count + 1):
        stop = len(block) if k == count else block.find(b"\n", max(start, len(block) * k // count - 1)) + 1
        if stop <= start:
            continue
        yield block[start:stop], line
        line += block.count(b"\n", start, stop)
        start = stop


class ColumnBlocks:
    """The column path's records of one task's blocks."""

    def __init__(self, task: LlavaTask):
        spec, uri = task.spec, task.uri
        self.task = task
        self.prefix = f"{spec.name}/" + (f"{shard_label(spec.path, uri)}/" if spec.key_prefix == "shard" else "")
        self.uri_json = json.dumps(uri, ensure_ascii=False)

    def table(self, block: bytes, lines_before: int) -> pa.Table | None:
        """The records of a block of whole lines, or None where only the row path is exact."""
        lines = _record_lines(block)
        if lines is None:
            return None
        if not len(lines):
            return R.empty_table()
        table = _read_json(block)
        if table is None:
            return None   # the row path names what is wrong with which line
        if _has_timestamps(table.schema):   # Arrow took date-like text for timestamps: read it as the text it is
            table = _read_json(block, _texts_for_timestamps(table.schema))
            if table is None:
                return None
        if table.num_rows != len(lines) or not modelled(table.schema):
            return None
        if has_float(table.schema) and may_hold_non_finite(block):
            return None
        if holds_nulls(table) and may_hold_nulls(block) and not _nulls_are_missing(block):
            return None
        return self._records(table, lines + lines_before + 1, block)

    def _records(self, table: pa.Table, line: np.ndarray, block: bytes) -> pa.Table | None:
        """The rows of a block's table, with the row path's checks in its order: duplicate id,
        conversations, image count, placeholders, image references, text size."""
        task, spec = self.task, self.task.spec
        n = table.num_rows
        names = table.column_names
        meta = meta_json(table.select([c for c in names if c not in NOT_META]))
        if meta is None:
            return None
        line_text = pa.array(line).cast(pa.string())
        keys = table.column("id").combine_chunks().cast(pa.string()) if "id" in names else pa.nulls(n, pa.string())
        if keys.null_count:   # no id: the row path's "{file}-{line}"
            keys = pc.coalesce(keys, pc.binary_join_element_wise(f"{task.file_index}-", line_text, ""))
        key_list = keys.to_pylist()
        duplicate = _duplicates(task.seen, key_list)
        values, lengths, invalid, detail, content_bytes, tags = turns(
            table.column("conversations") if "conversations" in names else None, n, may_hold_tags(block, PLACEHOLDERS))
        images = image_values(table)
        count = np.zeros(n, np.int64) if images is None else np.array([len(v) for v in images], dtype=np.int64)
        too_many = count > spec.max_images_per_record
        videos, placeholders = tags["<video>"] > 0, tags["<image>"]
        insert = (count > 0) & (placeholders == 0)   # images without placeholders: put before the first user turn
        mismatch = (placeholders != count) & ~insert
        refused: dict[int, BadSample] = {}
        refs: list[list[dict]] = [[]] * n
        for i in np.flatnonzero(~(duplicate | invalid | too_many | videos | mismatch) & (count > 0)).tolist():
            try:   # read in row order, each distinct path once (the task's memo, shared with the row path)
                refs[i] = [referenced_image(spec, task.root, v, task.memo) for v in images[i]]
            except BadSample as bad:
                refused[i] = bad
        unread = np.zeros(n, dtype=bool)
        unread[list(refused)] = True
        too_long = content_bytes + np.where(insert, count * len("<image>\n"), 0) > spec.max_text_bytes
        checks = [(duplicate, "duplicate_key"), (invalid, "invalid_conversations"), (too_many, "too_many_images"),
                  (videos, "video_placeholder_mismatch"), (mismatch, "image_placeholder_mismatch"),
                  (unread, None), (too_long, "text_too_long")]
        bad = np.zeros(n, dtype=bool)
        reason = np.full(n, None, dtype=object)
        for mask, name in checks:
            first = mask & ~bad
            reason[first] = name
            bad |= mask
        status = np.where(bad, R.REJECTED, R.KEPT).astype(object)
        said = {"duplicate_key": lambda i: f"id {key_list[i]} appears twice in {task.uri}"[:500],
                "invalid_conversations": lambda i: detail[i],
                "too_many_images": lambda i: f"{count[i]} image references > max_images_per_record="
                                             f"{spec.max_images_per_record}",
                "video_placeholder_mismatch": lambda i: f"{tags['<video>'][i]} <video> tags for 0 videos",
                "image_placeholder_mismatch": lambda i: f"{placeholders[i]} <image> tags for {count[i]} images",
                "text_too_long": lambda i: f"over {spec.max_text_bytes} bytes of text (max_text_bytes)"}
        details = np.full(n, None, dtype=object)
        for i in np.flatnonzero(bad).tolist():
            if i in refused and reason[i] is None:   # the image's own verdict (quarantined when unreadable)
                status[i], reason[i], details[i] = refused[i].status, refused[i].reason, refused[i].detail[:500] or None
            else:
                details[i] = said[reason[i]](i)
        keep = pa.array(~bad)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = insert_placeholders(values, offsets[:-1], lengths, np.flatnonzero(insert & ~bad), count)
        conversations = pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(bad)).cast(pa.list_(R.TURN))
        category = pa.repeat(spec.category, n)
        if "category" in names and pa.types.is_string(table.schema.field("category").type):
            category = pc.if_else(keep, pc.fill_null(table.column("category"), spec.category), category)
        rows = line - 1
        ordinal = (task.source_index << 55) | (task.file_index << 31) | rows
        if (rows >= 1 << 31).any() or task.file_index >= 1 << 24 or task.source_index >= 1 << 8:
            R.make_ordinal(task.source_index, task.file_index, int(rows[-1]))   # raises, naming the overflow
        image_type = R.BASE_SCHEMA.field("images").type
        columns = {
            "key": pc.binary_join_element_wise(self.prefix, keys, ""),
            "source": pa.repeat(spec.name, n),
            "category": category,
            "images": _empty_lists(n, image_type) if images is None else
            pa.array([r if k else [] for r, k in zip(refs, (~bad).tolist())], image_type),
            "videos": _empty_lists(n, R.BASE_SCHEMA.field("videos").type),
            "conversations": conversations,
            "meta": pc.if_else(keep, meta, pa.scalar(None, pa.string())),
            "provenance": pc.binary_join_element_wise('{"line":', line_text, f',"uri":{self.uri_json}}}', ""),
            R.ORDINAL: pa.array(ordinal, pa.int64()),
            R.STATUS: pa.array(status, pa.string()),
            R.REASON: pa.array(reason, pa.string()),
            R.DETAIL: pa.array(details, pa.string()),
        }
        return R.conform(pa.table(columns), R.BASE_SCHEMA)


def _nulls_are_missing(block: bytes) -> bool:
    """Whether no record of the block holds an explicit null where a missing field is assumed: the
    lines with the bytes ``null`` (found by a scan) are read by ``json.loads`` and looked at."""
    ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
    starts = np.concatenate([[0], ends[:-1] + 1])
    hits, at = [], block.find(b"null")
    while at >= 0:
        hits.append(at)
        at = block.find(b"null", at + 4)
    for index in np.unique(np.searchsorted(ends, np.array(hits, dtype=np.int64))).tolist():
        try:
            rec = strict_json(block[starts[index]:ends[index]])
        except ValueError:
            return False
        if reads_explicit_null(rec):
            return False
    return True


def _read_json(block: bytes, schema: pa.Schema | None = None) -> pa.Table | None:
    """Arrow's table of a block, as one Arrow block (one schema for all its lines), or None."""
    try:
        return pj.read_json(io.BytesIO(block), read_options=pj.ReadOptions(use_threads=False, block_size=len(block) + 1),
                            parse_options=pj.ParseOptions(explicit_schema=schema))
    except (pa.ArrowException, ValueError):
        return None


def _texts_for(t: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(t):
        return pa.string()
    if pa.types.is_list(t):
        return pa.list_(_texts_for(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _texts_for(f.type)) for f in t])
    return t


def _has_timestamps(schema: pa.Schema) -> bool:
    return any(_texts_for(f.type) != f.type for f in schema)


def _texts_for_timestamps(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, _texts_for(f.type)) for f in schema])


def _duplicates(seen: set[str], keys: list[str]) -> np.ndarray:
    """Which keys the task has seen before (earlier blocks, or earlier in this one), adding the rest:
    the row path's in-task check, in its order; set operations in C when there is none."""
    fresh = set(keys)
    if len(fresh) == len(keys) and seen.isdisjoint(fresh):
        seen |= fresh
        return np.zeros(len(keys), dtype=bool)
    duplicate = np.zeros(len(keys), dtype=bool)
    for i, k in enumerate(keys):
        if k in seen:
            duplicate[i] = True
        else:
            seen.add(k)
    return duplicate


def _empty_lists(n: int, type_: pa.ListType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], type_.value_type))


def _record_lines(block: bytes) -> np.ndarray | None:
    """Index (in the block) of each non-blank line, or None when a non-blank line does not start
    with ``{`` and end with ``}`` (then ``\\r``): each of those is one object or an error to Arrow."""
    data = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(data == 10)
    starts = np.concatenate([[0], ends[:-1] + 1])
    stops = ends - ((ends > starts) & (data[np.maximum(ends - 1, 0)] == 13))   # without a "\r" before "\n"
    filled = stops > starts
    if not filled.any():
        return np.zeros(0, dtype=np.int64)
    if not ((data[starts[filled]] == ord("{")).all() and (data[stops[filled] - 1] == ord("}")).all()):
        return None
    return np.flatnonzero(filled)
