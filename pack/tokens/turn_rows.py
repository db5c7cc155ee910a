"""Sequence lengths of plain conversation rows, column by column (issue 31: conversations at
metadata speed).

``count_rows`` laid every conversation out with ``render`` in Python, one row at a time. A chat
conversation whose images and videos each stand at a placeholder of their own has a fixed layout:

    [<|im_start|> "system\\n{system prompt}" <|im_end|> "\\n"]      unless the first turn is a system turn
    <|im_start|> "{role}\\n{content}" <|im_end|> "\\n"              for every turn

where each ``<image>`` / ``<video>`` of a content becomes ``<|vision_start|>``, its pads and
``<|vision_end|>``, cutting the text piece there. So its length is two special tokens and one
``"\\n"`` piece a turn, the system block's constant, two markers and the pads of every image and
video, and the tokens of the text pieces of ``role + "\\n" + content`` cut at placeholders — built
with Arrow and counted in the batch's one call of the tokenizer's ``TextCounter``, exactly the pieces
``render`` makes (``render``: a null or empty role is ``user``, a null content is empty; an empty
piece counts 0). Rows with a null turn, a placeholder in a role, media without placeholders (placed
in front of the first user turn) or placeholders that do not match the media (an error ``render``
names), and the plain template, stay with ``render``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pack.tokens.template import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, Template

_PLACEHOLDERS = f"{IMAGE_PLACEHOLDER}|{VIDEO_PLACEHOLDER}"


def count_turn_rows(rows: np.ndarray, conversations: pa.Array | pa.ChunkedArray, media: MediaCounts,
                    template: Template, encode_len: Callable[[str], int], num: np.ndarray, pending) -> np.ndarray:
    """Count the rows of `rows` this module models (see the module docstring): their special tokens,
    vision tokens and constant pieces into `num`, their text pieces into `pending`
    (``batch._PendingText``). Returns which of `rows` it counted."""
    done = np.zeros(len(rows), dtype=bool)
    if not rows.size or template.kind != "chat" or pa.types.is_null(conversations.type):
        return done
    conv = conversations.combine_chunks() if isinstance(conversations, pa.ChunkedArray) else conversations
    conv = conv.take(pa.array(rows, pa.int64()))
    lengths = np.asarray(pc.fill_null(pc.list_value_length(conv), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    flat = pc.list_flatten(conv)
    if len(flat) == 0:
        return done
    n = len(rows)
    parent = np.repeat(np.arange(n, dtype=np.int64), lengths)
    role = pc.fill_null(pc.struct_field(flat, "role"), "").cast(pa.large_string())
    role = pc.if_else(pc.equal(pc.binary_length(role), 0), pa.scalar("user", pa.large_string()), role)
    content = pc.fill_null(pc.struct_field(flat, "content"), "").cast(pa.large_string())
    images, videos = (_per_row(pc.count_substring(content, tag), parent, n) for tag in (IMAGE_PLACEHOLDER,
                                                                                          VIDEO_PLACEHOLDER))
    unusual = ~flat.is_valid().to_numpy(zero_copy_only=False) | \
        np.asarray(pc.match_substring_regex(role, _PLACEHOLDERS).to_numpy(zero_copy_only=False), dtype=bool)
    # every image and video at a placeholder of its own (none placed in front, no mismatch to report)
    done = (lengths > 0) & (images == media.images[rows]) & (videos == media.videos[rows]) & \
        (np.bincount(parent, weights=unusual, minlength=n) == 0)
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
    at_rows = rows[counted]   # vision: <|vision_start|>, the pads, <|vision_end|> per image and video
    vision = 2 * (images[counted] + videos[counted]) + media.image_tokens[at_rows] + media.video_tokens[at_rows]
    num[at_rows] += lengths[counted] * per_turn + extra + vision
    turns = np.flatnonzero(done[parent])
    at = pa.array(turns, pa.int64())
    pieces = pc.binary_join_element_wise(role.take(at), content.take(at), pa.scalar("\n", pa.large_string()))
    owners = rows[parent[turns]]
    if images[counted].any() or videos[counted].any():   # text between placeholders: pieces of their own
        split = pc.split_pattern_regex(pieces, _PLACEHOLDERS)
        owners = np.repeat(owners, np.asarray(pc.list_value_length(split).to_numpy(zero_copy_only=False), np.int64))
        pieces = pc.list_flatten(split)
    pending.add(pieces, owners)
    return done


@dataclass
class MediaCounts:
    """Per row of the batch: images and videos, and their token sums."""
    images: np.ndarray
    videos: np.ndarray
    image_tokens: np.ndarray
    video_tokens: np.ndarray


def _per_row(values: pa.Array, parent: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(parent, weights=np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64),
                       minlength=n).astype(np.int64)
