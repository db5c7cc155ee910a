"""WebDataset tars as img2dataset writes them: ``{key}.jpg|png|webp`` + ``{key}.txt`` and/or
``{key}.json``; video samples as video2dataset writes them: ``{key}.mp4|webm`` + the same text
members (a sample may hold images, videos or both; the header of each is probed, never decoded).

Members are grouped by key (the basename up to its first dot, as webdataset does). Nothing is
extracted to disk, so a member named ``../x.jpg`` cannot escape; it is rejected by name. Members that
are not regular files (symlinks, hard links, devices, FIFOs) are never followed: their sample is
rejected as ``unsupported_member_type`` so it stays in the accounting. A member larger than the
source's ``max_image_bytes`` is not read (videos included: a member is read whole, to hash it). A tar cut off mid-member keeps every complete sample before
the cut and quarantines the rest.

gzip-compressed shards (``.tar.gz``, ``.tgz``; recognised by content, see ``curate.readers.compression``) are
read as the ``webdataset`` library reads them; a member's recorded offset is then its offset in the
decompressed tar. A compressed shard cut short keeps the samples before the cut, like a plain one.
"""
from __future__ import annotations

import posixpath
import tarfile
from typing import Any, Iterator

from curate.media import images as I
from curate.readers.compression import DECOMPRESS_ERRORS, open_decompressed
from curate.base import records as R
from curate.readers.jsonl import strict_json
from curate.readers.sources import BadSample, SourceSpec, bad_row, decode_text, image_ref_from_bytes, make_row, unreadable
from curate.readers.timed_io import open_timed
from curate.media.video import VIDEO_EXTENSIONS, video_ref_from_bytes

_NOT_A_FILE = "not-a-regular-file"
# What reading a damaged (or damaged and compressed) tar raises: a recorded quarantine, never a crash.
TAR_ERRORS: tuple[type[BaseException], ...] = (tarfile.TarError, *DECOMPRESS_ERRORS)


def _wds_key(name: str) -> tuple[str, str]:
    directory, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return (posixpath.join(directory, stem) if directory else stem), ext.lower()


def _unsafe(name: str) -> bool:
    return name.startswith("/") or ".." in name.split("/") or "\\" in name or "\x00" in name


def _member_kind(info: tarfile.TarInfo) -> str:
    return ("symlink" if info.issym() else "hardlink" if info.islnk() else "device" if info.isdev()
            else "fifo" if info.isfifo() else "special")


class _TarWalk:
    """State of one pass over a tar: the current key's members and the running row number."""

    def __init__(self, spec: SourceSpec, uri: str, source_index: int, file_index: int, fields: Any = None):
        self.spec, self.uri, self.si, self.fi = spec, uri, source_index, file_index
        self.fields = fields or _wds_fields   # one key's members -> the record's fields (mint1t: a document)
        self.row_index = 0
        self.seen: set[str] = set()
        self.key: str | None = None
        self.group: dict[str, tuple[bytes | str, int, str]] = {}

    def ordinal(self) -> int:
        o = R.make_ordinal(self.si, self.fi, self.row_index)
        self.row_index += 1
        return o

    def bad(self, key: str, members: list[str], bad: BadSample) -> dict:
        return bad_row(self.spec, key, self.ordinal(), {"uri": self.uri, "members": members}, bad)

    def flush(self) -> Iterator[dict]:
        if self.key is None:
            return
        key, group = self.key, self.group
        self.key, self.group = None, {}
        prov = {"uri": self.uri, "members": sorted(m for _, _, m in group.values())}
        ordinal = self.ordinal()
        try:
            if key in self.seen:
                raise BadSample("duplicate_key", f"{key} appears twice in {self.uri}", R.REJECTED)
            self.seen.add(key)
            yield make_row(self.spec, key, ordinal, prov, **self.fields(key, group, self.uri, self.spec))
        except BadSample as bad:
            yield bad_row(self.spec, key, ordinal, prov, bad)

    def add(self, key: str, ext: str, value: bytes | str, offset: int, name: str) -> Iterator[dict]:
        if key != self.key:
            yield from self.flush()
        self.key = key
        if ext in self.group:
            ext = f"{ext}#dup"  # same member twice in one group: counted as a duplicate key
        self.group[ext] = (value, offset, name)


def read_webdataset(spec: SourceSpec, uri: str, source_index: int, file_index: int) -> Iterator[dict]:
    yield from read_tar(spec, uri, source_index, file_index)


def read_tar(spec: SourceSpec, uri: str, source_index: int, file_index: int, fields: Any = None) -> Iterator[dict]:
    """The records of one tar, a key's members grouped into one record by `fields` (default: an
    img2dataset sample); every walking rule above (unsafe names, special members, cuts) applies."""
    walk = _TarWalk(spec, uri, source_index, file_index, fields)
    with open_timed(uri, spec.read_timeout_s) as fh:
        try:
            tar = tarfile.open(fileobj=open_decompressed(fh), mode="r:")
        except TAR_ERRORS as exc:
            yield walk.bad(posixpath.basename(uri), [], unreadable("unreadable_tar", exc))
            return
        yield from _walk_members(tar, walk)


def _walk_members(tar: tarfile.TarFile, walk: _TarWalk) -> Iterator[dict]:
    while True:
        try:
            info = tar.next()
        except TAR_ERRORS as exc:
            if isinstance(exc, TimeoutError):
                raise   # stalled: the rest of the file is recorded as read_timeout (curate.readers.read)
            if walk.key is not None:
                key, walk.key, walk.group = walk.key, None, {}
                yield walk.bad(key, [], BadSample("truncated_tar", str(exc), R.QUARANTINED))
            return
        if info is None:
            break
        if info.isdir():
            continue
        name = info.name
        if _unsafe(name):
            yield from walk.flush()
            yield walk.bad(name, [name], BadSample("unsafe_member_name", name, R.REJECTED))
            continue
        key, ext = _wds_key(name)
        if key != walk.key:
            yield from walk.flush()   # the previous sample is complete before this member is read
        if not info.isfile():
            yield from walk.add(key, ext, f"{name} is a {_member_kind(info)}", -1, name)
            continue
        if info.size > walk.spec.max_image_bytes:
            yield from walk.add(key, ext, f"{name}: {info.size} bytes > max_image_bytes", -1, name)
            continue
        try:
            f = tar.extractfile(info)
            data = f.read() if f is not None else b""
            if len(data) != info.size:
                raise tarfile.ReadError(f"member {name}: {len(data)} of {info.size} bytes")
        except TAR_ERRORS as exc:
            if isinstance(exc, TimeoutError):
                raise
            walk.key, walk.group = None, {}
            yield walk.bad(key, [name], BadSample("truncated_tar", str(exc), R.QUARANTINED))
            return
        yield from walk.add(key, ext, data, info.offset_data, name)
    yield from walk.flush()


def check_group(key: str, group: dict[str, tuple[bytes | str, int, str]]) -> None:
    """Reject a sample's member group that no field reader may use: a member repeated under one key, or
    a member the walk left unread (too large, not a regular file; its value is then the reason)."""
    if any(ext.endswith("#dup") for ext in group):
        raise BadSample("duplicate_key", f"{key} has a repeated member", R.REJECTED)
    unusable = [v for v, _, _ in group.values() if isinstance(v, str)]
    if unusable:
        reason = "member_too_large" if "max_image_bytes" in unusable[0] else "unsupported_member_type"
        raise BadSample(reason, "; ".join(unusable), R.REJECTED)


def _wds_fields(key: str, group: dict[str, tuple[bytes | str, int, str]], uri: str, spec: SourceSpec) -> dict:
    check_group(key, group)
    image_exts = [e for e in group if e.rsplit(".", 1)[-1] in I.IMAGE_EXTENSIONS]
    video_exts = [e for e in group if e.rsplit(".", 1)[-1] in VIDEO_EXTENSIONS]
    meta = None
    if "json" in group:
        try:
            meta = strict_json(group["json"][0])
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadSample("invalid_metadata", str(exc), R.REJECTED) from None
    text = None
    if "txt" in group:
        text = decode_text(group["txt"][0], "caption")
    elif isinstance(meta, dict) and isinstance(meta.get("caption"), str):
        text = meta["caption"]
    if not image_exts and not video_exts:
        raise BadSample("missing_image", f"no image or video member; members: {sorted(group)}", R.REJECTED)
    if text is None:
        raise BadSample("missing_text", "no .txt member and no caption in .json", R.REJECTED)
    refs = []
    for ext in sorted(image_exts):
        data, offset, member = group[ext]
        refs.append(image_ref_from_bytes(data, uri, member, offset))
    videos = []
    for ext in sorted(video_exts):
        data, offset, member = group[ext]
        videos.append(video_ref_from_bytes(data, uri, member, offset))
    category = spec.category
    if isinstance(meta, dict) and isinstance(meta.get("category"), str):
        category = meta["category"]
    return {"images": refs, "videos": videos, "text": text, "meta": R.dumps_meta(meta), "category": category}
