"""A JSONL file (or one planned byte range of it) read as blocks of whole lines, for the column path
(``curate.readers.jsonl_columns``), and the byte screen that says which blocks that path may take.

Why blocks: Arrow parses many lines at once at a fraction of ``json.loads``' cost a line, but only a
block whose result is provably the row path's may go that way; a block that is not goes through
the row path (``curate.readers.jsonl.iter_lines``), with its line numbers unchanged. A line longer
than a block, and a last line without a newline, are always read by the row path (it bounds and
skips oversized lines), so a block is whole lines, each ending in a newline.
"""
from __future__ import annotations

import re
from typing import Any, Iterator

from curate.base import records as R
from curate.readers.jsonl import iter_lines
from curate.readers.sources import BadSample
from curate.readers.timed_io import ReadTimeout

# About this many bytes of lines per block: large enough that Arrow's per-call cost vanishes, small
# enough that a block falling back costs little and a worker holds a few of them at most.
BLOCK_BYTES = 4 << 20

# A ``\u`` escape of a UTF-16 surrogate (lone surrogates: Python keeps them, Arrow refuses or mends).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def line_blocks(fh: Any, uri: str, start: int = 0, stop: int | None = None, first_line: int = 0,
                block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[str, int, Any]]:
    """("block", lines before it, bytes of whole lines) and ("line", line number, record or
    BadSample) items, in file order, for the lines in bytes [start, stop) of an uncompressed file
    (``stop`` None: to the end). The "line" items are the row path's reading of one line: one
    longer than `block_bytes`, the last line without a newline, one crossing `stop`; and, if a read
    fails part-way, one quarantined ``unreadable_file`` record for the rest, as the row path records it."""
    fh.seek(start)
    pos, line, buf = start, first_line, b""   # pos: the file offset of buf[0]; line: lines before it
    while True:
        room = block_bytes if stop is None else min(block_bytes, stop - pos - len(buf))
        try:
            chunk = fh.read(room) if room > 0 else b""
        except ReadTimeout:
            raise   # stalled: the rest is recorded as read_timeout (curate.readers.read)
        except OSError as exc:
            yield "line", line + 1, BadSample("unreadable_file", f"{uri}: from line {line + 1} on: "
                                              f"{type(exc).__name__}: {exc}", R.QUARANTINED)
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
        fh.seek(pos)   # one line the row path reads (and bounds): too long, unterminated, or past `stop`
        for number, record in iter_lines(fh, line, stop=pos + 1):
            yield "line", number, record
        line, pos, buf = line + 1, fh.tell(), b""


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


def may_hold_text(block: bytes, text: str) -> bool:
    """Whether a string in the block may hold ASCII `text`: written as is, or with a ``\\u`` escape."""
    return text.encode() in block or (b"\\" in block and _ESCAPE.search(block) is not None)


_ESCAPE = re.compile(rb"\\u")
