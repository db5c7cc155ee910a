"""``overlong: split``: an interleaved document longer than the context becomes chunks that each fit.

The rule (#25 item 7): cut at segment boundaries — between two paragraphs, before or after an image —,
never inside an image's block (``<|vision_start|>`` + pads + ``<|vision_end|>``), and inside a
paragraph only when that paragraph alone does not fit (then at a token boundary, preferring one that
starts a word). Chunks are filled greedily in document order, so every chunk but the last is as full
as the boundaries allow; each chunk's length is the exact count of its own layout (template turns,
paragraph joins, image blocks), counted with the tokenizer count_tokens used, so the plan and the
trainer's input_ids agree token for token.

A chunk is described by ``chunk_segments``: SEGMENT entries pointing into the *whole* document's
``text`` (character ranges, possibly part of a paragraph) and ``images`` (indices), with each image's
original position. The pack stage writes that description (a global step answers per row and adds
rows as repeats of the document, so the chunk's words are not copied through the plan);
``materialize_chunks`` turns such rows into ordinary documents (their own text, images, segments and
image-aligned columns) where the shards stage reads them.

Why greedy in order: a chunk is a training sample whose attention stops at its end, so nothing is
gained by balancing chunk sizes, and greedy keeps the number of chunks minimal for the boundaries.
"""
from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from curate.base import records as R
from curate.documents.record import IMAGE_ALIGNED_COLUMNS
from pack.tokens.template import Template, render
from pack.tokens.tokenizer import Tokenizer

CHUNK_COLUMNS = {"doc_key": pa.string(), "chunk_index": pa.int32(), "chunk_segments": pa.list_(R.SEGMENT)}


class Unsplittable(ValueError):
    """A document with an image (or a single character of text) whose block alone does not fit."""

    reason = "overlong_images"


@dataclass(frozen=True)
class Unit:
    """A piece of the document that is never cut further: a text range or one image."""
    kind: str            # "text" | "image"
    start: int = 0       # text: character range in the document's text
    end: int = 0
    image: int = -1      # image: index into the document's images
    position: int = -1   # image: its position in the document as read

    def segment(self) -> dict[str, Any]:
        if self.kind == "text":
            return {"kind": "text", "start": self.start, "end": self.end, "image": None, "position": None}
        return {"kind": "image", "start": None, "end": None, "image": self.image, "position": self.position}


@dataclass(frozen=True)
class Chunk:
    segments: list[dict[str, Any]]   # SEGMENT dicts into the whole document
    num_tokens: int


def chunk_view(text: str, segments: Sequence[Mapping[str, Any]]) -> tuple[str, list[dict[str, Any]], list[int]]:
    """(text, segments, image indices into the whole document) of the chunk `segments` describes.

    Text ranges that touch in the document (pieces of one cut paragraph) become one paragraph again;
    other text ranges are paragraphs joined by DOCUMENT_PARAGRAPH_JOIN, as ``build_document`` joins
    them. Image segments keep their original ``position`` and index the chunk's own images.
    """
    out: list[str] = []
    out_segs: list[dict[str, Any]] = []
    picked: list[int] = []
    cursor = 0
    last_end = None
    for s in segments:
        if s["kind"] == "text":
            piece = text[s["start"]:s["end"]]
            if out_segs and out_segs[-1]["kind"] == "text" and last_end == s["start"]:
                out_segs[-1]["end"] += len(piece)       # the next piece of the same paragraph
            else:
                if out:
                    out.append(R.DOCUMENT_PARAGRAPH_JOIN)
                    cursor += len(R.DOCUMENT_PARAGRAPH_JOIN)
                out_segs.append({"kind": "text", "start": cursor, "end": cursor + len(piece), "image": None,
                                 "position": None})
            out.append(piece)
            cursor += len(piece)
            last_end = s["end"]
        else:
            out_segs.append({"kind": "image", "start": None, "end": None, "image": len(picked),
                             "position": s["position"]})
            picked.append(int(s["image"]))
            last_end = None
    return "".join(out), out_segs, picked


class ChunkCounter:
    """Exact sequence length of a document laid out by the template (what count_tokens counts)."""

    def __init__(self, tokenizer: Tokenizer, template: Template):
        self.tokenizer = tokenizer
        self.template = template

    def length(self, text: str, segments: Sequence[Mapping[str, Any]], image_tokens: Sequence[int]) -> int:
        chunk_text, chunk_segs, picked = chunk_view(text, segments)
        row = {"text": chunk_text, "segments": chunk_segs, "conversations": None}
        pieces = render(row, [int(image_tokens[i]) for i in picked], (), self.template)
        texts = [p for p in pieces if isinstance(p, str)]
        special = sum(p[1] for p in pieces if not isinstance(p, str))
        return special + int(self.tokenizer.count(texts).sum()) if texts else special

    def overhead(self) -> int:
        """Tokens of the layout around an empty document (turn markers, system prompt, end of text)."""
        return self.length("", [], [])


CUT_MARGIN = 4   # tokens left free when a paragraph is cut to fill a chunk (a cut piece may encode longer alone)


def split_document(text: str, segments: Sequence[Mapping[str, Any]], image_tokens: Sequence[int], L: int,
                   counter: ChunkCounter) -> list[Chunk]:
    """The document cut into chunks of at most `L` tokens each, in document order, covering every
    character of every paragraph and every image exactly once. Raises Unsplittable when an image's
    block (or one character) does not fit in `L` with the layout around it.

    Greedy: units are taken while the estimate (each unit's own tokens, one per paragraph join) fits;
    a paragraph that alone does not fit is cut to fill the chunk's remaining room. Each chunk is then
    counted exactly; if the estimate was short, units go back to the next chunk."""
    overhead = counter.overhead()
    units = deque(_units(text, segments))
    cost = _unit_costs(list(units), text, image_tokens, counter)
    chunks: list[Chunk] = []
    while units:
        current: list[Unit] = []
        estimate = overhead
        while units:
            u = units[0]
            join = 1 if current else 0
            if estimate + join + cost[u] <= L:
                current.append(units.popleft())
                estimate += join + cost[u]
                continue
            if u.kind == "text" and overhead + cost[u] > L:    # a paragraph too long for any chunk: fill the room
                cut = _cut_head(u, text, counter.tokenizer, L - estimate - join - CUT_MARGIN)
                if cut is not None:
                    head, units[0] = cut
                    cost.update(_unit_costs(cut, text, image_tokens, counter))
                    current.append(head)
                elif not current:
                    current.append(units.popleft())     # counted below, then halved
            elif not current:
                current.append(units.popleft())         # an image that does not fit alone: raises below
            break
        exact = counter.length(text, [u.segment() for u in current], image_tokens)
        while exact > L and len(current) > 1:     # the estimate was short: hand units back
            units.appendleft(current.pop())
            exact = counter.length(text, [u.segment() for u in current], image_tokens)
        if exact <= L:
            chunks.append(Chunk([u.segment() for u in current], exact))
            continue
        alone = current[0]          # one unit that does not fit alone
        if alone.kind == "image" or alone.end - alone.start <= 1:
            what = f"image {alone.position}" if alone.kind == "image" else "one character"
            raise Unsplittable(f"{what} takes {exact} tokens with the layout around it > context_length {L}")
        pieces = _halves(alone, text, counter.tokenizer)
        cost.update(_unit_costs(pieces, text, image_tokens, counter))
        units.extendleft(reversed(pieces))
    return chunks


def _units(text: str, segments: Sequence[Mapping[str, Any]]) -> list[Unit]:
    out = []
    for s in segments:
        if s["kind"] == "text":
            if s["end"] > s["start"]:
                out.append(Unit("text", int(s["start"]), int(s["end"])))
        else:
            position = s["position"] if s["position"] is not None else s["image"]
            out.append(Unit("image", image=int(s["image"]), position=int(position)))
    return out


def _unit_costs(units: Sequence[Unit], text: str, image_tokens: Sequence[int], counter: ChunkCounter
                ) -> dict[Unit, int]:
    """Each unit's own tokens: an image's block, a text range's tokens alone (one batched count)."""
    out = {u: int(image_tokens[u.image]) + 2 for u in units if u.kind == "image"}
    texts = [u for u in units if u.kind == "text"]
    if texts:
        counts = counter.tokenizer.count([text[u.start:u.end] for u in texts])
        out.update({u: int(n) for u, n in zip(texts, counts)})
    return out


def _cut_head(u: Unit, text: str, tokenizer: Tokenizer, max_tokens: int) -> tuple[Unit, Unit] | None:
    """(head, rest) of a text range: the head at most `max_tokens` tokens, cut at a token boundary,
    preferably one that starts a word (whitespace on either side) in the last quarter of the window.
    None when no non-empty head fits."""
    if max_tokens < 1:
        return None
    piece = text[u.start:u.end]
    _, offsets = tokenizer.encode_with_offsets(piece)
    if len(offsets) <= max_tokens:
        return None
    cut = offsets[max_tokens][0]
    for k in range(max_tokens, max(1, 3 * max_tokens // 4) - 1, -1):
        a = offsets[k][0]
        if 0 < a < len(piece) and (piece[a].isspace() or piece[a - 1].isspace()):
            cut = a
            break
    if not 0 < cut < len(piece):
        return None
    return Unit("text", u.start, u.start + cut), Unit("text", u.start + cut, u.end)


def _halves(u: Unit, text: str, tokenizer: Tokenizer) -> list[Unit]:
    """A text range cut in two at its middle token boundary (its middle character when it is one token):
    the fallback that always makes progress."""
    piece = text[u.start:u.end]
    _, offsets = tokenizer.encode_with_offsets(piece)
    starts = sorted({a for a, _ in offsets if 0 < a < len(piece)})
    mid = starts[len(starts) // 2] if starts else len(piece) // 2
    return [Unit("text", u.start, u.start + mid), Unit("text", u.start + mid, u.end)]


# --- chunk rows ------------------------------------------------------------------------------------

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


# --- the pack stage's side: documents to chunk rows ---------------------------------------------------

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
