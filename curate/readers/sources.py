"""What every reader shares: the source spec, row builders for good and bad samples, and file listing.

Listing rules (what a user's glob means):
* brace expansion as img2dataset users write it: ``shards/{00000..00099}.tar`` (zero padding kept)
  and ``{a,b}``; then glob (local or fsspec URL); only regular files are listed (a FIFO or a device
  matched by a glob is never opened);
* in a ``webdataset`` source, img2dataset's sidecars (``*.parquet``, ``*_stats.json``) are skipped;
* a source that matches no file is an error naming ``sources[i].path`` (never a silent empty source).
"""
from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import fsspec

from curate.media import identity
from curate.media import images as I
from curate.base import records as R
from curate.base.stage import BadSample  # noqa: F401 — the one BadSample; readers raise it with a status
from curate.readers.timed_io import DEFAULT_READ_TIMEOUT_S

FORMATS = ("webdataset", "parquet", "llava", "obelics", "mint1t")
KEY_PREFIXES = (None, "shard")
WDS_SIDECARS = (".parquet", "_stats.json")
MAX_BRACE_EXPANSION = 1_000_000
DEFAULT_MAX_IMAGE_BYTES = 64 << 20   # larger than any training image we know of; /dev/zero-style reads stop here
DEFAULT_FETCH_TIMEOUT_S = 30.0
# Hostile sizes (a record is data, not a promise): past these a record is rejected before any later stage
# holds it. 8 MiB of text is ~2M tokens, beyond any context a packer fills; 1,024 images per record is
# beyond any interleaved corpus we know (OBELICS / MINT documents hold tens), and each reference is a
# read of up to max_image_bytes.
DEFAULT_MAX_TEXT_BYTES = 8 << 20
DEFAULT_MAX_IMAGES_PER_RECORD = 1024


@dataclass(frozen=True)
class SourceSpec:
    """One input of a recipe. `path` is a glob (local or fsspec URL), with brace ranges."""
    name: str
    path: str
    format: str
    category: str = "caption"
    image_root: str | None = None          # llava/parquet: base for relative image paths, and the only
    #                                        place (with the record file's folder when unset) they may point
    text_column: str = "text"              # parquet
    image_column: str = "image"            # parquet
    key_column: str | None = "key"         # parquet; falls back to the row number
    key_prefix: str | None = None          # "shard": keys become "{shard}/{key}", shard = the file's path below
    #                                        the glob's fixed folder, without extension (run1/00000)
    allowed_hosts: tuple[str, ...] = ()    # http(s) image references are fetched only from these hosts
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES          # caption + conversation turns, UTF-8 bytes
    max_images_per_record: int = DEFAULT_MAX_IMAGES_PER_RECORD
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S        # one read of a source file or a local image
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.key_prefix not in KEY_PREFIXES:
            raise ValueError(f"key_prefix: must be null or 'shard', got {self.key_prefix!r}")
        object.__setattr__(self, "allowed_hosts", tuple(h.lower() for h in self.allowed_hosts))


def unreadable(reason: str, exc: BaseException) -> BadSample:
    """A quarantined BadSample for a file that could not be read: `reason`, or ``read_timeout`` when
    the read ran past the source's read_timeout_s (curate.readers.timed_io)."""
    return BadSample("read_timeout" if isinstance(exc, TimeoutError) else reason, str(exc), R.QUARANTINED)


class NoSourceFiles(ValueError):
    """A source whose path matches no regular file."""


# --- rows ---------------------------------------------------------------------------------------
def _fixed_folder(pattern: str) -> str:
    """The folder above the first wildcard or brace of a pattern ("/d/run*/{0..3}.tar" -> "/d")."""
    m = re.search(r"[*?\[{]", pattern)
    return posixpath.dirname(pattern[:m.start()] if m else pattern)


def shard_label(pattern: str, uri: str) -> str:
    """What distinguishes this file among the source's files: its path below the pattern's fixed
    folder, without extension. Two img2dataset runs globbed together (run1/00000.tar,
    run2/00000.tar) get different labels; the bare file stem would collide."""
    if "://" not in pattern:
        pattern, uri = os.path.abspath(pattern), os.path.abspath(uri)
    base = _fixed_folder(pattern).rstrip("/")
    rel = uri[len(base) + 1:] if base and uri.startswith(base + "/") else posixpath.basename(uri)
    directory, name = posixpath.split(rel)
    stem = name.split(".", 1)[0]
    return posixpath.join(directory, stem) if directory else stem


def check_image_count(spec: SourceSpec, count: int) -> None:
    """Refuse a record with more image references than max_images_per_record, before any is read."""
    if count > spec.max_images_per_record:
        raise BadSample("too_many_images", f"{count} image references > max_images_per_record={spec.max_images_per_record}", R.REJECTED)


def check_text_size(spec: SourceSpec, text: str | None, conversations: list[dict] | None) -> None:
    """Refuse a record whose caption and turns together are over max_text_bytes of UTF-8 (a 50 MB
    caption must not reach tokenization, where it would cost gigabytes). Characters bound the bytes
    from both sides (1 to 4 each): only a record near the limit is encoded to count them."""
    limit = spec.max_text_bytes
    parts = [p for p in [text, *(t.get("content") for t in conversations or () if isinstance(t, dict))]
             if isinstance(p, str)]
    chars = sum(len(p) for p in parts)
    if 4 * chars <= limit:
        return
    if chars > limit or sum(len(p.encode("utf-8", "surrogatepass")) for p in parts) > limit:
        raise BadSample("text_too_long", f"over {limit} bytes of text (max_text_bytes)", R.REJECTED)


def admit_record(rec: Any, key: str, seen: set[str], uri: str, key_label: str = "") -> dict:
    """A parsed record, or the BadSample that rejects it: a parse failure (`rec` is one), a value that
    is not a JSON object, or a key already `seen` in this read of `uri` (its detail names the key after
    `key_label`: LLaVA's "id ", none for documents). A record let in adds its key to `seen`."""
    if isinstance(rec, BadSample):
        raise rec
    if not isinstance(rec, dict):
        raise BadSample("invalid_record", "record is not an object", R.REJECTED)
    if key in seen:
        raise BadSample("duplicate_key", f"{key_label}{key} appears twice in {uri}", R.REJECTED)
    seen.add(key)
    return rec


def make_row(spec: SourceSpec, key: str, ordinal: int, provenance: dict, **fields: Any) -> dict[str, Any]:
    """A record row. A row with content (text, conversations, images) is checked against the source's
    size limits here, the one place every reader's rows pass: BadSample for the caller to record."""
    if fields.get("text") is not None or fields.get("conversations") is not None:
        check_text_size(spec, fields.get("text"), fields.get("conversations"))
    if fields.get("images"):
        check_image_count(spec, len(fields["images"]))
    if spec.key_prefix == "shard":
        key = f"{shard_label(spec.path, provenance['uri'])}/{key}"
    row = {"key": f"{spec.name}/{key}", "source": spec.name, "category": spec.category,
           "images": [], "videos": [], "text": None, "conversations": None, "meta": None,
           "provenance": R.dumps_meta(provenance), R.ORDINAL: ordinal, R.STATUS: R.KEPT,
           R.REASON: None, R.DETAIL: None}
    row.update(fields)
    return row


def bad_row(spec: SourceSpec, key: str, ordinal: int, provenance: dict, bad: BadSample) -> dict[str, Any]:
    row = make_row(spec, key, ordinal, provenance)
    row.update({R.STATUS: bad.status, R.REASON: bad.reason, R.DETAIL: bad.detail[:500] or None})
    return row


def image_ref_from_bytes(data: bytes, uri: str, member: str | None, offset: int) -> dict:
    """Header-only probe plus the content hash the shard writer verifies later."""
    try:
        header = I.probe(data)
    except I.UnreadableImage as exc:
        raise BadSample(f"image:{exc.reason}", exc.detail, status=R.QUARANTINED) from None
    return R.image_ref(uri, member, offset, len(data), header.width, header.height, header.format,
                       sha256=identity.sha256_bytes(data))


def decode_text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadSample(f"{what}_not_utf8", str(exc), R.REJECTED) from None


# --- listing ------------------------------------------------------------------------------------
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """``a{00..02}b`` -> a00b a01b a02b; ``{x,y}`` -> both; left to right, nested groups expanded."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    rng = _RANGE.match(body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        step = 1 if hi >= lo else -1
        if abs(hi - lo) + 1 > MAX_BRACE_EXPANSION:
            raise ValueError(f"brace range {{{body}}} expands to more than {MAX_BRACE_EXPANSION} names")
        width = len(rng.group(1)) if rng.group(1).lstrip("-").startswith("0") else 0
        options = [str(v).zfill(width) for v in range(lo, hi + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        return [head + "{" + body + "}" + t for t in expand_braces(tail)]  # literal braces
    out: list[str] = []
    for option in options:
        out.extend(expand_braces(head + option + tail))
        if len(out) > MAX_BRACE_EXPANSION:
            raise ValueError(f"brace pattern {pattern!r} expands to more than {MAX_BRACE_EXPANSION} names")
    return out


def _protocol_prefix(fs: fsspec.AbstractFileSystem) -> str:
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return "" if protocol in ("file", "local") else f"{protocol}://"


def list_files(pattern: str, format: str | None = None) -> list[str]:
    """Sorted regular files matching a glob (braces expanded); fsspec protocols keep their prefix."""
    found: set[str] = set()
    for pat in expand_braces(pattern):
        fs, _ = fsspec.core.url_to_fs(pat)
        prefix = _protocol_prefix(fs)
        if prefix:
            # fsspec shares one filesystem per process and caches its listings (sizes, ETags): a run in
            # a long-lived process must see the bucket as it is now, not as an earlier run listed it
            # (a stale ETag would hide a replaced object, and s3fs's If-Match reads of it would fail).
            fs.invalidate_cache()
        is_glob = any(ch in pat for ch in "*?[")
        matches = fs.glob(pat) if is_glob else [fs._strip_protocol(pat)]
        for m in matches:
            if format == "webdataset" and is_glob and m.endswith(WDS_SIDECARS):
                continue
            if fs.isfile(m):
                found.add(prefix + m if prefix and not m.startswith(prefix) else m)
    return sorted(found)


def source_files(spec: SourceSpec, index: int) -> list[str]:
    """The files of `sources[index]`; an error naming the field when there are none."""
    files = list_files(spec.path, spec.format)
    if not files:
        raise NoSourceFiles(f"sources[{index}].path: {spec.path!r} matches no regular file")
    return files
