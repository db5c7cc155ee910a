"""What the column path for LLaVA JSONL (``curate.readers.jsonl_columns``) makes of Arrow's columns of
one block, rule by rule the row path's (``curate.readers.jsonl``): which columns it reproduces
exactly (``modelled``), the turns with their roles and the row path's ``invalid_conversations``
details (``turns``), the placeholders put before the first user turn (``insert_placeholders``), the
image references of a row (``image_values``) and the metadata JSON (``meta_json``).

Without ``null`` in a block, a null in Arrow's columns is a missing field, which is what the row path
sees: a turn's role is ``from``, else ``role``; its content ``value``, else ``content``; a record's
images ``image``, else ``images``. A role is known when it is ASCII and its lower case is one of
``ROLE_ALIASES`` (Python's ``str.lower`` maps no non-ASCII text onto an alias; Arrow's
``utf8_lower`` maps "ASSİSTANT" onto one, so it is not used).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import records as R
from curate.readers.jsonl import MAX_JSON_DEPTH
from curate.readers.parquet_turns import judge_turns

PLACEHOLDERS = ("<image>", "<video>")
IMAGE_FIELDS = ("image", "images")
VIDEO_FIELDS = ("video", "videos")
NOT_META = {"conversations", "id", *IMAGE_FIELDS, *VIDEO_FIELDS}
_TURN_FIELDS = ("from", "role", "value", "content")


def _nesting(t: pa.DataType) -> int:
    """Levels of JSON containers a value of Arrow type `t` was read from."""
    if pa.types.is_list(t):
        return 1 + _nesting(t.value_type)
    if pa.types.is_struct(t):
        return 1 + max((_nesting(t.field(i).type) for i in range(t.num_fields)), default=0)
    return 0


def has_float(schema: pa.Schema) -> bool:
    def floats(t: pa.DataType) -> bool:
        if pa.types.is_list(t):
            return floats(t.value_type)
        if pa.types.is_struct(t):
            return any(floats(t.field(i).type) for i in range(t.num_fields))
        return pa.types.is_floating(t)
    return any(floats(field.type) for field in schema)


def holds_nulls(table: pa.Table) -> bool:
    """Whether a column the records are made of has a null (a missing field, or an explicit null),
    in its rows, its list elements or the fields of its turns."""
    for name in table.column_names:
        col = table.column(name)
        if col.null_count:
            return True
        if pa.types.is_list(col.type):
            flat = pc.list_flatten(col)
            if flat.null_count:
                return True
            if name == "conversations" and any(pc.struct_field(flat, f).null_count for f in _TURN_FIELDS
                                               if flat.type.get_field_index(f) >= 0):
                return True
    return False


def reads_explicit_null(rec: Any) -> bool:
    """Whether a record (``json.loads``') holds an explicit null where the column path would take a
    null for a missing field: a top-level value, an image path, a turn, or a turn's role or content."""
    if not isinstance(rec, dict) or any(v is None for v in rec.values()):
        return True
    if any(isinstance(rec.get(f), list) and any(v is None for v in rec[f]) for f in IMAGE_FIELDS):
        return True
    turns_ = rec.get("conversations")
    return isinstance(turns_, list) and any(
        not isinstance(t, dict) or any(f in t and t[f] is None for f in _TURN_FIELDS) for t in turns_)


def modelled(schema: pa.Schema) -> bool:
    """Whether every column is one the column path reproduces exactly: turns of text roles and
    contents, text or integer ids, image paths as text or lists of text, scalar metadata; no video
    fields, nothing nested deeper than the row path allows."""
    for field in schema:
        t = field.type
        if field.name in VIDEO_FIELDS or 1 + _nesting(t) > MAX_JSON_DEPTH:
            return False
        if field.name == "id":
            ok = pa.types.is_string(t) or pa.types.is_int64(t)
        elif field.name in IMAGE_FIELDS:
            ok = pa.types.is_string(t) or (pa.types.is_list(t) and pa.types.is_string(t.value_type))
        elif field.name == "conversations":
            ok = pa.types.is_list(t) and pa.types.is_struct(t.value_type) and all(
                pa.types.is_string(t.value_type.field(f).type) for f in _TURN_FIELDS
                if t.value_type.get_field_index(f) >= 0)
        else:
            ok = pa.types.is_string(t) or pa.types.is_int64(t) or pa.types.is_boolean(t) or pa.types.is_float64(t)
        if not ok:
            return False
    return True


def image_values(table: pa.Table) -> list[list[Any]] | None:
    """Each row's image values (``image``, else ``images``; a text is one value), or None when the
    block has neither field."""
    found = [c for c in IMAGE_FIELDS if c in table.column_names]
    if not found:
        return None
    per_field = []
    for name in IMAGE_FIELDS:
        if name not in found:
            per_field.append([None] * table.num_rows)
            continue
        values = table.column(name).to_pylist()
        per_field.append(values if pa.types.is_list(table.schema.field(name).type) else
                         [None if v is None else [v] for v in values])
    return [a if a is not None else b if b is not None else [] for a, b in zip(*per_field)]


def insert_placeholders(turns_: pa.StructArray, starts: np.ndarray, lengths: np.ndarray, rows: np.ndarray,
                        count: np.ndarray) -> pa.StructArray:
    """The turns with ``<image>\\n`` x count[row] put before the first user turn's content (else the
    first turn's) of each of `rows`: LLaVA's convention for images without placeholders."""
    if not len(rows):
        return turns_
    role, content = turns_.field("role"), turns_.field("content")
    is_user = pc.fill_null(pc.equal(role, "user"), False).to_numpy(zero_copy_only=False)
    at = []
    for r in rows.tolist():
        s, e = int(starts[r]), int(starts[r] + lengths[r])
        users = np.flatnonzero(is_user[s:e])
        at.append(s + (int(users[0]) if len(users) else 0))
    old = pc.take(content, pa.array(at, pa.int64())).to_pylist()
    new = ["<image>\n" * int(count[r]) + text for r, text in zip(rows.tolist(), old)]
    mask = np.zeros(len(content), dtype=bool)
    mask[at] = True
    content = pc.replace_with_mask(content, pa.array(mask), pa.array(new, pa.string()))
    return pa.StructArray.from_arrays([role, content], names=["role", "content"])


def meta_json(table: pa.Table) -> pa.Array | None:
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


def turns(conv: pa.ChunkedArray | None, n: int, tags_in_block: set[str] = frozenset(PLACEHOLDERS)):
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
    mapped, invalid, detail, content_bytes = judge_turns(role, content, lengths, np.ones(n, bool),
                                                         np.ones(len(role), bool))
    parent = np.repeat(np.arange(n, dtype=np.int64), lengths)

    def per_row(per_turn: pa.Array) -> np.ndarray:   # a row's sum of a per-turn count
        counts = np.asarray(pc.fill_null(per_turn, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
        return np.bincount(parent, weights=counts, minlength=n).astype(np.int64) if len(counts) else \
            np.zeros(n, np.int64)

    tags = {tag: per_row(pc.count_substring(content, tag)) if tag in tags_in_block else np.zeros(n, np.int64)
            for tag in PLACEHOLDERS}
    values = pa.StructArray.from_arrays([mapped, content], names=["role", "content"])
    return values, lengths, invalid, detail, content_bytes, tags
