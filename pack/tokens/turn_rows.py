"""Sequence lengths of plain conversation rows, column by column (issue 31: conversations at
metadata speed).

``count_rows`` laid every conversation out with ``render`` in Python, one row at a time. A chat
conversation without images, videos or ``<image>``/``<video>`` placeholders has a fixed layout:

    [<|im_start|> "system\\n{system prompt}" <|im_end|> "\\n"]      unless the first turn is a system turn
    <|im_start|> "{role}\\n{content}" <|im_end|> "\\n"              for every turn

so its length is two special tokens and one ``"\\n"`` piece a turn, the system block's constant, and
the tokens of each ``role + "\\n" + content`` piece — built with Arrow and counted in the batch's one
call of the tokenizer's ``TextCounter``, exactly the pieces ``render`` makes (``render``: a null or
empty role is ``user``, a null content is empty). Rows with a null turn, media or placeholders, and
the plain template, stay with ``render``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pack.tokens.template import Template


def count_turn_rows(rows: np.ndarray, conversations: pa.Array | pa.ChunkedArray, media: np.ndarray,
                    template: Template, encode_len: Callable[[str], int],
                    has_placeholder: Callable[[pa.Array], np.ndarray], num: np.ndarray, pending) -> np.ndarray:
    """Count the rows of `rows` this module models (see the module docstring): their special tokens
    and constant pieces into `num`, their turn pieces into `pending` (``batch._PendingText``).
    `media`: per row of the batch, whether it has images or videos. Returns which of `rows` it counted."""
    done = np.zeros(len(rows), dtype=bool)
    if not rows.size or template.kind != "chat" or pa.types.is_null(conversations.type):
        return done
    conv = conversations.combine_chunks() if isinstance(conversations, pa.ChunkedArray) else conversations
    conv = conv.take(pa.array(rows, pa.int64()))
    lengths = np.asarray(pc.fill_null(pc.list_value_length(conv), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    flat = pc.list_flatten(conv)
    if len(flat) == 0:
        return done
    parent = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    role = pc.fill_null(pc.struct_field(flat, "role"), "").cast(pa.large_string())
    role = pc.if_else(pc.equal(pc.binary_length(role), 0), pa.scalar("user", pa.large_string()), role)
    content = pc.fill_null(pc.struct_field(flat, "content"), "").cast(pa.large_string())
    unusual = ~flat.is_valid().to_numpy(zero_copy_only=False) | has_placeholder(content)
    done = (lengths > 0) & ~media[rows] & (np.bincount(parent, weights=unusual, minlength=len(rows)) == 0)
    if not done.any():
        return done
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    counted = np.flatnonzero(done)
    per_turn = 2 + encode_len("\n")   # <|im_start|>, <|im_end|> and the "\n" piece after it
    extra = np.zeros(len(counted), dtype=np.int64)
    if template.system_prompt is not None:
        first_role = role.take(pa.array(starts[counted], pa.int64()))
        system_block = 2 + encode_len("system\n" + template.system_prompt) + encode_len("\n")
        extra = np.where(np.asarray(pc.not_equal(first_role, "system").to_numpy(zero_copy_only=False), dtype=bool),
                         system_block, 0)
    num[rows[counted]] += lengths[counted] * per_turn + extra
    turns = np.flatnonzero(done[parent])
    at = pa.array(turns, pa.int64())
    pieces = pc.binary_join_element_wise(role.take(at), content.take(at), pa.scalar("\n", pa.large_string()))
    pending.add(pieces, rows[parent[turns]])
    return done
