"""Sequence lengths of whole batches of records without building id lists (``count_rows``).

Caption rows take a vectorised path (one variable text piece per row, the rest of the layout a
per-layout constant), plain chat conversations another (``pack.tokens.turn_rows``); other rows
(placeholders, interleaved documents) are laid out by ``render`` and all their text pieces are counted in
one batched call of the tokenizer's ``TextCounter``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pack.tokens.template import (IMAGE_PAD, IMAGE_PLACEHOLDER, VIDEO_PAD, VIDEO_PLACEHOLDER, Piece,
                                  PlaceholderMismatch, Template, render)
from pack.tokens.text_counter import _to_large_string
from pack.tokens.tokenizer import Tokenizer
from pack.tokens.turn_rows import MediaCounts, count_turn_rows

@dataclass
class RowCounts:
    """Per-row results of ``count_rows``; `error` holds a reason for rows that cannot be laid out."""
    num_tokens: np.ndarray
    text_tokens: np.ndarray
    error: list[str | None] = field(default_factory=list)
    detail: list[str | None] = field(default_factory=list)


def _caption_structure(has_images: bool, has_videos: bool, template: Template) -> tuple[list[Piece], str, list[Piece]]:
    """Layout of a placeholder-free caption record as (pieces before, prefix of the caption's text
    piece, pieces after); the caption's piece is prefix + caption. Shared by ``render`` (through
    the same rules) and the vectorised path, and checked against it in tests."""
    sentinel = "\x00CAPTION\x00"
    row = {"text": sentinel, "conversations": None}
    pieces = render(row, [1] if has_images else [], [1] if has_videos else [], template)
    for i, p in enumerate(pieces):
        if isinstance(p, str) and sentinel in p:
            prefix, suffix = p.split(sentinel)
            if suffix:
                raise AssertionError("caption text must end its piece")
            return pieces[:i], prefix, pieces[i + 1:]
    raise AssertionError("caption piece not found")


class _PendingText:
    """Text pieces to count in one batched tokenizer call, each owned by a row."""

    def __init__(self) -> None:
        self.texts: list[pa.Array] = []
        self.owners: list[np.ndarray] = []

    def add(self, texts: pa.Array, owners: np.ndarray) -> None:
        self.texts.append(texts)
        self.owners.append(owners)

    def per_row(self, tokenizer: Tokenizer, n: int) -> np.ndarray:
        if not self.texts:
            return np.zeros(n, dtype=np.int64)
        counts = tokenizer.count(pa.concat_arrays(self.texts))
        return np.bincount(np.concatenate(self.owners), weights=counts, minlength=n).astype(np.int64)


def count_rows(table: pa.Table, tokenizer: Tokenizer, image_counts: pa.ListArray | None = None,
               video_counts: pa.ListArray | None = None, template: Template = Template()) -> RowCounts:
    """Sequence length of every row without building id lists.

    Caption rows (no conversations, no placeholders) take a vectorised path: their one variable text
    piece (e.g. ``"assistant\\n" + caption``) is counted by ``TextCounter`` and the rest of the layout
    is a per-layout constant. Other rows are laid out by ``render`` and all their text pieces are
    counted in the same batched call. `image_counts` / `video_counts`: list<int> per row, aligned
    with the ``images`` / ``videos`` columns (None: no images/videos).
    """
    n = table.num_rows
    img_lists = _list_or_empty(image_counts, n)
    vid_lists = _list_or_empty(video_counts, n)
    img_sum = _list_sums(img_lists)
    vid_sum = _list_sums(vid_lists)
    text = _to_large_string(table.column("text") if "text" in table.column_names else pa.nulls(n, pa.string()))
    if "conversations" in table.column_names:
        conv_len = pc.fill_null(pc.list_value_length(table.column("conversations")), 0)
        conv_len = np.asarray(conv_len.to_numpy(zero_copy_only=False), dtype=np.int64)
    else:
        conv_len = np.zeros(n, dtype=np.int64)
    simple = (conv_len == 0) & ~_contains_placeholder(text)
    if "segments" in table.column_names:     # interleaved documents are laid out by render
        simple &= np.asarray(pc.is_null(table.column("segments")).to_numpy(zero_copy_only=False), dtype=bool)

    num = np.zeros(n, dtype=np.int64)
    errors: list[str | None] = [None] * n
    details: list[str | None] = [None] * n
    pending = _PendingText()
    _count_caption_rows(np.flatnonzero(simple), text, img_lists, vid_lists, tokenizer, template, num, pending)
    general = np.flatnonzero(~simple)
    if "conversations" in table.column_names:   # plain chat conversations: column by column (turn_rows)
        media = MediaCounts(_list_lengths(img_lists), _list_lengths(vid_lists), img_sum, vid_sum)
        general = general[~count_turn_rows(general, table.column("conversations"), media, template,
                                           lambda s: len(tokenizer.encode(s)), num, pending)]
    _count_general_rows(general, table, img_lists, vid_lists, template, num, pending, errors, details)
    num += pending.per_row(tokenizer, n)
    text_tokens = num - img_sum - vid_sum
    for i, e in enumerate(errors):
        if e is not None:
            num[i] = 0
            text_tokens[i] = 0
    return RowCounts(num, text_tokens, errors, details)


def _count_caption_rows(idx_all: np.ndarray, text: pa.Array, img_lists: pa.ListArray, vid_lists: pa.ListArray,
                        tokenizer: Tokenizer, template: Template, num: np.ndarray, pending: _PendingText) -> None:
    """Rows without conversations or placeholders: a constant per layout (with/without images,
    videos) plus one variable text piece each, queued in `pending`."""
    if not idx_all.size:
        return
    img_n, vid_n = _list_lengths(img_lists), _list_lengths(vid_lists)
    img_sum, vid_sum = _list_sums(img_lists), _list_sums(vid_lists)
    for hi in (False, True):
        for hv in (False, True):
            sel = idx_all[((img_n[idx_all] > 0) == hi) & ((vid_n[idx_all] > 0) == hv)]
            if not sel.size:
                continue
            before, prefix, after = _caption_structure(hi, hv, template)
            const = _pieces_count(before + after, tokenizer, exclude_pads=True)
            # pads: structure used one image / video of 1 token each; the real counts replace them
            num[sel] += const + img_sum[sel] + vid_sum[sel] + 2 * (img_n[sel] - hi) + 2 * (vid_n[sel] - hv)
            var = text.take(pa.array(sel))
            if prefix:
                var = pc.binary_join_element_wise(pa.scalar(prefix, pa.large_string()), var,
                                                  pa.scalar("", pa.large_string()))
            pending.add(var, sel)


def _count_general_rows(other: np.ndarray, table: pa.Table, img_lists: pa.ListArray, vid_lists: pa.ListArray,
                        template: Template, num: np.ndarray, pending: _PendingText,
                        errors: list[str | None], details: list[str | None]) -> None:
    """Rows laid out by ``render``: special tokens counted here, text pieces queued in `pending`;
    a placeholder mismatch is recorded in `errors` / `details`."""
    if not other.size:
        return
    other_idx = pa.array(other)
    sub = table.take(other_idx)
    rows = sub.select([c for c in ("text", "conversations", "segments") if c in sub.column_names]).to_pylist()
    other_img = img_lists.take(other_idx).to_pylist()
    other_vid = vid_lists.take(other_idx).to_pylist()
    pieces_text: list[str] = []
    piece_owner: list[int] = []
    for i, row, imgs, vids in zip(other.tolist(), rows, other_img, other_vid):
        try:
            pieces = render(row, imgs or [], vids or [], template)
        except PlaceholderMismatch as exc:
            errors[i], details[i] = PlaceholderMismatch.reason, str(exc)
            continue
        for p in pieces:
            if isinstance(p, str):
                pieces_text.append(p)
                piece_owner.append(i)
            else:
                num[i] += p[1]
    if pieces_text:
        pending.add(pa.array(pieces_text, type=pa.large_string()), np.asarray(piece_owner, dtype=np.int64))


def _contains_placeholder(text: pa.Array) -> np.ndarray:
    """Rows whose text contains ``<image>`` or ``<video>``: a byte scan for '<' (rare in captions), then
    a look at the bytes after each one — much cheaper than two substring searches."""
    n = len(text)
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset: text.offset + n + 1]
    begin, end = int(offsets[0]), int(offsets[-1])
    out = np.zeros(n, dtype=bool)
    if end == begin:
        return out
    data = np.frombuffer(text.buffers()[2], dtype=np.uint8)
    lt = np.flatnonzero(data[begin:end] == 0x3C) + begin
    if lt.size == 0:
        return out
    for ph in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
        pat = np.frombuffer(ph.encode(), dtype=np.uint8)
        cand = lt[lt + pat.size <= end]
        starts = cand[np.all(data[cand[:, None] + np.arange(pat.size)] == pat, axis=1)]
        # the placeholder must lie inside one string: its row owns both its first and last byte
        row = np.searchsorted(offsets, starts, side="right") - 1
        inside = starts + pat.size <= offsets[row + 1]
        out[row[inside]] = True
    return out


def _pieces_count(pieces: list[Piece], tokenizer: Tokenizer, exclude_pads: bool = False) -> int:
    total = 0
    for p in pieces:
        if isinstance(p, str):
            total += len(tokenizer.encode(p))
        elif not (exclude_pads and p[0] in (IMAGE_PAD, VIDEO_PAD)):
            total += p[1]
    return total


def _list_or_empty(lists: pa.ListArray | pa.ChunkedArray | None, n: int) -> pa.ListArray:
    if lists is None:
        return pa.array([[]] * n, type=pa.list_(pa.int64()))
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    if len(lists) != n:
        raise ValueError(f"{len(lists)} token lists for {n} rows")
    return lists


def _list_lengths(lists: pa.ListArray) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False), dtype=np.int64)


def _list_sums(lists: pa.ListArray) -> np.ndarray:
    n = len(lists)
    flat = pc.list_flatten(lists)
    if len(flat) == 0:
        return np.zeros(n, dtype=np.int64)
    parents = pc.list_parent_indices(lists).to_numpy()
    values = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.int64)
    return np.bincount(parents, weights=values, minlength=n).astype(np.int64)
