"""Content identities for inputs: what a resume compares to decide that a source is unchanged.

Why not ``(size, mtime)``: a same-size rewrite within the mtime's resolution is missed, copies with
preserved times look unchanged, and a remote URI says nothing about its bytes. An identity here is
``{"size", "sha256"}`` of the bytes (streamed in 1 MiB chunks, never the whole file in memory), or,
for an object store that gives one, its ``ETag`` (the store's own content identity, free to read).

Hashing a large corpus on every run would be slow, so an optional ``IdentityCache`` (a JSON file in
the run directory) reuses a hash while ``(size, mtime_ns, ctime_ns, inode)`` is unchanged. ``ctime``
cannot be set from user space (``touch -d`` / ``os.utime`` change mtime, and bump ctime), so a
rewrite that restores the old mtime is still caught.

Referenced media (LLaVA/parquet image paths) are hashed by the readers while they read them, and
the digest is stored in the image reference (``images[].sha256``); ``stale_media`` re-checks those
references on resume and the shard writer verifies each image's bytes against it before writing.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import fsspec

from curate.base.diskspace import writing
from curate.readers.timed_io import DEFAULT_READ_TIMEOUT_S, ReadTimeout, open_timed

CHUNK = 1 << 20
ETAG_KEYS = ("ETag", "etag", "e_tag", "md5Hash")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stat_key(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class IdentityCache:
    """sha256 per local path, valid while the file's stat key is unchanged."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.entries: dict[str, list] = {}
        if self.path and self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (ValueError, OSError):
                self.entries = {}

    def get(self, path: str, key: list[int]) -> str | None:
        hit = self.entries.get(path)
        return hit[1] if isinstance(hit, list) and len(hit) == 2 and hit[0] == key else None

    def put(self, path: str, key: list[int], digest: str) -> None:
        self.entries[path] = [key, digest]

    def save(self) -> None:
        if self.path:
            tmp = self.path.with_suffix(".tmp")
            with writing(self.path):
                tmp.write_text(json.dumps(self.entries, sort_keys=True))
            os.replace(tmp, self.path)


def _hash_stream(fh: Any) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    while True:
        chunk = fh.read(CHUNK)
        if not chunk:
            return size, h.hexdigest()
        size += len(chunk)
        h.update(chunk)


def file_identity(uri: str, cache: IdentityCache | None = None,
                  read_timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> dict[str, Any]:
    """The content identity of one file: ETag when a store gives it, else size + sha256 of the bytes.
    A file whose bytes do not come within `read_timeout_s` (a stalled mount) is ``{"read_timeout": true}``:
    the run goes on, and its reader records the file's samples as ``read_timeout``."""
    fs, path = fsspec.core.url_to_fs(uri)
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    if protocol in ("file", "local"):
        key = _stat_key(path)
        if key is None:
            return {"missing": True}
        cached = cache.get(path, key) if cache else None
        if cached:
            return {"size": key[0], "sha256": cached}
        try:
            with open_timed(path, read_timeout_s) as fh:
                size, digest = _hash_stream(fh)
        except ReadTimeout:
            return {"size": key[0], "read_timeout": True}
        if cache and _stat_key(path) == key:   # unchanged while we read it
            cache.put(path, key, digest)
        return {"size": size, "sha256": digest}
    info = fs.info(path)
    etag = next((info[k] for k in ETAG_KEYS if info.get(k)), None)
    if etag:
        return {"size": info.get("size"), "etag": str(etag).strip('"')}
    try:
        with open_timed(uri, read_timeout_s) as fh:
            size, digest = _hash_stream(fh)
    except ReadTimeout:
        return {"size": info.get("size"), "read_timeout": True}
    return {"size": size, "sha256": digest}


def fingerprint_inputs(uris: Iterable[str], cache: IdentityCache | None = None) -> list[list[Any]]:
    """[uri, identity] for every input file, in the given (stable) order: what the ingest fingerprint hashes."""
    return [[u, file_identity(u, cache)] for u in uris]


def stale_media(image_refs: Iterable[dict], changed_after_ns: int | None = None) -> list[str]:
    """The first plain-file image reference whose bytes no longer match the sha256 recorded at
    ingest (empty when all match). Streams `image_refs` and keeps no per-reference state, so it is
    flat in memory for any number of images.

    With `changed_after_ns` (when ingest started), a file whose size is unchanged and whose ctime is
    older is not re-hashed: any write, copy, rename into place or ``utime`` since then sets ctime to
    the time of the change, and ctime cannot be set back from user space.

    Only references to whole files (``member`` null) are checked here: images inside tars and
    parquet files are covered by their container's identity.
    """
    for ref in image_refs:
        if not ref or ref.get("member") or not ref.get("sha256"):
            continue
        uri = ref["uri"]
        if "://" in uri and not uri.startswith("file://"):
            continue  # remote: verified by the reader of the bytes (shard writer), not re-fetched here
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        try:
            st = os.stat(path)
        except OSError:
            return [uri]
        if st.st_size != ref.get("size"):
            return [uri]
        if changed_after_ns is not None and st.st_ctime_ns < changed_after_ns:
            continue
        if file_identity(path).get("sha256") != ref["sha256"]:
            return [uri]
    return []


class MediaChanged(ValueError):
    """Bytes read again for an image differ from what ingest recorded (size or sha256)."""
    reason = "image:changed_since_ingest"


def verify_ref_bytes(ref: dict, data: bytes) -> bytes:
    """Return `data` if it is what ingest read for `ref` (size, then sha256), else raise MediaChanged.

    For whoever reads image bytes again (the shard writer, pixel filters): a file replaced after
    ingest must not be written under the old size and dimensions. Refs without a sha256 (written
    before it existed) are checked by size only.
    """
    size = ref.get("size")
    if size is not None and size >= 0 and len(data) != size:
        raise MediaChanged(f"{ref.get('uri')}: {len(data)} bytes now, {size} at ingest")
    digest = ref.get("sha256")
    if digest and sha256_bytes(data) != digest:
        raise MediaChanged(f"{ref.get('uri')}: content differs from ingest (sha256)")
    return data
