"""Reading a batch's image bytes for the dedup stages, with bad input turned into named drops — or not
reading them at all, where ``image_filter`` already did and carried what they need (``image_facts``).

Storage failures (missing file, short read) quarantine the row, as everywhere in curate
(``curate.media.decode.read_or_drop``); bytes that do not decode are rejected as ``image:corrupt`` or
``image:too_large_to_decode`` with the decoder's message (``decode_drop``), as in every model stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa

from curate.media import image_facts as F
from curate.media import images as I
from curate.base import Drop
from curate.media.decode import decode_drop, read_or_drop

Reader = Callable[[Mapping[str, Any]], bytes]


def read_rows(batch: pa.Table, wanted: np.ndarray, read: Reader = I.read_image_bytes) -> list[list[bytes] | Drop]:
    """Per row: the encoded bytes of each of its images (in order), or why they could not be read.

    Rows not `wanted` (out of the stage's scope) are not read and get an empty list."""
    images = batch.column("images").to_pylist() if "images" in batch.column_names else [None] * batch.num_rows
    out: list[list[bytes] | Drop] = []
    for refs, want in zip(images, wanted):
        row: list[bytes] | Drop = []
        for ref in (refs or []) if want else []:
            got = read_or_drop(ref, read)
            if isinstance(got, Drop):
                row = got
                break
            row.append(got)
        out.append(row)
    return out


def thumbnails(rows: list[list[bytes] | Drop]) -> tuple[list[list[np.ndarray] | Drop], list[Drop | None]]:
    """Per row: a grey 32x32 thumbnail per image, or the Drop of its first undecodable image."""
    thumbs: list[list[np.ndarray] | Drop] = []
    drops: list[Drop | None] = []
    for row in rows:
        if isinstance(row, Drop):
            thumbs.append(row)
            drops.append(row)
            continue
        try:
            thumbs.append([F.thumbnail(data) for data in row])
            drops.append(None)
        except I.UnreadableImage as exc:
            drop = decode_drop(exc)
            thumbs.append(drop)
            drops.append(drop)
    return thumbs, drops


@dataclass
class HashedRow:
    """One row's images as image_dedup sees them: byte digests, pHashes and thumbnail stds, in order."""
    digests: list[bytes]
    phashes: np.ndarray      # uint64, one per image
    stds: np.ndarray         # float32, one per image


def image_digests(batch: pa.Table, wanted: np.ndarray, read: Reader = I.read_image_bytes) -> list[list[bytes] | Drop]:
    """Per row: the byte digest of each image — carried by ``image_facts`` where image_filter read the
    row, else read here — or why the bytes could not be read. Rows not `wanted` get an empty list."""
    facts = F.row_facts(batch)
    rows = read_rows(batch, np.asarray(wanted, dtype=bool) & np.array([f is None for f in facts], dtype=bool), read)
    out: list[list[bytes] | Drop] = []
    for want, fact, row in zip(wanted, facts, rows):
        if not want:
            out.append([])
        elif fact is not None:
            out.append([f["digest"] for f in fact])
        else:
            out.append(row if isinstance(row, Drop) else [F.bytes_digest(b) for b in row])
    return out


def hashed_rows(batch: pa.Table, wanted: np.ndarray, read: Reader = I.read_image_bytes
                ) -> tuple[list[HashedRow | None], list[Drop | None]]:
    """Per row: its images' digests, pHashes and thumbnail stds (None for rows out of scope or
    without images), and the Drop of a row whose images could not be read or decoded. Rows whose
    facts image_filter carried are not read; the others are read and decoded here, by the same
    functions, so both give the same values."""
    facts = F.row_facts(batch, need_phash=True)
    todo = np.asarray(wanted, dtype=bool) & np.array([f is None for f in facts], dtype=bool)
    raw = read_rows(batch, todo, read)
    thumbs, drops = thumbnails(raw)
    decoded = [t for row in thumbs if not isinstance(row, Drop) for t in row]
    stack = np.stack(decoded) if decoded else np.empty((0, F.THUMB, F.THUMB), np.float32)
    hashes, stds = F.phash_batch(stack), F.thumb_std(stack)
    out: list[HashedRow | None] = []
    at = 0
    for i, (want, fact) in enumerate(zip(wanted, facts)):
        if not want or isinstance(thumbs[i], Drop):
            out.append(None)
        elif fact is not None:
            out.append(HashedRow([f["digest"] for f in fact], np.array([f["phash"] for f in fact], dtype=np.uint64),
                                 np.array([f["thumb_std"] for f in fact], dtype=np.float32)) if fact else None)
        else:
            k = len(thumbs[i])
            out.append(HashedRow([F.bytes_digest(b) for b in raw[i]], hashes[at:at + k], stds[at:at + k]) if k else None)
            at += k
    return out, drops


@dataclass
class HashedImage:
    """One image of a document as the dedup stages see it (documents are hashed image by image)."""
    digest: bytes
    phash: int
    std: float


def document_images(refs: list[Mapping[str, Any]] | None, facts: list[dict[str, Any]] | None,
                    read: Reader = I.read_image_bytes) -> list[HashedImage | Drop]:
    """Per image of one document: its digest, pHash and thumbnail std (carried by ``image_facts`` or
    read and decoded here, by the same functions), or why it could not be read or decoded: a document
    loses that image, not its place (curate.documents.per_image)."""
    if facts is not None:
        return [HashedImage(f["digest"], int(f["phash"]), float(f["thumb_std"])) for f in facts]
    out: list[HashedImage | Drop] = []
    for ref in refs or []:
        got = read_or_drop(ref, read)
        if isinstance(got, Drop):
            out.append(got)
            continue
        (thumbs,), (drop,) = thumbnails([[got]])
        if drop is not None:
            out.append(drop)
            continue
        thumb = np.stack(thumbs)
        out.append(HashedImage(F.bytes_digest(got), int(F.phash_batch(thumb)[0]), float(F.thumb_std(thumb)[0])))
    return out
