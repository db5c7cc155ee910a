"""Reading a batch's image bytes for the dedup stages, with bad input turned into named drops.

Storage failures (missing file, short read) quarantine the row, as everywhere in curate
(``read_or_drop``); bytes that do not decode are rejected as ``image:corrupt`` with the decoder's
message, like the image filter does.
"""
from __future__ import annotations

from typing import Callable, Mapping, Any

import numpy as np
import pyarrow as pa

from curate import images as I
from curate.dedup import phash as P
from curate.filters.common import Drop, read_or_drop

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
            thumbs.append([P.thumbnail(data) for data in row])
            drops.append(None)
        except I.UnreadableImage as exc:
            drop = Drop("image:too_large_to_decode" if exc.reason == "too_large_to_decode" else "image:corrupt",
                        f"{exc.reason}: {exc.detail}")
            thumbs.append(drop)
            drops.append(drop)
    return thumbs, drops
