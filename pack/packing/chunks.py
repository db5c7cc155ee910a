"""Chunk rows of split documents (``overlong: split``): the pack stage's side and the shards stage's.

The pack stage is a global step that answers per row and may add rows as repeats of a kept row (the
runner's ``_repeat_source``). So a split document's row becomes chunk 0 and chunks 1..k-1 are added
after it (``expand_documents``); all carry ``doc_key``, ``chunk_index`` and ``chunk_segments`` (the
chunk as SEGMENT entries into the whole document, pack.packing.split), and the document's words are not
copied through the plan. ``materialize_chunks`` turns such rows into ordinary documents where the
shards stage reads them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from curate.base import records as R
from curate.documents.record import IMAGE_ALIGNED_COLUMNS
from pack.packing.split import ChunkCounter, Unsplittable, chunk_view, split_document

CHUNK_COLUMNS = {"doc_key": pa.string(), "chunk_index": pa.int32(), "chunk_segments": pa.list_(R.SEGMENT)}


def chunk_key(doc_key: str, index: int) -> str:
    """Chunk 0 keeps the document's key (its row carries chunk 0); chunk n > 0 is ``{key}#c{n}``."""
    return doc_key if index == 0 else f"{doc_key}#c{index}"


def chunk_ordinal(ordinal: int, index: int) -> int:
    """The ``_ordinal`` of chunk `index` > 0 of the document with `ordinal`: negative (ingest ordinals
    are >= 0), from (ordinal, index) alone, like the mixture's repeats but with its own tag."""
    h = hashlib.blake2b(f"{ordinal}#c{index}".encode(), digest_size=8).digest()
    return -1 - (int.from_bytes(h, "little") & ((1 << 62) - 1))


def materialize_chunks(table: pa.Table) -> pa.Table:
    """Rows with ``chunk_segments`` turned into the chunk's own document: ``text``, ``images``,
    ``segments``, every image-aligned column (IMAGE_ALIGNED_COLUMNS) and ``text_tokens``; other rows
    unchanged. Deterministic and per row, so any worker can run it on any batch."""
    if "chunk_segments" not in table.column_names or table.column("chunk_segments").null_count == table.num_rows:
        return table
    is_chunk = pc.is_valid(table.column("chunk_segments")).to_pylist()
    aligned = [c for c in IMAGE_ALIGNED_COLUMNS if c in table.column_names]
    cols = {c: table.column(c).to_pylist() for c in ("text", "segments", "chunk_segments", *aligned)}
    num = table.column("num_tokens").to_pylist()
    videos = table.column("video_tokens").to_pylist() if "video_tokens" in table.column_names else [None] * len(num)
    text_tokens = table.column("text_tokens").to_pylist() if "text_tokens" in table.column_names else None
    for i, chunk in enumerate(is_chunk):
        if not chunk:
            continue
        text, segs, picked = chunk_view(cols["text"][i] or "", cols["chunk_segments"][i])
        cols["text"][i], cols["segments"][i] = text, segs
        for c in aligned:
            if cols[c][i] is not None:
                cols[c][i] = [cols[c][i][j] for j in picked]
        if text_tokens is not None:
            text_tokens[i] = int(num[i]) - sum(cols["image_tokens"][i] or []) - sum(videos[i] or []) \
                if "image_tokens" in cols else text_tokens[i]
    out = table
    updates = [(c, cols[c]) for c in ("text", "segments", *aligned)]
    if text_tokens is not None:
        updates.append(("text_tokens", text_tokens))
    for name, values in updates:
        idx = out.schema.get_field_index(name)
        out = out.set_column(idx, out.schema.field(idx), pa.array(values, type=out.schema.field(idx).type))
    return out


REPEAT_SOURCE = "_repeat_source"      # the runner's column for rows a global step adds (curate.base.inline)


@dataclass
class SplitResult:
    """The partition with chunk rows, and what the split did."""
    table: pa.Table                   # rows in _ordinal order, each split document followed by its chunks 1..k-1
    reasons: dict[int, tuple[str, str]]  # row -> (reason, detail) for documents that could not be split
    documents: int = 0                # documents split
    chunks: int = 0                   # chunks they became (chunk 0 included)


def expand_documents(t: pa.Table, L: int, counter: Callable[[], ChunkCounter], keep_whole: Sequence[str] = ()
                     ) -> SplitResult:
    """Split every overlong document of `t` (a row with ``segments``, no conversation, no video, its
    category not in `keep_whole`): its row becomes chunk 0 and chunks 1..k-1 are inserted after it as
    rows of their own (``_repeat_source`` = the document's ``_ordinal``, ``key`` / ``_ordinal`` from
    ``chunk_key`` / ``chunk_ordinal``). Every row gets ``doc_key`` / ``chunk_index`` /
    ``chunk_segments`` (null for rows that are not chunks), chunk rows their own ``num_tokens`` and
    ``image_tokens``. Other overlong rows are left for admission (rejected as overlong). `counter` is
    called only when there is a document to split (loading a tokenizer costs a third of a second)."""
    n = t.num_rows
    num = t.column("num_tokens").to_pylist()
    segs = t.column("segments").to_pylist() if "segments" in t.column_names else [None] * n
    conv = t.column("conversations").to_pylist() if "conversations" in t.column_names else [None] * n
    vids = t.column("video_tokens").to_pylist() if "video_tokens" in t.column_names else [None] * n
    cats = t.column("category").to_pylist() if "category" in t.column_names else [None] * n
    whole = set(keep_whole)
    candidates = [i for i in range(n) if num[i] is not None and num[i] > L and segs[i] is not None
                  and not conv[i] and not vids[i] and cats[i] not in whole]
    extra = {REPEAT_SOURCE: pa.nulls(n, pa.int64()), "doc_key": pa.nulls(n, pa.string()),
             "chunk_index": pa.nulls(n, pa.int32()), "chunk_segments": pa.nulls(n, CHUNK_COLUMNS["chunk_segments"])}
    base = t
    for name, arr in extra.items():
        base = base.append_column(name, arr) if name not in base.column_names else base
    result = SplitResult(base, {})
    if not candidates:
        return result
    chunk_counter = counter()
    texts = t.column("text").to_pylist()
    keys = t.column("key").to_pylist()
    ords = t.column(R.ORDINAL).to_pylist()
    img = t.column("image_tokens").to_pylist()
    pieces: list[pa.Table] = []
    prev = 0
    for i in candidates:
        try:
            chunks = split_document(texts[i] or "", segs[i], img[i] or [], L, chunk_counter)
        except Unsplittable as exc:
            result.reasons[i] = (Unsplittable.reason, str(exc))
            continue
        result.documents += 1
        result.chunks += len(chunks)
        rows = base.slice(i, 1).take(pa.array([0] * len(chunks)))
        picked = [chunk_view(texts[i] or "", ch.segments)[2] for ch in chunks]
        cols = {
            "key": [chunk_key(keys[i], j) for j in range(len(chunks))],
            R.ORDINAL: [ords[i]] + [chunk_ordinal(ords[i], j) for j in range(1, len(chunks))],
            REPEAT_SOURCE: [None] + [ords[i]] * (len(chunks) - 1),
            "num_tokens": [ch.num_tokens for ch in chunks],
            "image_tokens": [[img[i][k] for k in p] for p in picked],
            "doc_key": [keys[i]] * len(chunks),
            "chunk_index": list(range(len(chunks))),
            "chunk_segments": [ch.segments for ch in chunks],
        }
        for name, values in cols.items():
            idx = rows.schema.get_field_index(name)
            rows = rows.set_column(idx, rows.schema.field(idx), pa.array(values, type=rows.schema.field(idx).type))
        pieces += [base.slice(prev, i - prev), rows]
        prev = i + 1
    pieces.append(base.slice(prev))
    result.table = pa.concat_tables(pieces)
    # rows moved: the reasons of unsplittable documents follow their row's new index
    moved = {o: j for j, o in enumerate(result.table.column(R.ORDINAL).to_pylist())}
    result.reasons = {moved[ords[i]]: r for i, r in result.reasons.items()}
    return result


def settle_chunks(t: pa.Table, reasons: list[str | None], details: list[str | None],
                  unsplittable: Mapping[int, tuple[str, str]]) -> list[bool]:
    """After admission: unsplittable documents get their reason; a document one of whose chunks is
    rejected (a per-pack image limit) is rejected whole with that chunk's reason, so no chunk of it is
    packed. Returns which rows the plan answers for (the chunk rows of rejected documents are not:
    they never existed for the runner)."""
    for i, (reason, detail) in unsplittable.items():
        reasons[i], details[i] = reason, detail
    n = t.num_rows
    emitted = [True] * n
    doc_key = t.column("doc_key").to_pylist()
    index = t.column("chunk_index").to_pylist()
    start = None
    for i in range(n + 1):
        if i < n and doc_key[i] is not None and index[i] != 0:
            continue
        if start is not None:              # rows start..i-1 are one document's chunks
            bad = next((j for j in range(start, i) if reasons[j] is not None), None)
            if bad is not None:
                reasons[start], details[start] = reasons[bad], f"chunk {bad - start}: {details[bad]}"
                for j in range(start + 1, i):
                    emitted[j] = False
        start = i if i < n and doc_key[i] is not None else None
    return emitted


def with_chunk_columns(decisions: pa.Table, t: pa.Table, emitted: Sequence[bool]) -> pa.Table:
    """The pack decisions with the chunk columns (null where not a chunk) and, where `t` holds chunk
    rows (after ``expand_documents``), the runner's repeat columns for them; rows not `emitted` left out."""
    n = decisions.num_rows
    for name, typ in CHUNK_COLUMNS.items():
        decisions = decisions.append_column(name, t.column(name) if name in t.column_names else pa.nulls(n, typ))
    if REPEAT_SOURCE not in t.column_names or t.column(REPEAT_SOURCE).null_count == n:
        return decisions.filter(pa.array(emitted)) if not all(emitted) else decisions
    source = t.column(REPEAT_SOURCE)
    decisions = decisions.append_column(REPEAT_SOURCE, source)
    decisions = decisions.append_column("key", pc.if_else(pc.is_valid(source), t.column("key"),
                                                          pa.scalar(None, pa.string())))
    return decisions.filter(pa.array(emitted))
