"""LLaVA/ShareGPT JSON and JSONL (``{id, image(s), video(s), conversations: [{from, value}]}``), and
the strict JSON parser every reader uses for metadata.

``video`` (LLaVA-Video / ShareGPT4Video) is a path like ``image``, resolved and read with the same
bounds (``curate.readers.refs``); its header is probed (``curate.media.video``), never decoded. A video without a
``<video>`` placeholder goes before the first user turn's text, as LLaVA does for images.

Strict JSON: NaN/Infinity and numbers that overflow a double (``1e999999``) are refused (not JSON's
meaning, and poison for every later statistic); nesting deeper than ``MAX_JSON_DEPTH`` is refused
per record instead of raising ``RecursionError`` out of the run. A file is an array when its first
non-blank character (after a UTF-8 byte-order mark) is ``[``, else JSONL.

A gzip-compressed file (``.jsonl.gz``, ``.json.gz``; recognised by content, ``curate.readers.compression``)
is read through a streaming decompressor, whole by one task. A file that ends or breaks part-way
(a gzip stream cut short, an I/O error) keeps every record before the break, and the rest becomes
one quarantined row (``truncated_file`` / ``unreadable_file``) instead of an exception.
"""
from __future__ import annotations

import codecs
import json
import math
import posixpath
from typing import Any, Iterator

import fsspec

from curate.base import records as R
from curate.readers import refs
from curate.readers.compression import DECOMPRESS_ERRORS, is_gzip, open_decompressed
from curate.readers.sources import (BadSample, SourceSpec, admit_record, bad_row, check_image_count,
                                    image_ref_from_bytes, make_row)
from curate.readers.timed_io import DEFAULT_READ_TIMEOUT_S, ReadTimeout, open_timed
from curate.media.video import video_ref_from_bytes

# Real metadata nests a handful of levels; 64 leaves room while staying far from Python's recursion limit.
MAX_JSON_DEPTH = 64
# One record (a JSONL line or an array element) may not exceed this: bounds the reader's memory.
MAX_RECORD_BYTES = 64 << 20
READ_CHUNK = 1 << 20

ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "model": "assistant", "bot": "assistant", "system": "system"}


class _NonFinite:
    """Stands in for NaN/Infinity/overflowing numbers while decoding, so a bad number rejects its
    record (found by ``_check``) instead of aborting a streamed array at an unknown position."""

    def __init__(self, text: str):
        self.text = text


def _number(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


_DECODER = json.JSONDecoder(parse_constant=_NonFinite, parse_float=_number)


def _check(value: Any) -> Any:
    """Refuse non-finite numbers, nesting past MAX_JSON_DEPTH and text that is not Unicode (a lone
    surrogate escape such as ``"\\ud800"``, which no later step can write as UTF-8), iteratively (a
    recursive walk is what we are guarding against)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, _NonFinite):
            raise ValueError(f"non-finite number {v.text[:40]} in JSON")
        if isinstance(v, str):
            _check_text(v)
        elif isinstance(v, (dict, list)):
            if d > MAX_JSON_DEPTH:
                raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(v, dict):
                for k in v:
                    _check_text(k)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return value


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("lone surrogate escape in a JSON string") from None


def strict_json(text: str | bytes) -> Any:
    """json.loads refusing NaN/Infinity, overflowing numbers and deep nesting (all as ValueError)."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8-sig")
    try:
        return _check(_DECODER.decode(text))
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None


def iter_json_records(uri: str, part: tuple[int, int, int] | None = None,
                      read_timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> Iterator[tuple[int, Any]]:
    """(line or array index, record or BadSample) for every record of a JSON array or JSONL file.

    Both are streamed: memory holds one record (at most MAX_RECORD_BYTES), not the file, so a
    multi-gigabyte LLaVA JSON array is readable. `part`: only the JSONL lines in the byte range
    (start, stop, lines before start) planned by ``plan_line_parts``.
    """
    with open_timed(uri, read_timeout_s) as raw:
        is_lines, after = True, (part[2] if part else 0)   # the number of the last record read
        try:
            fh = open_decompressed(raw)
            if part is not None:
                fh.seek(part[0])
                records = iter_lines(fh, first_line=part[2], stop=part[1])
            elif is_array(fh):
                is_lines, after, records = False, -1, _iter_array(fh)
            else:
                records = iter_lines(fh)
            for number, record in records:
                after = number
                yield number, record
        except ReadTimeout:
            raise   # stalled: the rest of the file is recorded as read_timeout (curate.readers.read)
        except DECOMPRESS_ERRORS as exc:
            reason = "truncated_file" if isinstance(exc, EOFError) else "unreadable_file"
            what = "line" if is_lines else "record"
            yield after + 1, BadSample(reason, f"{uri}: from {what} {after + 1} on: {type(exc).__name__}: {exc}",
                                       R.QUARANTINED)


def is_array(fh: Any) -> bool:
    head = fh.read(4096)
    fh.seek(0)
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8):]
    return head.lstrip().startswith(b"[")


def plan_line_parts(uri: str, bytes_per_part: int) -> list[tuple[int, int, int]] | None:
    """Byte ranges (start, stop, lines before start) of about `bytes_per_part` bytes, cut after a
    newline, so that tasks read a large JSONL file in parallel; None for a file that is read whole
    (an array, or small). The plan depends on the file alone, and carries each range's first line
    number, so keys and ordinals are the ones a whole-file read gives. Planning reads the file once
    in chunks to count newlines: driver memory is one chunk, whatever the file size."""
    fs, path = fsspec.core.url_to_fs(uri)
    size = fs.size(path)
    if size <= bytes_per_part:
        return None
    with fs.open(path, "rb") as fh:
        if is_gzip(fh) or is_array(fh):   # a gzip stream has no byte ranges to start at
            return None
        cuts, offset, lines, want = [(0, 0)], 0, 0, bytes_per_part
        while chunk := fh.read(8 << 20):
            nl = chunk.find(b"\n", max(0, want - offset))
            while nl >= 0 and offset + nl + 1 < size:
                cuts.append((offset + nl + 1, lines + chunk.count(b"\n", 0, nl + 1)))
                want = offset + nl + 1 + bytes_per_part
                nl = chunk.find(b"\n", want - offset) if want - offset < len(chunk) else -1
            lines += chunk.count(b"\n")
            offset += len(chunk)
    return [(a, b, before) for (a, before), (b, _) in zip(cuts, cuts[1:] + [(size, 0)])]


def iter_lines(fh: Any, first_line: int = 0, stop: int | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, record or BadSample) of the lines from `fh`'s position up to byte `stop`: the
    row path's reading of JSONL, which the column path (``curate.readers.jsonl_columns``) falls back to."""
    lineno, pos = first_line, fh.tell()
    while stop is None or pos < stop:
        line = fh.readline(MAX_RECORD_BYTES + 1)
        if not line:
            return
        pos += len(line)
        lineno += 1
        if lineno == 1 and line.startswith(codecs.BOM_UTF8):
            line = line[len(codecs.BOM_UTF8):]
        if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):   # skip the rest of the oversized line
                line = fh.readline(1 << 20)
                pos += len(line)
            yield lineno, BadSample("invalid_json_line", f"line longer than {MAX_RECORD_BYTES} bytes", R.REJECTED)
            continue
        if not line.strip():
            continue
        try:
            yield lineno, strict_json(line)
        except (ValueError, UnicodeDecodeError) as exc:
            yield lineno, BadSample("invalid_json_line", str(exc), R.REJECTED)


class _CharStream:
    """Decoded text of a byte stream with a moving window: enough of it to decode the next value."""

    def __init__(self, fh: Any):
        self.fh, self.buf, self.pos, self.eof = fh, "", 0, False
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()

    def more(self) -> None:
        """Read more (at least as much again as is buffered: total work stays linear)."""
        if self.eof:
            raise ValueError("unexpected end of file")
        if len(self.buf) - self.pos > MAX_RECORD_BYTES:
            raise ValueError(f"a record longer than {MAX_RECORD_BYTES} bytes")
        chunk = self.fh.read(max(READ_CHUNK, len(self.buf) - self.pos))
        self.eof = not chunk
        self.buf = self.buf[self.pos:] + self.decoder.decode(chunk, final=self.eof)
        self.pos = 0

    def next_char(self) -> str:
        """The next non-blank character (consumed), or "" at the end."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                self.pos += 1
                return self.buf[self.pos - 1]
            if self.eof:
                return ""
            self.more()

    def value(self) -> Any:
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
                cut_number = (isinstance(value, (int, float, _NonFinite)) and not isinstance(value, bool)
                              and not self.buf[end:].strip("0123456789.eE+-"))
                if self.eof or not cut_number:   # a number at the window's end ("1.5e" | "10") may continue
                    self.pos = end
                    return value
            except json.JSONDecodeError:
                if self.eof:
                    raise
            self.more()


def _iter_array(fh: Any) -> Iterator[tuple[int, Any]]:
    stream, index = _CharStream(fh), 0
    try:
        if stream.next_char() != "[":
            raise ValueError("expected '['")
        c = stream.next_char()
        if c == "]":
            return
        stream.pos -= 1
        while True:
            value = stream.value()
            try:
                yield index, _check(value)
            except ValueError as exc:
                yield index, BadSample("invalid_json_record", str(exc), R.REJECTED)
            index += 1
            c = stream.next_char()
            if c == "]":
                return
            if c != ",":
                raise ValueError(f"expected ',' or ']' after record {index - 1}, got {c[:1]!r}")
            stream.next_char()
            stream.pos -= 1
    except (ValueError, RecursionError) as exc:   # the array's syntax is broken: the rest is unreadable
        msg = str(exc) if isinstance(exc, ValueError) else f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
        yield index, BadSample("invalid_json_file", f"from record {index} on: {msg}", R.QUARANTINED)


def normalize_conversations(turns: Any) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise BadSample("invalid_conversations", "conversations must be a non-empty list", R.REJECTED)
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise BadSample("invalid_conversations", f"turn {i} is not an object", R.REJECTED)
        role = ROLE_ALIASES.get(str(t.get("from", t.get("role", ""))).lower())
        content = t.get("value", t.get("content"))
        if role is None or not isinstance(content, str):
            raise BadSample("invalid_conversations", f"turn {i}: unknown role or non-text content", R.REJECTED)
        out.append({"role": role, "content": content})
    return out


def referenced_image(spec: SourceSpec, root: str, value: Any, memo: refs.ReferenceMemo | None = None) -> dict:
    """An image reference from a record field: resolved inside the root, read with bounds, hashed;
    with `memo`, each distinct reference of the task once."""
    if memo is not None:
        return memo.image(spec, root, value, _ref_of_bytes)
    uri = refs.resolve_reference(value, root, spec)
    return image_ref_from_bytes(refs.read_reference(uri, spec), uri, None, 0)


def _ref_of_bytes(data: bytes, uri: str) -> dict:
    return image_ref_from_bytes(data, uri, None, 0)


def referenced_video(spec: SourceSpec, root: str, value: Any) -> dict:
    """A video reference from a record field, under the same rules as images (root, bounds, hash)."""
    uri = refs.resolve_reference(value, root, spec)
    return video_ref_from_bytes(refs.read_reference(uri, spec), uri, None, 0)


def read_llava(spec: SourceSpec, uri: str, source_index: int, file_index: int,
               part: tuple[int, int, int] | None = None) -> Iterator[dict]:
    """Records of the file, or of one JSONL byte range (`part`, see ``plan_line_parts``). A record's
    row in its ordinal is its line number - 1 (JSONL) or its array index, whichever task reads it;
    duplicate ids within one task are rejected here, across tasks by ingest's whole-run check."""
    records = iter_json_records(uri, part, spec.read_timeout_s)
    is_lines = part is not None or not _starts_array(uri, spec.read_timeout_s)
    yield from llava_rows(LlavaTask(spec, uri, source_index, file_index), records, is_lines)


class LlavaTask:
    """What one read of a LLaVA file shares between its records: the ids seen so far (duplicates
    within the task), the image references read (each distinct path once), the source root. The
    column path (``curate.readers.jsonl_columns``) shares it with the blocks it hands to the row path."""

    def __init__(self, spec: SourceSpec, uri: str, source_index: int, file_index: int):
        self.spec, self.uri, self.source_index, self.file_index = spec, uri, source_index, file_index
        self.root = spec.image_root or posixpath.dirname(uri)
        self.seen: set[str] = set()
        self.memo = refs.ReferenceMemo()


def llava_rows(task: LlavaTask, records: Iterator[tuple[int, Any]], is_lines: bool) -> Iterator[dict]:
    """The row of each (line or array index, record or BadSample) of `records`."""
    spec, uri, file_index, seen = task.spec, task.uri, task.file_index, task.seen
    for line, rec in records:
        ordinal = R.make_ordinal(task.source_index, file_index, line - 1 if is_lines else line)
        prov = {"uri": uri, "line": line}
        rid = rec.get("id") if isinstance(rec, dict) else None
        key = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else f"{file_index}-{line}"
        try:
            admit_record(rec, key, seen, uri, key_label="id ")
            yield make_row(spec, key, ordinal, prov, **_llava_fields(spec, task.root, rec, task.memo))
        except BadSample as bad:
            yield bad_row(spec, key, ordinal, prov, bad)


def _starts_array(uri: str, read_timeout_s: float) -> bool:
    with open_timed(uri, read_timeout_s) as fh:
        try:
            return is_array(open_decompressed(fh))
        except ReadTimeout:
            raise
        except DECOMPRESS_ERRORS:
            return False   # iter_json_records records the damage


def _image_values(rec: dict, field: str = "image") -> list[Any]:
    img = rec.get(field, rec.get(field + "s"))
    if img is None:
        return []
    if isinstance(img, list):
        return img
    return [img]   # a string, or anything else (rejected by resolve_reference with its type named)


def _place(conv: list[dict], values: list[Any], kind: str) -> None:
    """Check (or, when there are none, insert) one ``<image>`` / ``<video>`` placeholder per value."""
    tag = f"<{kind}>"
    placeholders = sum(t["content"].count(tag) for t in conv)
    if values and placeholders == 0:
        # LLaVA convention: media without placeholders go before the first user turn's text.
        first_user = next((t for t in conv if t["role"] == "user"), conv[0])
        first_user["content"] = f"{tag}\n" * len(values) + first_user["content"]
    elif placeholders != len(values):
        raise BadSample(f"{kind}_placeholder_mismatch", f"{placeholders} {tag} tags for {len(values)} {kind}s", R.REJECTED)


def _llava_fields(spec: SourceSpec, root: str, rec: dict, memo: refs.ReferenceMemo | None = None) -> dict:
    conv = normalize_conversations(rec.get("conversations"))
    values, video_values = _image_values(rec), _image_values(rec, "video")
    check_image_count(spec, len(values))   # before reading any of them
    _place(conv, video_values, "video")
    _place(conv, values, "image")
    refs_ = [referenced_image(spec, root, v, memo) for v in values]
    videos = [referenced_video(spec, root, v) for v in video_values]
    meta = {k: v for k, v in rec.items() if k not in ("conversations", "image", "images", "video", "videos", "id")}
    category = rec.get("category") if isinstance(rec.get("category"), str) else spec.category
    return {"images": refs_, "videos": videos, "conversations": conv, "meta": R.dumps_meta(meta or None),
            "category": category}
