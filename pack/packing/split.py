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
``pack.packing.chunks`` makes the chunk rows and turns them into ordinary documents (their own text,
images, segments and image-aligned columns) where the shards stage reads them.

Why greedy in order: a chunk is a training sample whose attention stops at its end, so nothing is
gained by balancing chunk sizes, and greedy keeps the number of chunks minimal for the boundaries.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from curate.base import records as R
from pack.tokens.template import Template, render
from pack.tokens.tokenizer import Tokenizer

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

    Greedy: units are taken while the estimate (each unit's own tokens, one per paragraph join) fits,
    or, where only the joins' tokens are in doubt, while the exact count fits;
    a paragraph that alone does not fit is cut to fill the chunk's remaining room. Each chunk is then
    counted exactly; if the estimate was short, units go back to the next chunk."""
    overhead = counter.overhead()
    units = deque(_units(text, segments))
    cost = _unit_costs(list(units), text, image_tokens, counter)
    chunks: list[Chunk] = []
    while units:
        current: list[Unit] = []
        estimate, joins = overhead, 0
        while units:
            u = units[0]
            join = 1 if current and current[-1].kind == u.kind == "text" else 0
            if estimate + join + cost[u] <= L:
                current.append(units.popleft())
                estimate, joins = estimate + join + cost[u], joins + join
                continue
            if estimate - joins + cost[u] <= L:      # fits if the joins merge away: count it exactly
                exact = counter.length(text, [v.segment() for v in (*current, u)], image_tokens)
                if exact <= L:
                    current.append(units.popleft())
                    estimate, joins = exact, 0
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
