"""Building and editing interleaved documents in the one record schema (curate.base.records).

A document is a row of category ``interleaved``: ``text`` holds its paragraphs joined by
``DOCUMENT_PARAGRAPH_JOIN`` (so text rules and MinHash dedup read documents as they read captions),
``images`` the images still in it, and ``segments`` the order: text segments by character offsets into
``text``, image segments by index into ``images`` plus the position the document gave the image.

Why removal lives here: a per-image rule (a blurred image, a repeated logo) takes one image out of a
document without rejecting the document. Every column aligned with ``images`` must lose the same entry,
the image segments must be renumbered, and the removal must be recorded (``images_removed``) so that
nothing disappears silently. One function does all three, for every stage.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import pyarrow as pa

from curate.base import records as R

# Columns holding one entry per image of the row, in `images` order: removal keeps them aligned.
IMAGE_ALIGNED_COLUMNS = ("images", "image_tokens", "image_facts")


@dataclass(frozen=True)
class Removal:
    """One image to take out of one document: its index in the row's *current* ``images``."""
    image: int
    reason: str
    detail: str | None = None


def build_document(parts: Sequence[str | Mapping[str, Any]]) -> dict[str, Any]:
    """``text``, ``images`` and ``segments`` of a document from its parts in order.

    A part is a paragraph (str) or an image reference (an IMAGE_REF dict). Empty paragraphs are dropped
    (they carry no tokens and would only make empty segments); image positions count every image part.
    """
    paragraphs: list[str] = []
    images: list[Mapping[str, Any]] = []
    segments: list[dict[str, Any]] = []
    cursor = 0
    for part in parts:
        if isinstance(part, str):
            if not part:
                continue
            if paragraphs:
                cursor += len(R.DOCUMENT_PARAGRAPH_JOIN)
            segments.append({"kind": "text", "start": cursor, "end": cursor + len(part), "image": None, "position": None})
            paragraphs.append(part)
            cursor += len(part)
        else:
            segments.append({"kind": "image", "start": None, "end": None, "image": len(images), "position": len(images)})
            images.append(part)
    return {"text": R.DOCUMENT_PARAGRAPH_JOIN.join(paragraphs), "images": images, "segments": segments}


def document_parts(text: str | None, segments: Sequence[Mapping[str, Any]] | None) -> Iterator[tuple[str, Any]]:
    """The document in order: ("text", paragraph) and ("image", index into images)."""
    for seg in segments or ():
        if seg["kind"] == "text":
            yield "text", (text or "")[seg["start"]:seg["end"]]
        else:
            yield "image", seg["image"]


def image_ref_name(ref: Mapping[str, Any] | None) -> str | None:
    """The reference as the document gave it: the tar member, else the path or URL."""
    if ref is None:
        return None
    return ref.get("member") or ref.get("uri")


def remove_images(table: pa.Table, removals: Sequence[Sequence[Removal]], stage: str) -> pa.Table:
    """``table`` with, per row, the listed images taken out of the document and recorded.

    ``removals[i]`` names row i's images to remove by their index in the row's current ``images``. The
    columns in IMAGE_ALIGNED_COLUMNS lose the same entries, image segments are dropped and renumbered,
    and ``images_removed`` gains one entry per removed image (its original position, its reference,
    ``stage``, the reason and detail). Rows with nothing to remove are left as they are.
    """
    if len(removals) != table.num_rows:
        raise ValueError(f"removals for {len(removals)} rows, table has {table.num_rows}")
    if not any(removals):
        return table
    aligned = [c for c in IMAGE_ALIGNED_COLUMNS if c in table.column_names]
    columns = {c: table.column(c).to_pylist() for c in aligned}
    segments = table.column("segments").to_pylist()
    removed_col = table.column("images_removed").to_pylist()
    for row, wanted in enumerate(removals):
        if not wanted:
            continue
        images = columns["images"][row] or []
        drop = {r.image: r for r in wanted}
        bad = [i for i in drop if not 0 <= i < len(images)]
        if bad:
            raise IndexError(f"row {row}: no image {bad} among {len(images)}")
        segs = segments[row]
        position_of = {s["image"]: s["position"] for s in segs or () if s["kind"] == "image"}
        record = list(removed_col[row] or [])
        for i in sorted(drop):
            r = drop[i]
            record.append({"position": position_of.get(i, i), "ref": image_ref_name(images[i]), "stage": stage,
                           "reason": r.reason, "detail": r.detail})
        removed_col[row] = record
        new_index = {}
        for i in range(len(images)):
            if i not in drop:
                new_index[i] = len(new_index)
        for c in aligned:
            values = columns[c][row]
            if values is not None:
                columns[c][row] = [v for i, v in enumerate(values) if i not in drop]
        if segs is not None:
            segments[row] = [dict(s, image=new_index[s["image"]]) if s["kind"] == "image" else s
                             for s in segs if s["kind"] != "image" or s["image"] not in drop]
    out = table
    for name, values in [*columns.items(), ("segments", segments), ("images_removed", removed_col)]:
        idx = out.column_names.index(name)
        out = out.set_column(idx, out.schema.field(idx), pa.array(values, type=out.schema.field(idx).type))
    return out


def removed_image_counts(table: pa.Table, stage: str | None = None) -> Counter:
    """``images_removed[reason]`` of a batch (optionally only removals by ``stage``), for the report."""
    counts: Counter = Counter()
    if "images_removed" not in table.column_names:
        return counts
    for record in table.column("images_removed").to_pylist():
        for r in record or ():
            if stage is None or r["stage"] == stage:
                counts[r["reason"]] += 1
    return counts
