"""Image references: probing headers without decoding, and reading the bytes back when needed.

Ingest stores a reference (container URI + member + byte offset) and the width/height from the
header. Stages that need pixels (image rules, CLIP) and the shard writer call ``read_image_bytes``
(or ``read_many`` for a batch); nothing else touches image bytes. Every read is bounded in time
(``curate.readers.timed_io``, ``DEFAULT_READ_TIMEOUT_S``): a stalled mount costs the sample (a ``ReadTimeout``,
an OSError whose ``reason`` is ``read_timeout``), not the run. Every decoder starts from
``open_image``, the one place with the decode budget (decompression bombs) and the truncation checks;
Pillow's ``Image.open`` reads only the header until ``load()``.
"""
from __future__ import annotations

import io
import warnings
import zlib
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence, Union

import fsspec
from PIL import Image

from curate.readers.compression import STREAMS, is_gzip
from curate.readers.timed_io import DEFAULT_READ_TIMEOUT_S, ReadTimeout, call_with_deadline

# Refuse to *decode* more than this many pixels (Pillow's default is ~89M with a warning only).
MAX_DECODE_PIXELS = 64_000_000

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")


@dataclass(frozen=True)
class ImageHeader:
    width: int
    height: int
    format: str


class UnreadableImage(ValueError):
    """The bytes are not an image we can read; `reason` is the short code for the rejects manifest."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def open_image(data: bytes, max_pixels: int = 0) -> Image.Image:
    """The image with only its header parsed (Pillow decodes nothing until ``load()``).

    The one place that guards decoding: every decoder in the package starts here. Raises
    UnreadableImage with a reason code: ``empty_image``, ``not_an_image``, ``decompression_bomb``
    (past Pillow's own limit, 2 x ``Image.MAX_IMAGE_PIXELS``), ``too_large_to_decode`` (more than
    `max_pixels`; 0: no budget), ``invalid_dimensions``, ``truncated_image`` (no end marker).
    """
    if not data:
        raise UnreadableImage("empty_image", "zero bytes")
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        raise UnreadableImage("not_an_image", "looks like HTML/XML")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise UnreadableImage("decompression_bomb", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 — Pillow raises many types for garbage
        raise UnreadableImage("not_an_image", f"{type(exc).__name__}: {exc}") from None
    width, height = im.size
    if width <= 0 or height <= 0:
        raise UnreadableImage("invalid_dimensions", f"{width}x{height}")
    if max_pixels and width * height > max_pixels:
        raise UnreadableImage("too_large_to_decode", f"{width}x{height} = {width * height} pixels > {max_pixels}")
    if im.format == "JPEG" and not (data.endswith(b"\xff\xd9") or data.rstrip(b"\x00").endswith(b"\xff\xd9")):
        raise UnreadableImage("truncated_image", "JPEG without end-of-image marker")
    if im.format == "PNG" and b"IEND" not in data[-64:]:
        raise UnreadableImage("truncated_image", "PNG without IEND chunk")
    return im


def probe(data: bytes) -> ImageHeader:
    """Width, height and format from the header only. Raises UnreadableImage with a reason code.

    Plain JPEG and PNG headers are parsed here (a few microseconds; Pillow's ``open`` costs ~50-100x
    that, most of a metadata ingest of small referenced files); anything this parser does not fully
    vouch for — a marker or chunk it does not whitelist, Exif, ICC, MPO, 12-bit, a bomb-sized
    image — goes through ``open_image``, so the verdicts are Pillow's either way."""
    if data and not _looks_like_markup(data):
        header = _plain_header(data)
        if header is not None:
            _check_complete(header.format, data)
            return header
    im = open_image(data)
    return ImageHeader(im.size[0], im.size[1], im.format or "UNKNOWN")


def _looks_like_markup(data: bytes) -> bool:
    return data[:512].lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body"))


def _check_complete(fmt: str, data: bytes) -> None:
    """open_image's end-marker checks (``truncated_image``)."""
    if fmt == "JPEG" and not (data.endswith(b"\xff\xd9") or data.rstrip(b"\x00").endswith(b"\xff\xd9")):
        raise UnreadableImage("truncated_image", "JPEG without end-of-image marker")
    if fmt == "PNG" and b"IEND" not in data[-64:]:
        raise UnreadableImage("truncated_image", "PNG without IEND chunk")


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (bit depth, colour type) pairs Pillow opens; chunks before IDAT whose content Pillow does not check
# beyond their CRC (at these lengths)
_PNG_MODES = {(1, 0), (2, 0), (4, 0), (8, 0), (16, 0), (8, 2), (16, 2), (1, 3), (2, 3), (4, 3), (8, 3),
              (8, 4), (16, 4), (8, 6), (16, 6)}
_PNG_PLAIN_CHUNKS = {b"PLTE": None, b"gAMA": 4, b"sRGB": 1, b"pHYs": 9}


def _plain_header(data: bytes) -> ImageHeader | None:
    """The header of a plain JPEG or PNG, or None (then Pillow decides)."""
    if data[:3] == b"\xff\xd8\xff":
        size = _jpeg_size(data)
        fmt = "JPEG"
    elif data[:8] == _PNG_SIGNATURE:
        size = _png_size(data)
        fmt = "PNG"
    else:
        return None
    if size is None or size[0] <= 0 or size[1] <= 0 or size[0] * size[1] > Image.MAX_IMAGE_PIXELS:
        return None
    return ImageHeader(size[0], size[1], fmt)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the segments up to the start of scan: contiguous markers only, each of a kind whose
    content Pillow reads without failing (its own checks repeated: DQT tables, SOF precision and
    components); the SOF's size."""
    pos, end, size = 2, len(data), None
    while True:
        if pos + 4 > end or data[pos] != 0xFF:
            return None
        marker, length = data[pos + 1], (data[pos + 2] << 8) | data[pos + 3]
        if length < 2 or pos + 2 + length > end:
            return None
        body = data[pos + 4:pos + 2 + length]
        if marker == 0xDA:
            return size
        if marker in _SOF:
            if size is not None or len(body) < 6 or body[0] != 8 or body[5] not in (1, 3, 4) or (len(body) - 6) % 3:
                return None
            size = ((body[3] << 8) | body[4], (body[1] << 8) | body[2])
        elif marker == 0xDB:
            while body:
                table = 1 + (64 if body[0] // 16 == 0 else 128)
                if len(body) < table:
                    return None
                body = body[table:]
        elif marker == 0xE0:
            if body.startswith(b"JFIF") and len(body) < 14:
                return None
        elif marker == 0xE1:
            if body.startswith(b"Exif\x00\x00"):   # Pillow parses Exif for a DPI while opening
                return None
        elif marker in (0xE2, 0xED, 0xEE) or marker not in (0xC4, 0xDD, 0xFE) and not 0xE3 <= marker <= 0xEF:
            return None   # ICC / MPF / FlashPix, Photoshop, Adobe, or anything unlisted: Pillow's call
        pos += 2 + length


def _png_size(data: bytes) -> tuple[int, int] | None:
    """IHDR, then only chunks of _PNG_PLAIN_CHUNKS before IDAT, every CRC right."""
    import zlib
    pos, end, size = 8, len(data), None
    while pos + 12 <= end:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if pos + 12 + length > end:
            return None
        body = data[pos + 8:pos + 8 + length]
        if zlib.crc32(kind + body) != int.from_bytes(data[pos + 8 + length:pos + 12 + length], "big"):
            return None
        if kind == b"IDAT":
            return size
        if kind == b"IHDR":
            if size is not None or length != 13 or (body[8], body[9]) not in _PNG_MODES or body[11]:
                return None
            size = (int.from_bytes(body[0:4], "big"), int.from_bytes(body[4:8], "big"))
        elif size is None or kind not in _PNG_PLAIN_CHUNKS or \
                _PNG_PLAIN_CHUNKS[kind] not in (None, length):
            return None
        pos += 12 + length
    return None


def load_small(im: Image.Image, min_side: int, mode: str = "RGB") -> Image.Image:
    """Decode `im` (from ``open_image``) to a copy whose shorter side is about `min_side` or more.

    JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still covers `min_side`: the
    IDCT work drops by up to 64x (entropy decoding remains). `mode="YCbCr"` keeps a JPEG's samples
    as the decoder produced them (no colour conversion), which ``jpeg`` checks need. Other formats
    decode in full. Raises UnreadableImage("corrupt_image") when the payload does not decode.
    """
    w, h = im.size
    if im.format == "JPEG" and min_side > 0:
        scale = max(1, min(8, min(w, h) // min_side))
        im.draft(mode if mode in ("L", "YCbCr", "RGB") else "RGB", (-(-w // scale), -(-h // scale)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
    except Exception as exc:  # noqa: BLE001 — Pillow raises many types for bad payloads
        raise UnreadableImage("corrupt_image", f"{type(exc).__name__}: {exc}") from None
    return im


def decode(data: bytes, mode: str = "RGB", max_pixels: int = MAX_DECODE_PIXELS, min_side: int = 0) -> Image.Image:
    """Decode with a pixel budget checked from the header first (decompression bombs); `min_side` > 0
    lets JPEGs decode at a reduced DCT scale that keeps the shorter side at least that long."""
    im = load_small(open_image(data, max_pixels), min_side, mode)
    return im.convert(mode) if mode and im.mode != mode else im


@lru_cache(maxsize=64)
def _filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def _is_ranged(ref: Mapping[str, Any]) -> bool:
    """A reference to a byte range of a container (a tar member at a known offset)."""
    member, offset, size = ref.get("member"), ref.get("offset", -1), ref.get("size", -1)
    if member and member.startswith("row=") and str(ref["uri"]).endswith(".parquet"):
        return False
    return offset is not None and offset >= 0 and size is not None and size >= 0


def _read_range(fh: Any, uri: str, offset: int, size: int) -> bytes:
    try:
        fh.seek(offset)
        data = fh.read(size)
    except (EOFError, zlib.error) as exc:   # a compressed container cut short or corrupted since ingest
        raise UnreadableImage("truncated_container", f"{uri}: {exc}") from None
    if len(data) != size:
        raise UnreadableImage("truncated_container", f"{uri}: wanted {size} bytes at {offset}, got {len(data)}")
    return data


def read_image_bytes(ref: Mapping[str, Any]) -> bytes:
    """The encoded bytes an image reference points at (tar member, parquet cell, or plain file);
    ReadTimeout past DEFAULT_READ_TIMEOUT_S."""
    return call_with_deadline(lambda: _read_image_bytes(ref), DEFAULT_READ_TIMEOUT_S, f"reading {ref['uri']}")


def _read_image_bytes(ref: Mapping[str, Any]) -> bytes:
    uri, member = ref["uri"], ref.get("member")
    fs, path = _filesystem(uri)
    if _is_ranged(ref):
        with fs.open(path, "rb") as fh:
            if not is_gzip(fh):
                return _read_range(fh, uri, ref["offset"], ref["size"])
        with _gzip_stream(fs, path, uri, ref["offset"]) as src:
            return _read_range(src, uri, ref["offset"], ref["size"])
    if member and member.startswith("row=") and path.endswith(".parquet"):
        return _parquet_cell(uri, member)
    if member:
        import tarfile
        with fs.open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r:*") as tar:
            f = tar.extractfile(member)
            if f is None:
                raise UnreadableImage("missing_member", f"{uri}:{member}")
            return f.read()
    with fs.open(path, "rb") as fh:
        return fh.read()


ReadResult = Union[bytes, UnreadableImage, OSError]


def read_many(refs: Sequence[Mapping[str, Any]]) -> list[ReadResult]:
    """The bytes of every reference, in order, opening each container once per call.

    img2dataset shards hold 10,000 samples per tar: opening the tar per image cost a sixth of the
    image filter's time. Ranged references are grouped by file and read in offset order; the others
    go through ``read_image_bytes``. A failed read is returned in place of the bytes (never raised),
    so that one missing member costs only its own sample. Each open and each image's read is bounded
    in time; after one times out, the file's other images get the same error at once (the file is
    stalled: each would wait its own limit on a handle that a blocked read holds).
    """
    out: list[ReadResult | None] = [None] * len(refs)
    by_file: dict[str, list[int]] = defaultdict(list)
    for i, ref in enumerate(refs):
        if _is_ranged(ref):
            by_file[str(ref["uri"])].append(i)
        else:
            out[i] = _read_or_error(read_image_bytes, ref)
    for uri, idx in by_file.items():
        fs, path = _filesystem(uri)
        what = f"reading {uri}"
        try:
            fh = call_with_deadline(lambda: fs.open(path, "rb"), DEFAULT_READ_TIMEOUT_S, what)
        except OSError as exc:
            for i in idx:
                out[i] = exc
            continue
        order = sorted(idx, key=lambda j: refs[j]["offset"])   # increasing: one forward pass
        stalled: OSError | None = None
        try:
            try:
                compressed = call_with_deadline(lambda: is_gzip(fh), DEFAULT_READ_TIMEOUT_S, what)
            except OSError as exc:
                stalled = exc if isinstance(exc, ReadTimeout) else None
                for i in order:
                    out[i] = exc
                continue
            if not compressed:
                for i in order:
                    out[i] = stalled or _read_or_error(lambda r: call_with_deadline(
                        lambda: _read_range(fh, uri, r["offset"], r["size"]), DEFAULT_READ_TIMEOUT_S, what), refs[i])
                    stalled = stalled or (out[i] if isinstance(out[i], ReadTimeout) else None)
        finally:
            if stalled is None:   # a handle a blocked read holds is left to it
                fh.close()
        if compressed:   # offsets into a .tar.gz are in its decompressed stream
            try:
                with _gzip_stream(fs, path, uri, refs[order[0]]["offset"]) as src:
                    for i in order:
                        out[i] = _read_or_error(lambda r: _read_range(src, uri, r["offset"], r["size"]), refs[i])
            except OSError as exc:
                for i in order:
                    out[i] = out[i] if out[i] is not None else exc
    return out  # type: ignore[return-value]


def _gzip_stream(fs: Any, path: str, uri: str, offset: int):
    """A decompressed stream of a gzip container at or before `offset`, continuing where the last
    read of it in this process stopped (curate.readers.compression.OpenStreams). Keyed by the file's size
    and mtime too, so a replaced file is never read through an old stream."""
    info = fs.info(path)
    key = (uri, info.get("size"), info.get("mtime"), info.get("ETag") or info.get("etag"))
    return STREAMS.at_or_before(key, offset, lambda: fs.open(path, "rb"))


def _read_or_error(read: Callable[[Mapping[str, Any]], bytes], ref: Mapping[str, Any]) -> ReadResult:
    try:
        return read(ref)
    except (UnreadableImage, OSError) as exc:
        return exc


def parquet_member(row: int, column: str) -> str:
    return f"row={row};column={column}"


def _parquet_cell(uri: str, member: str) -> bytes:
    import pyarrow.parquet as pq
    parts = dict(p.split("=", 1) for p in member.split(";"))
    row, column = int(parts["row"]), parts["column"]
    fs, path = _filesystem(uri)
    with fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        start = 0
        for rg in range(pf.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            if row < start + n:
                value = pf.read_row_group(rg, columns=[column]).column(0)[row - start].as_py()
                break
            start += n
        else:
            raise UnreadableImage("missing_member", f"{uri}: row {row} out of range")
    if "item" in parts:   # one entry of a list cell (an OBELICS-layout document's images)
        item = int(parts["item"])
        value = value[item] if isinstance(value, list) and 0 <= item < len(value) else None
    if isinstance(value, dict):
        value = value.get("bytes")
    if not isinstance(value, (bytes, bytearray)):
        raise UnreadableImage("missing_member", f"{uri}: {member} holds no bytes")
    return bytes(value)
