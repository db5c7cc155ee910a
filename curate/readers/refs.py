"""Image references inside records (LLaVA ``image``, parquet path cells): where they may point, and
reading them with bounds.

Why: a record is data, not a trusted instruction. ``../outside/secret.png``, ``/etc/...``,
``file:///home/...`` or ``http://169.254.169.254/...`` in a downloaded annotation file would copy
private bytes into training shards (or make the curation machine fetch internal URLs). So:

* a local reference resolves inside the source's root (``image_root``, else the folder of the record
  file), after following symlinks; anything else is ``image:outside_root``;
* ``http(s)`` is fetched only from the source's ``allowed_hosts`` (off by default:
  ``image:remote_not_allowed``), redirects included; other protocols are ``image:unsupported_protocol``
  unless the root itself lives on that store;
* a non-string image field is ``image:invalid_reference``, never a crash;
* only regular files are opened (``O_NONBLOCK`` so a FIFO cannot block the open, then ``fstat``);
  every read stops at ``max_image_bytes``; a file read (local or object store) that does not answer
  within ``read_timeout_s`` is ``image:read_timeout`` (a stalled mount, ``curate.readers.timed_io``), and a
  fetch past ``fetch_timeout_s`` (a host that accepts and never answers included) is ``image:fetch_timeout``.
"""
from __future__ import annotations

import os
import posixpath
import re
import socket
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import fsspec

from curate.base import records as R
from curate.readers.sources import BadSample, SourceSpec
from curate.readers.timed_io import ReadTimeout, call_with_deadline

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
REMOTE_SCHEMES = ("http", "https")


def _scheme(s: str) -> str | None:
    m = _SCHEME.match(s)
    return m.group(1).lower() if m else None


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve_reference(value: object, root: str, spec: SourceSpec) -> str:
    """The URI a record's image reference may be read from, or BadSample naming why not."""
    if not isinstance(value, str) or not value or "\x00" in value:
        raise BadSample("image:invalid_reference", f"image field is {type(value).__name__}: {str(value)[:80]!r}", R.REJECTED)
    scheme, root_scheme = _scheme(value), _scheme(root)
    if scheme in REMOTE_SCHEMES:
        host = (urllib.parse.urlsplit(value).hostname or "").lower()
        if host not in spec.allowed_hosts:
            raise BadSample("image:remote_not_allowed",
                            f"{value[:200]}: host {host!r} is not in this source's allowed_hosts", R.REJECTED)
        return value
    if scheme == "file":
        value, scheme = urllib.parse.unquote(urllib.parse.urlsplit(value).path), None
    if scheme is not None:
        if scheme != root_scheme:
            raise BadSample("image:unsupported_protocol", f"{value[:200]}: protocol {scheme!r} is not read", R.REJECTED)
        normalized = scheme + "://" + posixpath.normpath(value[len(scheme) + 3:])
        if not _inside(normalized, root.rstrip("/")):
            raise BadSample("image:outside_root", f"{value[:200]} is outside {root}", R.REJECTED)
        return normalized
    if root_scheme is not None:   # relative reference below a remote root
        joined = root.rstrip("/") + "/" + value
        normalized = root_scheme + "://" + posixpath.normpath(joined[len(root_scheme) + 3:])
        if value.startswith("/") or not _inside(normalized, root.rstrip("/")):
            raise BadSample("image:outside_root", f"{value[:200]} is outside {root}", R.REJECTED)
        return normalized
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(root, value))   # an absolute `value` replaces root here
    if not _inside(real, real_root):
        raise BadSample("image:outside_root", f"{value[:200]} resolves outside {root}", R.REJECTED)
    return real


def read_reference(uri: str, spec: SourceSpec) -> bytes:
    """The bytes of a resolved reference: regular files only, at most max_image_bytes, bounded in time."""
    scheme = _scheme(uri)
    if scheme in REMOTE_SCHEMES:
        return _fetch(uri, spec)
    try:
        return call_with_deadline(lambda: _read_file(uri, scheme, spec), spec.read_timeout_s, f"reading {uri[:200]}")
    except ReadTimeout as exc:
        raise BadSample("image:read_timeout", str(exc), R.QUARANTINED) from None


def _read_file(uri: str, scheme: str | None, spec: SourceSpec) -> bytes:
    if scheme is None:
        return _read_local(uri, spec.max_image_bytes)
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        info = fs.info(path)
    except (FileNotFoundError, OSError) as exc:
        raise BadSample("image:missing_file", f"{uri}: {exc}", R.QUARANTINED) from None
    if info.get("type") != "file":
        raise BadSample("image:not_regular_file", f"{uri} is a {info.get('type')}", R.REJECTED)
    _check_size(uri, info.get("size"), spec.max_image_bytes)
    with fs.open(path, "rb") as fh:
        return _bounded(fh.read(spec.max_image_bytes + 1), uri, spec.max_image_bytes)


def _check_size(uri: str, size: int | None, limit: int) -> None:
    if size is not None and size > limit:
        raise BadSample("image:too_large", f"{uri}: {size} bytes > max_image_bytes={limit}", R.REJECTED)


def _bounded(data: bytes, uri: str, limit: int) -> bytes:
    if len(data) > limit:
        raise BadSample("image:too_large", f"{uri}: more than max_image_bytes={limit}", R.REJECTED)
    return data


_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def _read_local(path: str, limit: int) -> bytes:
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError as exc:
        raise BadSample("image:missing_file", f"{path}: {exc}", R.QUARANTINED) from None
    except OSError as exc:
        raise BadSample("image:unreadable_file", f"{path}: {exc}", R.QUARANTINED) from None
    return _read_open(fd, path, limit)


def _read_open(fd: int, path: str, limit: int) -> bytes:
    """The bytes of an open descriptor (closed here): a regular file of at most `limit` bytes."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadSample("image:not_regular_file", f"{path} is not a regular file (mode {oct(st.st_mode)})", R.REJECTED)
        _check_size(path, st.st_size, limit)
        chunks, total = [], 0
        while total <= limit:   # the size plus one byte: one read for a file that did not grow
            chunk = os.read(fd, min(limit + 1 - total, max(st.st_size + 1 - total, 1 << 16)))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return _bounded(chunks[0] if len(chunks) == 1 else b"".join(chunks), path, limit)
    finally:
        os.close(fd)


def resolve_and_read(value: object, root: str, spec: SourceSpec, real_dirs: dict[str, str]) -> tuple[str, bytes]:
    """``resolve_reference`` then ``read_reference``, the same URI, bytes and errors, with the
    realpath of each directory computed once (`real_dirs`, the caller's per-task cache): a local
    reference costs one open (``O_NOFOLLOW``: a symlinked file takes the full path below) instead of
    an lstat per path component. Anything but a plain local reference under a local root, and any
    open error but a missing file, takes the full path."""
    if isinstance(value, str) and value and "\x00" not in value and _scheme(value) is None and _scheme(root) is None:
        head, base = os.path.split(os.path.join(root, value))
        if base not in ("", ".", ".."):
            real_root = real_dirs.get(root) or real_dirs.setdefault(root, os.path.realpath(root))
            real_dir = real_dirs.get(head) or real_dirs.setdefault(head, os.path.realpath(head))
            path = os.path.join(real_dir, base)   # realpath(root/value) unless `base` is a symlink
            if _inside(path, real_root):
                if len(real_dirs) > 65_536:
                    real_dirs.clear()
                try:
                    fd = os.open(path, _OPEN_FLAGS | getattr(os, "O_NOFOLLOW", 0))
                except FileNotFoundError as exc:
                    raise BadSample("image:missing_file", f"{path}: {exc}", R.QUARANTINED) from None
                except OSError:
                    fd = -1
                if fd >= 0:
                    return path, _read_open(fd, path, spec.max_image_bytes)
    uri = resolve_reference(value, root, spec)
    return uri, read_reference(uri, spec)


class ReferenceMemo:
    """One task's image references, each distinct (root, value) resolved, read and probed once:
    rows of a metadata file that point at the same few files cost a dictionary lookup each. The
    result (a reference, or why it was refused) is what the first read gave; bounded in entries."""

    MAX_ENTRIES = 65_536

    def __init__(self) -> None:
        self.found: dict[tuple[str, str], dict | tuple[str, str, str]] = {}
        self.real_dirs: dict[str, str] = {}

    def image(self, spec: SourceSpec, root: str, value: object, make_ref: Any) -> dict:
        """`make_ref(bytes, uri)`: the reference record of the bytes (probe and hash)."""
        if not isinstance(value, str):
            return make_ref(*_swap(resolve_and_read(value, root, spec, self.real_dirs)))
        key = (root, value)
        hit = self.found.get(key)
        if hit is None:
            try:
                hit = make_ref(*_swap(resolve_and_read(value, root, spec, self.real_dirs)))
            except BadSample as bad:
                hit = (bad.reason, bad.detail, bad.status)
            if len(self.found) >= self.MAX_ENTRIES:
                self.found.clear()
            self.found[key] = hit
        if isinstance(hit, tuple):
            raise BadSample(*hit)
        return dict(hit)


def _swap(uri_data: tuple[str, bytes]) -> tuple[bytes, str]:
    return uri_data[1], uri_data[0]


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to an allowed host (otherwise an allowed host could bounce us inside)."""

    def __init__(self, allowed: tuple[str, ...]):
        self.allowed = allowed

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 — urllib's signature
        host = (urllib.parse.urlsplit(newurl).hostname or "").lower()
        if _scheme(newurl) not in REMOTE_SCHEMES or host not in self.allowed:
            raise BadSample("image:remote_not_allowed", f"redirect to {newurl[:200]} (host {host!r} not allowed)", R.REJECTED)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _read_with_deadline(resp, url: str, spec: SourceSpec) -> bytes:  # noqa: ANN001 — an HTTPResponse
    """A total time bound (a socket timeout alone restarts with every byte a slow server drips)."""
    deadline = time.monotonic() + spec.fetch_timeout_s
    chunks, total = [], 0
    while True:
        if time.monotonic() > deadline:
            raise BadSample("image:fetch_timeout", f"{url[:200]}: over fetch_timeout_s={spec.fetch_timeout_s}",
                            R.QUARANTINED)
        chunk = resp.read1(1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > spec.max_image_bytes:
            raise BadSample("image:too_large", f"{url[:200]}: more than max_image_bytes={spec.max_image_bytes}", R.REJECTED)


def _fetch(url: str, spec: SourceSpec) -> bytes:
    opener = urllib.request.build_opener(_CheckedRedirects(spec.allowed_hosts),
                                         urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=spec.fetch_timeout_s) as resp:
            length = resp.headers.get("Content-Length")
            _check_size(url, int(length) if length and length.isdigit() else None, spec.max_image_bytes)
            return _read_with_deadline(resp, url, spec)
    except urllib.error.HTTPError as exc:
        raise BadSample("image:fetch_failed", f"{url[:200]}: HTTP {exc.code}", R.QUARANTINED) from None
    except (urllib.error.URLError, OSError) as exc:
        if isinstance(exc, (socket.timeout, TimeoutError)) or isinstance(getattr(exc, "reason", None), socket.timeout):
            raise BadSample("image:fetch_timeout", f"{url[:200]}: no answer within fetch_timeout_s={spec.fetch_timeout_s}",
                            R.QUARANTINED) from None
        raise BadSample("image:fetch_failed", f"{url[:200]}: {exc}", R.QUARANTINED) from None
