"""Per-image facts computed once, from one read and one reduced decode, and carried to later stages.

``image_filter`` reads every image it checks and decodes a small copy of it (blank, corrupt and
truncated need pixels). ``exact_dedup`` and ``image_dedup`` used to read the same bytes again, hash
them again, and ``image_dedup`` decoded them a second time for its pHash. Now ``image_filter``
writes what they need beside each image, in the small ``image_facts`` column (~36 bytes an image):

* ``digest``: BLAKE2b-128 of the encoded bytes (``bytes_digest``: the content hash of both dedups);
* ``phash``: the 64-bit DCT hash of the 32x32 grey thumbnail (``phash_batch``), and ``thumb_std``,
  that thumbnail's standard deviation (flat images get no pHash in ``image_dedup``) — both null when
  the filter did not decode the image in a way that gives *the same* thumbnail (see below);
* ``ref_id``: a 64-bit hash of the image reference the facts belong to, so a stage that replaced or
  reordered ``images`` in between cannot make a later stage use stale facts.

A later stage uses a row's facts only when there is one per image and every ``ref_id`` matches its
reference; otherwise (no ``image_filter`` before it, a plugin stage rewrote images, a fact is null) it
reads and decodes that row itself, with the same functions, so the verdicts are the same either way.

The thumbnail is the one pHash always used: JPEGs decoded by libjpeg at the smallest DCT scale that
keeps both sides >= 128 px (``THUMB_DRAFT``), grey, Lanczos-resized to 32x32. A colour JPEG decoded
in ``YCbCr`` at that scale carries, in its Y plane, exactly the samples of the ``L`` decode (libjpeg's
grey output is the Y component, untouched), so the filter's one colour decode yields the same thumbnail
(``tests/test_one_decode.py`` checks it byte for byte).
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

from curate.media import images as I
FACTS_COLUMN = "image_facts"
FACT_TYPE = pa.struct([("ref_id", pa.uint64()), ("digest", pa.binary(16)), ("phash", pa.uint64()),
                       ("thumb_std", pa.float32())])
FACTS_TYPE = pa.list_(FACT_TYPE)

HASH_BITS = 64
THUMB = 32
LOW = 8
THUMB_DRAFT = (THUMB * 4, THUMB * 4)    # JPEG draft target: the smallest DCT scale >= 128 px a side


def bytes_digest(data: bytes) -> bytes:
    """The content hash of an image's encoded bytes (both dedup stages key exact copies on it)."""
    return hashlib.blake2b(data, digest_size=16).digest()


def ref_id(ref: Mapping[str, Any]) -> int:
    """A 64-bit identity of an image reference (where its bytes live), to match facts to images."""
    key = f"{ref.get('uri')}\x00{ref.get('member')}\x00{ref.get('offset')}\x00{ref.get('size')}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


# --- the thumbnail --------------------------------------------------------------------------------
def grey_thumbnail(im: Image.Image) -> np.ndarray:
    """32x32 float32 grey thumbnail of a decoded image (of a YCbCr image, Pillow's grey is its Y plane)."""
    return np.asarray(im.convert("L").resize((THUMB, THUMB), Image.Resampling.LANCZOS), dtype=np.float32)


def thumbnail(data: bytes, max_pixels: int = I.MAX_DECODE_PIXELS) -> np.ndarray:
    """32x32 float32 grey thumbnail from a reduced decode of `data`. Raises UnreadableImage on bad bytes."""
    im = I.open_image(data, max_pixels)   # the decode budget and the truncation checks of every decoder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            im.draft("L", THUMB_DRAFT)   # JPEG only: decode at the smallest scale >= 128 px
            return grey_thumbnail(im)
        except (OSError, SyntaxError, ValueError) as exc:   # Pillow's errors for undecodable bytes
            raise I.UnreadableImage("corrupt_image", f"{type(exc).__name__}: {exc}") from None


def phash_batch(thumbs: np.ndarray) -> np.ndarray:
    """64-bit pHash per (32x32) thumbnail, as uint64 (bit i = low-frequency coefficient i, row-major)."""
    from scipy.fft import dctn
    thumbs = np.asarray(thumbs, dtype=np.float64).reshape(-1, THUMB, THUMB)
    if thumbs.shape[0] == 0:
        return np.empty(0, dtype=np.uint64)
    low = dctn(thumbs, type=2, axes=(1, 2))[:, :LOW, :LOW].reshape(-1, LOW * LOW)
    bits = low > np.median(low, axis=1, keepdims=True)
    weights = np.uint64(1) << np.arange(HASH_BITS, dtype=np.uint64)
    return (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def thumb_std(thumbs: np.ndarray) -> np.ndarray:
    """float32 standard deviation of each thumbnail (the flat-image test compares it with a threshold)."""
    return np.asarray(thumbs, dtype=np.float32).reshape(-1, THUMB * THUMB).std(axis=1)


# --- the column -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageFact:
    """What one image's read (and, with a thumbnail, its decode) established."""
    ref_id: int
    digest: bytes
    thumb: np.ndarray | None = None


def facts_column(rows: Sequence[Sequence[ImageFact] | None]) -> pa.Array:
    """The ``image_facts`` column of a batch: per row a fact per image (null for a row with any image
    left unread), pHash and thumbnail std computed for all thumbnails of the batch at once."""
    thumbs = [f.thumb for row in rows if row for f in row if f.thumb is not None]
    stack = np.stack(thumbs) if thumbs else np.empty((0, THUMB, THUMB), np.float32)
    hashes, stds = phash_batch(stack), thumb_std(stack)
    out: list[list[dict[str, Any]] | None] = []
    at = 0
    for row in rows:
        if row is None:
            out.append(None)
            continue
        items = []
        for f in row:
            item: dict[str, Any] = {"ref_id": f.ref_id, "digest": f.digest, "phash": None, "thumb_std": None}
            if f.thumb is not None:
                item["phash"], item["thumb_std"] = int(hashes[at]), float(stds[at])
                at += 1
            items.append(item)
        out.append(items)
    return pa.array(out, type=FACTS_TYPE)


def row_facts(batch: pa.Table, need_phash: bool = False) -> list[list[dict[str, Any]] | None]:
    """Per row, the carried facts of its images when they can be trusted (one per image, each matching
    its reference, with a pHash if `need_phash`); None where the stage must read the row itself."""
    if FACTS_COLUMN not in batch.column_names or "images" not in batch.column_names:
        return [None] * batch.num_rows
    out: list[list[dict[str, Any]] | None] = []
    for refs, facts in zip(batch.column("images").to_pylist(), batch.column(FACTS_COLUMN).to_pylist()):
        refs = refs or []
        ok = facts is not None and len(facts) == len(refs) and all(
            f is not None and f["ref_id"] == ref_id(r) and f["digest"] is not None
            and (not need_phash or f["phash"] is not None) for f, r in zip(facts, refs))
        out.append(facts if ok else None)
    return out
