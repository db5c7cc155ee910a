"""gzip-compressed sources (``.tar.gz`` / ``.tgz`` WebDataset shards, ``.jsonl.gz`` / ``.json.gz``
LLaVA files), recognised by their magic bytes as the ``webdataset`` library and ``tarfile``'s
``r:*`` do, whatever the file is called.

Why a wrapper and not a temporary copy: a shard is read as a stream, so memory stays one member and
nothing is written beside the sources. Byte offsets recorded for a member of a compressed tar are
offsets in the decompressed stream; ``open_decompressed`` gives a file object in which they are
valid (a forward seek decompresses up to it, so readers visit offsets in increasing order).

A compressed file cut short or corrupted raises one of ``DECOMPRESS_ERRORS`` part-way through; every
reader turns that into a recorded quarantine of the rest of the file, never a crash.
"""
from __future__ import annotations

import gzip
import zlib
from typing import BinaryIO

GZIP_MAGIC = b"\x1f\x8b"
# EOFError: the stream ends before gzip's end marker (a file cut short); zlib.error: corrupt deflate
# data; gzip.BadGzipFile (an OSError): a damaged header or CRC.
DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (EOFError, zlib.error, OSError)


def is_gzip(fh: BinaryIO) -> bool:
    """Whether an open, seekable binary file starts with gzip's magic bytes (position restored)."""
    pos = fh.tell()
    head = fh.read(2)
    fh.seek(pos)
    return head == GZIP_MAGIC


def open_decompressed(fh: BinaryIO) -> BinaryIO:
    """`fh` itself, or a streaming gzip reader over it when it is gzip-compressed."""
    return gzip.GzipFile(fileobj=fh, mode="rb") if is_gzip(fh) else fh  # type: ignore[return-value]
