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
import threading
import zlib
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, BinaryIO, Callable, Hashable, Iterator

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


class OpenStreams:
    """Decompressed streams kept open between reads in this process, at most `capacity` of them.

    Why: a per-row stage (image filter, scorers) reads a compressed shard's members batch after
    batch in offset order; without this each batch would decompress the shard from its start again
    (quadratic in the shard's size). A stream is checked out for one caller at a time (threads
    reading the same shard get their own), and one past the wanted offset is replaced by a new one."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._open: OrderedDict[Hashable, tuple[Any, gzip.GzipFile]] = OrderedDict()
        self._lock = threading.Lock()

    @contextmanager
    def at_or_before(self, key: Hashable, offset: int, open_raw: Callable[[], Any]) -> Iterator[gzip.GzipFile]:
        with self._lock:
            entry = self._open.pop(key, None)
        if entry is not None and entry[1].tell() > offset:
            _close(entry)
            entry = None
        if entry is None:
            raw = open_raw()
            entry = (raw, gzip.GzipFile(fileobj=raw, mode="rb"))
        try:
            yield entry[1]
        except BaseException:
            _close(entry)
            raise
        with self._lock:
            evicted = [self._open.pop(key)] if key in self._open else []
            self._open[key] = entry
            while len(self._open) > self.capacity:
                evicted.append(self._open.popitem(last=False)[1])
        for e in evicted:
            _close(e)


def _close(entry: tuple[Any, gzip.GzipFile]) -> None:
    for f in (entry[1], entry[0]):
        try:
            f.close()
        except (OSError, EOFError, zlib.error):
            pass


STREAMS = OpenStreams()
