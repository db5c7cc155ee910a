"""Conversation columns of parquet normalised column by column: the column path's share of
``curate.readers.jsonl.normalize_conversations`` (issue 31: conversation records at metadata speed).

A ``list<struct<from|role: string, value|content: string, ...>>`` column (LLaVA ``from/value`` or
``role/content`` turns; other struct fields are ignored, as the row path ignores them) gives, per
row, the turns with their roles mapped through ``ROLE_ALIASES``, whether the row path would refuse
them (``invalid_conversations``, with its detail), and the UTF-8 bytes of their contents (for the
``max_text_bytes`` check). The row path reads a turn's role as ``str(t.get("from", t.get("role")))``
lower-cased: with a ``from`` field the ``role`` field is never read, and a null role is the text
"none" (unknown). Roles that are not ASCII are left to the row path (Python's ``str.lower`` and
Arrow's differ outside ASCII); ``parquet_columns`` then reads that batch row by row.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import records as R
from curate.readers.jsonl import ROLE_ALIASES

_ALIAS_KEYS = pa.array(sorted(ROLE_ALIASES), pa.string())
_ALIAS_VALUES = pa.array([ROLE_ALIASES[k] for k in sorted(ROLE_ALIASES)], pa.string())


def turn_fields(column_type: pa.DataType) -> tuple[str, str] | None:
    """(role field, content field) of a conversations column this module models, else None."""
    if not pa.types.is_list(column_type) or not pa.types.is_struct(column_type.value_type):
        return None
    struct = column_type.value_type
    names = [struct.field(i).name for i in range(struct.num_fields)]
    if len(set(names)) != len(names):
        return None   # duplicate field names: a Python dict keeps one of them
    role = "from" if "from" in names else "role" if "role" in names else None
    content = "value" if "value" in names else "content" if "content" in names else None
    if role is None or content is None:
        return None
    if not (pa.types.is_string(struct.field(role).type) and pa.types.is_string(struct.field(content).type)):
        return None
    return role, content


@dataclass
class Turns:
    """Normalised turns of a batch: `values` (TURN structs, row after row) with `lengths` turns a row,
    `present` rows with a conversations value, `invalid` rows the row path refuses (and `detail`)."""
    values: pa.StructArray
    lengths: np.ndarray
    present: np.ndarray
    invalid: np.ndarray
    detail: list[str | None]
    content_bytes: np.ndarray

    def lists(self, keep: np.ndarray) -> pa.Array:
        """list<TURN> per row: the turns where `keep`, null elsewhere."""
        show = keep & self.present & ~self.invalid
        offsets = np.zeros(len(self.lengths) + 1, dtype=np.int32)
        np.cumsum(self.lengths, out=offsets[1:])
        lists = pa.ListArray.from_arrays(pa.array(offsets), self.values, mask=pa.array(~show))
        return lists.cast(pa.list_(R.TURN))


def normalized_turns(column: pa.Array | pa.ChunkedArray, fields: tuple[str, str]) -> Turns | None:
    """The turns of a conversations column (see the module docstring); None when a role is not ASCII."""
    conv = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(conv)
    present = conv.is_valid().to_numpy(zero_copy_only=False)
    lengths = np.asarray(pc.fill_null(pc.list_value_length(conv), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    flat = pc.list_flatten(conv)
    turn_ok = flat.is_valid().to_numpy(zero_copy_only=False) if len(flat) else np.zeros(0, bool)
    role = pc.struct_field(flat, fields[0]) if len(flat) else pa.array([], pa.string())
    content = pc.struct_field(flat, fields[1]) if len(flat) else pa.array([], pa.string())
    if len(role) and not pc.all(pc.fill_null(pc.string_is_ascii(role), True)).as_py():
        return None
    mapped, invalid, detail, content_bytes = judge_turns(role, content, lengths, present, turn_ok)
    values = pa.StructArray.from_arrays([mapped, content], names=["role", "content"])
    return Turns(values, lengths, present, invalid, detail, content_bytes)


def judge_turns(role: pa.Array, content: pa.Array, lengths: np.ndarray, present: np.ndarray, turn_ok: np.ndarray
                ) -> tuple[pa.Array, np.ndarray, list[str | None], np.ndarray]:
    """The row path's verdict on flat turns (`role`, `content`: one entry a turn; `lengths`: turns a
    row; `present`: rows that have a conversations value; `turn_ok`: turns that are objects), for the
    parquet and the JSONL column paths alike: (roles mapped through ``ROLE_ALIASES``, invalid rows,
    their ``invalid_conversations`` details, UTF-8 bytes of a row's contents). A role is known when it
    is ASCII and its lower case is an alias (Python's ``str.lower`` maps no other text onto one)."""
    n = len(lengths)
    parent = np.repeat(np.arange(n, dtype=np.int64), lengths)
    alias = pc.index_in(pc.ascii_lower(role), value_set=_ALIAS_KEYS)
    known = pc.fill_null(pc.and_(pc.string_is_ascii(role), pc.is_valid(alias)), False)
    good = turn_ok & known.to_numpy(zero_copy_only=False) & content.is_valid().to_numpy(zero_copy_only=False)
    invalid = present & (lengths == 0)
    detail: list[str | None] = [None] * n
    for row in np.flatnonzero(invalid).tolist():
        detail[row] = "conversations must be a non-empty list"
    bad = np.flatnonzero(~good)
    if len(bad):
        rows, first = np.unique(parent[bad], return_index=True)   # the first bad turn of each row
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        for row, at in zip(rows.tolist(), bad[first].tolist()):
            i = at - int(starts[row])
            detail[row] = f"turn {i} is not an object" if not turn_ok[at] else \
                f"turn {i}: unknown role or non-text content"
        invalid[rows] = True
    sizes = np.asarray(pc.fill_null(pc.binary_length(content), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    content_bytes = np.bincount(parent, weights=sizes, minlength=n).astype(np.int64) if len(sizes) else \
        np.zeros(n, dtype=np.int64)
    return pc.take(_ALIAS_VALUES, alias), invalid, detail, content_bytes
