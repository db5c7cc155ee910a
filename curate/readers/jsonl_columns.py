"""LLaVA JSONL records read column by column (issue 31: conversation records at metadata speed): the
same records as ``curate.readers.jsonl.read_llava`` — keys, ordinals, provenance, metadata JSON,
statuses, reasons and details — at a fraction of the CPU, because ``json.loads`` and a dict per
record is most of what ingesting a billion text-only conversations costs.

A file is read in blocks of whole lines (``curate.readers.jsonl_blocks``). A block goes through
Arrow's JSON reader only when its result is provably the row path's; any other block goes through
the row path, line by line, sharing the task's duplicate-id set and image memo. A block is declined
when its bytes hold what the two parsers read differently (``plain_block``: ``null``, NaN, surrogate
escapes, invalid UTF-8...), when Arrow refuses it (duplicate keys in an object, a line that is not
an object, mixed types in a column, bad syntax: the row path names the error), when a line does not
start with ``{`` and end with ``}`` or Arrow's row count differs from its non-blank lines, and when
its columns hold what this module does not model: image or video fields, nested metadata, an
``id`` that is neither text nor an integer, a float metadata value with no fraction (``1.0`` and
``1`` are one double to Arrow, a float and an int to Python), turns whose role or content is not
text, nesting deeper than the row path allows. Gzip files are read the same way through their
decompressor (a stream cut short keeps what the row path keeps); JSON arrays go through the row path.

Without ``null`` in a block, a null in Arrow's columns is a missing field, which is what the row path
sees: a turn's role is ``from``, else ``role``; its content ``value``, else ``content``. A role is
known when it is ASCII and its lower case is one of ``ROLE_ALIASES`` (Python's ``str.lower`` maps no
non-ASCII text onto an alias; Arrow's ``utf8_lower`` maps "ASSİSTANT" onto one, so it is not used).
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
from curate.readers.jsonl import MAX_JSON_DEPTH, ROLE_ALIASES, LlavaTask, is_array, iter_lines, llava_rows, read_llava
from curate.readers.jsonl_blocks import (BLOCK_BYTES, line_blocks, may_hold_non_finite, may_hold_nulls, may_hold_tags,
                                         plain_block)
from curate.readers.sources import BadSample, SourceSpec, shard_label
from curate.readers.timed_io import open_timed

MEDIA_FIELDS = ("image", "images", "video", "videos")
PLACEHOLDERS = ("<image>", "<video>")
_NOT_META = {"conversations", "id", *MEDIA_FIELDS}
_ALIAS_KEYS = pa.array(sorted(ROLE_ALIASES), pa.string())
_ALIAS_VALUES = pa.array([ROLE_ALIASES[k] for k in sorted(ROLE_ALIASES)], pa.string())


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
            table = columns.table(item, line) if plain_block(item) else None
            tables = [table.slice(lo, rows_per_table) for lo in range(0, table.num_rows, rows_per_table)] \
                if table is not None else \
                R.row_tables(llava_rows(task, iter_lines(io.BytesIO(item), first_line=line), True), rows_per_table)
            for out in tables:   # the block's records, or the row path's for this block
                if out.num_rows:
                    last = (out.column(R.ORDINAL)[-1].as_py() & ((1 << 31) - 1)) + 1
                yield out
    if pending:
        yield R.rows_to_table(list(llava_rows(task, iter(pending), True)))


def _nesting(t: pa.DataType) -> int:
    """Levels of JSON containers a value of Arrow type `t` was read from."""
    if pa.types.is_list(t):
        return 1 + _nesting(t.value_type)
    if pa.types.is_struct(t):
        return 1 + max((_nesting(t.field(i).type) for i in range(t.num_fields)), default=0)
    return 0


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
        try:
            # one Arrow block for the whole block: one schema inferred from all of its lines
            table = pj.read_json(io.BytesIO(block), read_options=pj.ReadOptions(use_threads=False,
                                                                                block_size=len(block) + 1))
        except (pa.ArrowException, ValueError):
            return None   # the row path names what is wrong with which line
        if table.num_rows != len(lines) or not _modelled(table.schema):
            return None
        if _has_float(table.schema) and may_hold_non_finite(block):
            return None
        if _holds_nulls(table) and may_hold_nulls(block):
            return None
        return self._records(table, lines + lines_before + 1, block)

    def _records(self, table: pa.Table, line: np.ndarray, block: bytes) -> pa.Table | None:
        task, spec = self.task, self.task.spec
        n = table.num_rows
        names = table.column_names
        meta = _meta_json(table.select([c for c in names if c not in _NOT_META]))
        if meta is None:
            return None
        line_text = pa.array(line).cast(pa.string())
        keys = table.column("id").combine_chunks().cast(pa.string()) if "id" in names else pa.nulls(n, pa.string())
        if keys.null_count:   # no id: the row path's "{file}-{line}"
            keys = pc.coalesce(keys, pc.binary_join_element_wise(f"{task.file_index}-", line_text, ""))
        key_list = keys.to_pylist()
        duplicate = _duplicates(task.seen, key_list)
        values, lengths, invalid, detail, content_bytes, tags = _turns(
            table.column("conversations") if "conversations" in names else None, n, may_hold_tags(block, PLACEHOLDERS))
        too_long = content_bytes > spec.max_text_bytes
        videos, images = tags["<video>"] > 0, tags["<image>"] > 0   # placeholders for no media: refused
        bad = duplicate | invalid | videos | images | too_long
        reason = np.select([duplicate, invalid, videos, images, too_long],
                           ["duplicate_key", "invalid_conversations", "video_placeholder_mismatch",
                            "image_placeholder_mismatch", "text_too_long"], None)
        said = {"duplicate_key": lambda i: f"id {key_list[i]} appears twice in {task.uri}"[:500],
                "invalid_conversations": lambda i: detail[i],
                "video_placeholder_mismatch": lambda i: f"{tags['<video>'][i]} <video> tags for 0 videos",
                "image_placeholder_mismatch": lambda i: f"{tags['<image>'][i]} <image> tags for 0 images",
                "text_too_long": lambda i: f"over {spec.max_text_bytes} bytes of text (max_text_bytes)"}
        details = np.full(n, None, dtype=object)
        for i in np.flatnonzero(bad).tolist():
            details[i] = said[reason[i]](i)
        keep = pa.array(~bad)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        conversations = pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(bad)).cast(pa.list_(R.TURN))
        category = pa.repeat(spec.category, n)
        if "category" in names and pa.types.is_string(table.schema.field("category").type):
            category = pc.if_else(keep, pc.fill_null(table.column("category"), spec.category), category)
        rows = line - 1
        ordinal = (task.source_index << 55) | (task.file_index << 31) | rows
        if (rows >= 1 << 31).any() or task.file_index >= 1 << 24 or task.source_index >= 1 << 8:
            R.make_ordinal(task.source_index, task.file_index, int(rows[-1]))   # raises, naming the overflow
        columns = {
            "key": pc.binary_join_element_wise(self.prefix, keys, ""),
            "source": pa.repeat(spec.name, n),
            "category": category,
            "images": _empty_lists(n, R.BASE_SCHEMA.field("images").type),
            "videos": _empty_lists(n, R.BASE_SCHEMA.field("videos").type),
            "conversations": conversations,
            "meta": pc.if_else(keep, meta, pa.scalar(None, pa.string())),
            "provenance": pc.binary_join_element_wise('{"line":', line_text, f',"uri":{self.uri_json}}}', ""),
            R.ORDINAL: pa.array(ordinal, pa.int64()),
            R.STATUS: pc.if_else(keep, R.KEPT, R.REJECTED),
            R.REASON: pa.array(reason, pa.string()),
            R.DETAIL: pa.array(details, pa.string()),
        }
        return R.conform(pa.table(columns), R.BASE_SCHEMA)


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


def _has_float(schema: pa.Schema) -> bool:
    def floats(t: pa.DataType) -> bool:
        if pa.types.is_list(t):
            return floats(t.value_type)
        if pa.types.is_struct(t):
            return any(floats(t.field(i).type) for i in range(t.num_fields))
        return pa.types.is_floating(t)
    return any(floats(field.type) for field in schema)


def _holds_nulls(table: pa.Table) -> bool:
    """Whether a column the records are made of has a null (a missing field, or an explicit null)."""
    for name in table.column_names:
        col = table.column(name)
        if col.null_count:
            return True
        if name == "conversations":
            flat = pc.list_flatten(col)
            if flat.null_count or any(pc.struct_field(flat, f).null_count for f in ("from", "role", "value", "content")
                                      if flat.type.get_field_index(f) >= 0):
                return True
    return False


def _modelled(schema: pa.Schema) -> bool:
    """Whether every column is one this module reproduces exactly (see the module docstring)."""
    for field in schema:
        if field.name in MEDIA_FIELDS or 1 + _nesting(field.type) > MAX_JSON_DEPTH:
            return False
        if field.name == "id" and not (pa.types.is_string(field.type) or pa.types.is_int64(field.type)):
            return False
        if field.name == "conversations":
            t = field.type
            if not (pa.types.is_list(t) and pa.types.is_struct(t.value_type)):
                return False
            struct = t.value_type
            for name in ("from", "role", "value", "content"):
                i = struct.get_field_index(name)
                if i >= 0 and not pa.types.is_string(struct.field(i).type):
                    return False
        elif field.name not in _NOT_META and not (pa.types.is_string(field.type) or pa.types.is_int64(field.type)
                                                  or pa.types.is_boolean(field.type)
                                                  or pa.types.is_float64(field.type)):
            return False
    return True


def _meta_json(table: pa.Table) -> pa.Array | None:
    """Each row's metadata JSON (its fields but conversations, id and media; a missing field is
    absent), or None when a float column holds a whole number (``1.0`` or ``1`` in the line?)."""
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_floating(col.type):
            finite = pc.fill_null(pc.is_finite(col), True)
            whole = pc.fill_null(pc.equal(pc.floor(col), col), False)
            if not pc.all(finite).as_py() or pc.any(whole).as_py():
                return None
    if not table.num_columns:
        return pa.nulls(table.num_rows, pa.string())
    dumps = R.dumps_meta
    if not any(table.column(c).null_count for c in table.column_names):
        return pa.array([dumps(row) for row in table.to_pylist()], pa.string())
    return pa.array([dumps({k: v for k, v in row.items() if v is not None} or None) for row in table.to_pylist()],
                    pa.string())


def _turns(conv: pa.ChunkedArray | None, n: int, tags_in_block: set[str] = frozenset(PLACEHOLDERS)):
    """(turn values, turns a row, invalid rows, their details, UTF-8 bytes of a row's contents,
    placeholders a row): the row path's ``normalize_conversations`` over a conversations column
    (None: no row has one). `tags_in_block`: the placeholders a content may hold (the others none does)."""
    if conv is None:
        empty = pa.StructArray.from_arrays([pa.array([], pa.string())] * 2, names=["role", "content"])
        return (empty, np.zeros(n, np.int64), np.ones(n, bool), ["conversations must be a non-empty list"] * n,
                np.zeros(n, np.int64), {tag: np.zeros(n, np.int64) for tag in PLACEHOLDERS})
    conv = conv.combine_chunks()
    lengths = np.asarray(pc.fill_null(pc.list_value_length(conv), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    flat = pc.list_flatten(conv)
    names = {flat.type.field(i).name for i in range(flat.type.num_fields)}

    def first_of(*fields: str) -> pa.Array:   # a turn's field, else the next (missing fields are null)
        present = [pc.struct_field(flat, f) for f in fields if f in names]
        return pa.nulls(len(flat), pa.string()) if not present else \
            present[0] if len(present) == 1 else pc.coalesce(*present)

    role, content = first_of("from", "role"), first_of("value", "content")
    alias = pc.index_in(pc.ascii_lower(role), value_set=_ALIAS_KEYS)
    known = pc.and_(pc.string_is_ascii(role), pc.is_valid(alias))
    good = pc.fill_null(pc.and_(known, pc.is_valid(content)), False).to_numpy(zero_copy_only=False)
    invalid = lengths == 0
    detail: list[str | None] = [None] * n
    for row in np.flatnonzero(invalid).tolist():
        detail[row] = "conversations must be a non-empty list"
    bad = np.flatnonzero(~good)
    if len(bad):
        parent = np.repeat(np.arange(n, dtype=np.int64), lengths)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        rows, first = np.unique(parent[bad], return_index=True)   # the first bad turn of each row
        for row, at in zip(rows.tolist(), bad[first].tolist()):
            detail[row] = f"turn {at - int(starts[row])}: unknown role or non-text content"
        invalid[rows] = True
    mapped = pc.take(_ALIAS_VALUES, alias)
    parent = np.repeat(np.arange(n, dtype=np.int64), lengths)

    def per_row(per_turn: pa.Array) -> np.ndarray:   # a row's sum of a per-turn count
        counts = np.asarray(pc.fill_null(per_turn, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
        return np.bincount(parent, weights=counts, minlength=n).astype(np.int64) if len(counts) else \
            np.zeros(n, np.int64)

    content_bytes = per_row(pc.binary_length(content))
    tags = {tag: per_row(pc.count_substring(content, tag)) if tag in tags_in_block else np.zeros(n, np.int64)
            for tag in PLACEHOLDERS}
    values = pa.StructArray.from_arrays([mapped, content], names=["role", "content"])
    return values, lengths, invalid, detail, content_bytes, tags
