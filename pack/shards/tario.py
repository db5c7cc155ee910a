"""Deterministic tar writing and index-based tar reading for shards.

Why our own thin layer over ``tarfile``: the same packs must give byte-identical shards on every
run and machine (so a re-run after a crash can be checked with sha256, and CI can diff outputs).
Python's default TarInfo carries the writer's clock, user and group; PAX headers can carry
timestamps. Here every header is fixed: USTAR format, mtime 0, uid/gid 0, empty user/group names,
mode 0o644, regular files only, members in the order given.

Reading goes through a header index (member name -> data offset and size) so that a DataLoader
worker can seek to the packs it owns instead of streaming every byte of a shard.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Iterable

TAR_FORMAT = tarfile.USTAR_FORMAT


def member_info(name: str, size: int) -> tarfile.TarInfo:
    """A TarInfo with every field fixed, so equal content gives equal header bytes."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = 0
    info.gid = 0
    info.uname = ""
    info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_tar(path: str, members: Iterable[tuple[str, bytes]]) -> None:
    """Write `members` (name, bytes) in the given order to a new uncompressed USTAR tar at `path`."""
    with open(path, "wb") as raw:
        write_tar_stream(raw, members)


def write_tar_stream(fileobj: BinaryIO, members: Iterable[tuple[str, bytes]]) -> None:
    with tarfile.open(fileobj=fileobj, mode="w", format=TAR_FORMAT) as tar:
        seen: set[str] = set()
        for name, data in members:
            if name in seen:
                raise ValueError(f"duplicate tar member {name!r}")
            seen.add(name)
            tar.addfile(member_info(name, len(data)), io.BytesIO(data))


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    write_tar_stream(buf, members)
    return buf.getvalue()


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class MemberRef:
    """Where one member's data lies inside a tar file."""
    name: str
    offset: int
    size: int


def index_tar(path: str) -> list[MemberRef]:
    """Member names with data offsets, in archive order, reading headers only (tarfile seeks past data).

    Raises tarfile.TarError / ValueError for a damaged archive and for non-regular members, which our
    writer never produces.
    """
    out: list[MemberRef] = []
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if not info.isreg():
                raise ValueError(f"{path}: member {info.name!r} is not a regular file")
            out.append(MemberRef(info.name, info.offset_data, info.size))
    return out


def read_member(fh: BinaryIO, ref: MemberRef) -> bytes:
    fh.seek(ref.offset)
    data = fh.read(ref.size)
    if len(data) != ref.size:
        raise ValueError(f"member {ref.name!r}: wanted {ref.size} bytes, got {len(data)} (truncated tar)")
    return data


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the sample key is the basename up to the FIRST dot, the rest is the extension."""
    base = os.path.basename(name)
    head = name[: len(name) - len(base)]
    if "." not in base:
        return name, ""
    key, ext = base.split(".", 1)
    return head + key, ext
