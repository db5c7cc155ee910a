"""Image references: probing headers without decoding, and reading the bytes back when needed.

Ingest stores a reference (container URI + member + byte offset) and the width/height from the
header. Stages that need pixels (image rules, CLIP) and the shard writer call ``read_image_bytes``;
nothing else touches image bytes. Pillow's ``Image.open`` reads only the header until ``load()``.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

import fsspec
from PIL import Image

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


def probe(data: bytes) -> ImageHeader:
    """Width, height and format from the header only. Raises UnreadableImage with a reason code."""
    if not data:
        raise UnreadableImage("empty_image", "zero bytes")
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        raise UnreadableImage("not_an_image", "looks like HTML/XML")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                width, height, fmt = im.size[0], im.size[1], (im.format or "UNKNOWN")
    except Image.DecompressionBombError as exc:
        raise UnreadableImage("decompression_bomb", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 — Pillow raises many types for garbage
        raise UnreadableImage("not_an_image", f"{type(exc).__name__}: {exc}") from None
    if width <= 0 or height <= 0:
        raise UnreadableImage("invalid_dimensions", f"{width}x{height}")
    if fmt == "JPEG" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise UnreadableImage("truncated_image", "JPEG without end-of-image marker")
    if fmt == "PNG" and b"IEND" not in data[-64:]:
        raise UnreadableImage("truncated_image", "PNG without IEND chunk")
    return ImageHeader(width, height, fmt)


def decode(data: bytes, mode: str = "RGB", max_pixels: int = MAX_DECODE_PIXELS) -> Image.Image:
    """Full decode with a pixel budget checked from the header first (decompression bombs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im = Image.open(io.BytesIO(data))
        if im.size[0] * im.size[1] > max_pixels:
            raise UnreadableImage("too_large_to_decode", f"{im.size[0]}x{im.size[1]} > {max_pixels} pixels")
        try:
            im.load()
        except Exception as exc:  # noqa: BLE001
            raise UnreadableImage("corrupt_image", f"{type(exc).__name__}: {exc}") from None
    return im.convert(mode) if mode and im.mode != mode else im


@lru_cache(maxsize=64)
def _filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def read_image_bytes(ref: Mapping[str, Any]) -> bytes:
    """The encoded bytes an image reference points at (tar member, parquet cell, or plain file)."""
    uri, member = ref["uri"], ref.get("member")
    offset, size = ref.get("offset", -1), ref.get("size", -1)
    fs, path = _filesystem(uri)
    if member and member.startswith("row=") and path.endswith(".parquet"):
        return _parquet_cell(uri, member)
    if offset is not None and offset >= 0 and size is not None and size >= 0:
        with fs.open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
        if len(data) != size:
            raise UnreadableImage("truncated_container", f"{uri}: wanted {size} bytes at {offset}, got {len(data)}")
        return data
    if member:
        import tarfile
        with fs.open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r:*") as tar:
            f = tar.extractfile(member)
            if f is None:
                raise UnreadableImage("missing_member", f"{uri}:{member}")
            return f.read()
    with fs.open(path, "rb") as fh:
        return fh.read()


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
    if isinstance(value, dict):
        value = value.get("bytes")
    if not isinstance(value, (bytes, bytearray)):
        raise UnreadableImage("missing_member", f"{uri}: {member} holds no bytes")
    return bytes(value)
