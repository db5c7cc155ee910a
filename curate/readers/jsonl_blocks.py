"""A JSONL file (or one planned byte range of it) read as blocks of whole lines, for the column path
(``curate.readers.jsonl_columns``), and the byte screen that says which blocks that path may take.

Why blocks: Arrow parses many lines at once at a fraction of ``json.loads``' cost a line, but only a
block whose result is provably the row path's may go that way; a block that is not goes through
the row path (``curate.readers.jsonl.iter_lines``), with its line numbers unchanged. A line longer
than a block, and a last line without a newline, are always read by the row path (it bounds and
skips oversized lines), so a block is whole lines, each ending in a newline. A gzip file is read
the same way through its decompressor; where it breaks, what the row path keeps is kept.
"""
from __future__ import annotations

import re
from typing import Any, Iterator

import numpy as np

from curate.readers.compression import DECOMPRESS_ERRORS
from curate.readers.jsonl import iter_lines
from curate.readers.timed_io import ReadTimeout

# About this many bytes of lines per block: large enough that Arrow's per-call cost vanishes, small
# enough that a block falling back costs little and a worker holds a few of them at most.
BLOCK_BYTES = 4 << 20

# A ``\u`` escape of a UTF-16 surrogate (lone surrogates: Python keeps them, Arrow refuses or mends).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def line_blocks(fh: Any, start: int = 0, stop: int | None = None, first_line: int = 0,
                block_bytes: int = BLOCK_BYTES, compressed: bool = False) -> Iterator[tuple[str, int, Any]]:
    """Items, in file order, for the lines in bytes [start, stop) of `fh` (``stop`` None: to the end;
    `compressed`: `fh` is a gzip stream, read from its start): ("block", lines before it, bytes of
    whole lines); ("line", line number, record or BadSample), the row path's reading of one line
    (longer than `block_bytes`, the last one without a newline, one crossing `stop`); and last, if
    a read fails part-way, ("broken", lines before the unread rest, the exception). As with the row
    path's reads, every byte read before the failure is in an earlier item but a line it cut short."""
    stream = _Stream(fh, compressed)
    if start:
        fh.seek(start)
    pos, line, buf = start, first_line, b""   # pos: the offset of buf[0]; line: lines before it
    while True:
        room = block_bytes if stop is None else min(block_bytes, stop - pos - len(buf))
        try:
            chunk = stream.read(room) if room > 0 else b""
        except ReadTimeout:
            raise   # stalled: the rest is recorded as read_timeout (curate.readers.read)
        except DECOMPRESS_ERRORS as exc:
            yield "broken", line, exc
            return
        buf += chunk
        cut = buf.rfind(b"\n") + 1
        if cut:
            block, buf = buf[:cut], buf[cut:]
            yield "block", line, block
            line += block.count(b"\n")
            pos += cut
        if chunk and len(buf) <= block_bytes:
            continue
        if not buf:
            return
        rest = _LineRest(buf, stream)   # one line for the row path, which bounds and skips long lines
        try:
            for number, record in iter_lines(rest, line, stop=1):
                yield "line", number, record
        except ReadTimeout:
            raise
        except DECOMPRESS_ERRORS as exc:
            yield "broken", line, exc
            return
        line, pos, buf = line + 1, pos + rest.consumed, b""


class _Stream:
    """Reads of `fh` that lose no byte to a failure: a gzip stream cut short gives the bytes it
    decompressed before failing, and fails on the next read (as the row path's ``readline`` meets
    it). Compressed reads go one ``read1`` at a time, each of which either returns bytes or fails."""

    def __init__(self, fh: Any, compressed: bool):
        self.fh, self.compressed, self.failure = fh, compressed, None

    def read(self, size: int) -> bytes:
        if self.failure is not None:
            raise self.failure
        if not self.compressed:
            return self.fh.read(size)
        pieces, got = [], 0
        while got < size:
            try:
                piece = self.fh.read1(size - got)
            except DECOMPRESS_ERRORS as exc:
                if not pieces or isinstance(exc, ReadTimeout):
                    raise
                self.failure = exc
                break
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        return b"".join(pieces)

    def readline(self, limit: int) -> bytes:
        if self.failure is not None:
            raise self.failure
        return self.fh.readline(limit)


class _LineRest:
    """The start of a line already read (`head`, no newline in it), then the rest of the stream: what
    ``iter_lines`` reads that line from, without seeking back (a gzip stream cannot, cheaply)."""

    def __init__(self, head: bytes, stream: _Stream):
        self.head, self.stream, self.consumed = head, stream, 0

    def tell(self) -> int:
        return 0

    def readline(self, limit: int) -> bytes:
        take, self.head = self.head[:limit], self.head[limit:]
        if len(take) < limit:
            take += self.stream.readline(limit - len(take))
        self.consumed += len(take)
        return take


def plain_block(block: bytes) -> bool:
    """Whether a block is free of what Arrow's JSON reader and ``json.loads`` could read differently
    whatever its columns, by a scan of its bytes: a byte-order mark (stripped at a line's start by
    the row path only), a carriage return not before a newline (a line break to Arrow, blank to
    Python), surrogate escapes, invalid UTF-8 (Arrow does not check it). An ASCII block (the
    common case, one fast pass) holds neither of the first and last. What depends on the columns
    (explicit nulls, NaN) is ``may_hold_nulls`` / ``may_hold_non_finite``, asked only when needed."""
    if not block.isascii():
        if b"\xef\xbb\xbf" in block:
            return False
        try:
            block.decode("utf-8")
        except UnicodeDecodeError:
            return False
    if b"\r" in block and block.count(b"\r") != block.count(b"\r\n"):
        return False
    return b"\\" not in block or not _SURROGATE_ESCAPE.search(block)   # memchr first: most blocks have no escape


def may_hold_nulls(block: bytes) -> bool:
    """Whether a block may hold an explicit ``null`` (which Arrow cannot tell from a missing field,
    and the row path can: ``t.get("from", t.get("role"))``)."""
    return b"null" in block


def may_hold_non_finite(block: bytes) -> bool:
    """Whether a block may hold NaN, Inf or Infinity (refused by the row path, read by Arrow)."""
    return b"NaN" in block or b"Inf" in block


def may_hold_tags(block: bytes, tags: tuple[str, ...]) -> set[str]:
    """Which of `tags` (ASCII, each starting with "<") a string in the block may hold: written as
    is, or any of them when the block has a ``\\u`` escape. One pass for the "<" bytes, then a few
    gathers at them (cheaper than a substring scan a tag)."""
    if b"\\" in block and _ESCAPE.search(block) is not None:
        return set(tags)
    data = np.frombuffer(block, dtype=np.uint8)
    at = np.flatnonzero(data == ord("<"))
    found = set()
    for tag in tags:
        pattern = tag.encode()
        hits = at[at + len(pattern) <= len(data)]
        for k in range(1, len(pattern)):
            hits = hits[data[hits + k] == pattern[k]]
        if len(hits):
            found.add(tag)
    return found


_ESCAPE = re.compile(rb"\\u")
