"""Readers: turn source files into sample records, recording every bad sample instead of crashing.

Formats:
* ``webdataset`` — tars as img2dataset writes them: ``{key}.jpg|png|webp`` + ``{key}.txt`` and/or
  ``{key}.json``. Members are grouped by key (the basename up to its first dot, as webdataset does).
  Nothing is extracted to disk, so a member named ``../x.jpg`` cannot escape; it is rejected by name.
  A tar cut off mid-member keeps every complete sample before the cut and quarantines the rest.
* ``parquet`` — one row per sample; image column holds a path, raw bytes, or ``{bytes, path}``.
* ``llava`` — LLaVA/ShareGPT JSON or JSONL: ``{id, image(s), conversations: [{from, value}]}``.

Every reader yields plain dict rows in the record schema with ``_status`` set; image width/height
come from the header only (``curate.images.probe``). Paths and globs go through fsspec, so local
paths and ``s3://``-style URLs both work.
"""
from __future__ import annotations

import json
import math
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import fsspec
import pyarrow as pa

from curate import images as I
from curate.base import records as R

FORMATS = ("webdataset", "parquet", "llava")

ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "model": "assistant", "bot": "assistant", "system": "system"}


@dataclass(frozen=True)
class SourceSpec:
    """One input of a recipe. `path` is a glob (local or fsspec URL)."""
    name: str
    path: str
    format: str
    category: str = "caption"
    image_root: str | None = None          # llava/parquet: base for relative image paths
    text_column: str = "text"              # parquet
    image_column: str = "image"            # parquet
    key_column: str | None = "key"         # parquet; falls back to the row number
    options: Mapping[str, Any] = field(default_factory=dict)


class BadSample(Exception):
    """A sample we can name but not use; `status` says rejected (bad content) or quarantined (unreadable)."""

    def __init__(self, reason: str, detail: str = "", status: str = R.REJECTED):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.status = reason, detail, status


def list_files(pattern: str) -> list[str]:
    """Sorted files matching a glob; fsspec protocols keep their prefix so workers can reopen them."""
    fs, _ = fsspec.core.url_to_fs(pattern)
    matches = sorted(fs.glob(pattern)) if any(ch in pattern for ch in "*?[") else [fs._strip_protocol(pattern)]
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    return [prefix + m if prefix and not m.startswith(prefix) else m for m in matches if fs.isfile(m)]


def strict_json(text: str | bytes) -> Any:
    """json.loads that refuses NaN/Infinity (not JSON, and poison for every later statistic)."""
    def refuse(const: str) -> Any:
        raise ValueError(f"non-finite number {const} in JSON")
    return json.loads(text, parse_constant=refuse)


def _row(spec: SourceSpec, key: str, ordinal: int, provenance: dict, **fields: Any) -> dict[str, Any]:
    row = {"key": f"{spec.name}/{key}", "source": spec.name, "category": spec.category,
           "images": [], "videos": [], "text": None, "conversations": None, "meta": None,
           "provenance": R.dumps_meta(provenance), R.ORDINAL: ordinal, R.STATUS: R.KEPT,
           R.REASON: None, R.DETAIL: None}
    row.update(fields)
    return row


def _bad_row(spec: SourceSpec, key: str, ordinal: int, provenance: dict, bad: BadSample) -> dict[str, Any]:
    row = _row(spec, key, ordinal, provenance)
    row.update({R.STATUS: bad.status, R.REASON: bad.reason, R.DETAIL: bad.detail[:500] or None})
    return row


def _image_ref(data: bytes, uri: str, member: str | None, offset: int) -> dict:
    try:
        header = I.probe(data)
    except I.UnreadableImage as exc:
        raise BadSample(f"image:{exc.reason}", exc.detail, status=R.QUARANTINED) from None
    return R.image_ref(uri, member, offset, len(data), header.width, header.height, header.format)


def _decode_text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadSample(f"{what}_not_utf8", str(exc)) from None


# --- webdataset --------------------------------------------------------------------------------------
def _wds_key(name: str) -> tuple[str, str]:
    directory, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return (posixpath.join(directory, stem) if directory else stem), ext.lower()


def _unsafe(name: str) -> bool:
    return name.startswith("/") or ".." in name.split("/") or "\\" in name or "\x00" in name


def read_webdataset(spec: SourceSpec, uri: str, source_index: int, file_index: int) -> Iterator[dict]:
    row_index = 0
    seen: set[str] = set()

    def emit(key: str, group: dict[str, tuple[bytes, int, str]]) -> dict:
        nonlocal row_index
        ordinal = R.make_ordinal(source_index, file_index, row_index)
        row_index += 1
        prov = {"uri": uri, "members": sorted(m for _, _, m in group.values())}
        try:
            if key in seen:
                raise BadSample("duplicate_key", f"{key} appears twice in {uri}")
            seen.add(key)
            return _row(spec, key, ordinal, prov, **_wds_fields(spec, uri, key, group))
        except BadSample as bad:
            return _bad_row(spec, key, ordinal, prov, bad)

    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as fh:
        try:
            tar = tarfile.open(fileobj=fh, mode="r:")
        except (tarfile.TarError, OSError, EOFError) as exc:
            yield _bad_row(spec, posixpath.basename(uri), R.make_ordinal(source_index, file_index, 0),
                           {"uri": uri}, BadSample("unreadable_tar", str(exc), R.QUARANTINED))
            return
        current_key: str | None = None
        group: dict[str, tuple[bytes, int, str]] = {}
        while True:
            try:
                info = tar.next()
            except (tarfile.TarError, OSError, EOFError) as exc:
                if current_key is not None:
                    group = {}
                    yield _bad_row(spec, current_key, R.make_ordinal(source_index, file_index, row_index),
                                   {"uri": uri}, BadSample("truncated_tar", str(exc), R.QUARANTINED))
                    row_index += 1
                    current_key = None
                break
            if info is None:
                break
            if not info.isfile():
                continue
            name = info.name
            if _unsafe(name):
                if current_key is not None:
                    yield emit(current_key, group)
                    current_key, group = None, {}
                yield _bad_row(spec, name, R.make_ordinal(source_index, file_index, row_index),
                               {"uri": uri, "members": [name]}, BadSample("unsafe_member_name", name))
                row_index += 1
                continue
            key, ext = _wds_key(name)
            if key != current_key and current_key is not None:
                yield emit(current_key, group)
                group = {}
            current_key = key
            try:
                f = tar.extractfile(info)
                data = f.read() if f is not None else b""
                if len(data) != info.size:
                    raise tarfile.ReadError(f"member {name}: {len(data)} of {info.size} bytes")
            except (tarfile.TarError, OSError, EOFError) as exc:
                yield _bad_row(spec, key, R.make_ordinal(source_index, file_index, row_index),
                               {"uri": uri, "members": [name]},
                               BadSample("truncated_tar", str(exc), R.QUARANTINED))
                row_index += 1
                current_key, group = None, {}
                break
            if ext in group:
                ext = f"{ext}#dup"  # same member twice in one group: counted as a duplicate key below
            group[ext] = (data, info.offset_data, name)
        if current_key is not None:
            yield emit(current_key, group)


def _wds_fields(spec: SourceSpec, uri: str, key: str, group: dict[str, tuple[bytes, int, str]]) -> dict:
    if any(ext.endswith("#dup") for ext in group):
        raise BadSample("duplicate_key", f"{key} has a repeated member")
    image_exts = [e for e in group if e.rsplit(".", 1)[-1] in I.IMAGE_EXTENSIONS]
    meta = None
    if "json" in group:
        try:
            meta = strict_json(group["json"][0])
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadSample("invalid_metadata", str(exc)) from None
    text = None
    if "txt" in group:
        text = _decode_text(group["txt"][0], "caption")
    elif isinstance(meta, dict) and isinstance(meta.get("caption"), str):
        text = meta["caption"]
    if not image_exts:
        raise BadSample("missing_image", f"members: {sorted(group)}")
    if text is None:
        raise BadSample("missing_text", "no .txt member and no caption in .json")
    refs = []
    for ext in sorted(image_exts):
        data, offset, member = group[ext]
        refs.append(_image_ref(data, uri, member, offset))
    category = spec.category
    if isinstance(meta, dict) and isinstance(meta.get("category"), str):
        category = meta["category"]
    return {"images": refs, "text": text, "meta": R.dumps_meta(meta), "category": category}


# --- llava ---------------------------------------------------------------------------------------------
def _iter_json_records(uri: str) -> Iterator[tuple[int, Any | BadSample]]:
    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as fh:
        raw = fh.read()
    stripped = raw.lstrip()
    if stripped.startswith(b"["):
        try:
            items = strict_json(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            yield 0, BadSample("invalid_json_file", str(exc), R.QUARANTINED)
            return
        yield from enumerate(items)
        return
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, strict_json(line)
        except (ValueError, UnicodeDecodeError) as exc:
            yield lineno, BadSample("invalid_json_line", str(exc))


def _resolve(root: str, p: str) -> str:
    if "://" in p or p.startswith("/"):
        return p
    return posixpath.join(root, p)


def _file_image_ref(path: str) -> dict:
    try:
        fs, local = fsspec.core.url_to_fs(path)
        with fs.open(local, "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, OSError) as exc:
        raise BadSample("image:missing_file", f"{path}: {exc}", R.QUARANTINED) from None
    return _image_ref(data, path, None, 0)


def normalize_conversations(turns: Any) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise BadSample("invalid_conversations", "conversations must be a non-empty list")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise BadSample("invalid_conversations", f"turn {i} is not an object")
        role = ROLE_ALIASES.get(str(t.get("from", t.get("role", ""))).lower())
        content = t.get("value", t.get("content"))
        if role is None or not isinstance(content, str):
            raise BadSample("invalid_conversations", f"turn {i}: unknown role or non-text content")
        out.append({"role": role, "content": content})
    return out


def read_llava(spec: SourceSpec, uri: str, source_index: int, file_index: int) -> Iterator[dict]:
    root = spec.image_root or posixpath.dirname(uri)
    seen: set[str] = set()
    for row_index, (line, rec) in enumerate(_iter_json_records(uri)):
        ordinal = R.make_ordinal(source_index, file_index, row_index)
        prov = {"uri": uri, "line": line}
        key = str(rec.get("id")) if isinstance(rec, dict) and rec.get("id") is not None else f"{file_index}-{line}"
        try:
            if isinstance(rec, BadSample):
                raise rec
            if not isinstance(rec, dict):
                raise BadSample("invalid_record", "record is not an object")
            if key in seen:
                raise BadSample("duplicate_key", f"id {key} appears twice in {uri}")
            seen.add(key)
            yield _row(spec, key, ordinal, prov, **_llava_fields(spec, root, rec))
        except BadSample as bad:
            yield _bad_row(spec, key, ordinal, prov, bad)


def _llava_fields(spec: SourceSpec, root: str, rec: dict) -> dict:
    conv = normalize_conversations(rec.get("conversations"))
    img = rec.get("image", rec.get("images"))
    paths = [] if img is None else ([img] if isinstance(img, str) else list(img))
    placeholders = sum(t["content"].count("<image>") for t in conv)
    if paths and placeholders == 0:
        # LLaVA convention: an image without placeholder goes before the first user turn's text.
        first_user = next(t for t in conv if t["role"] == "user") if any(t["role"] == "user" for t in conv) else conv[0]
        first_user["content"] = "<image>\n" * len(paths) + first_user["content"]
    elif placeholders != len(paths):
        raise BadSample("image_placeholder_mismatch", f"{placeholders} <image> tags for {len(paths)} images")
    refs = [_file_image_ref(_resolve(root, p)) for p in paths]
    meta = {k: v for k, v in rec.items() if k not in ("conversations", "image", "images", "id")}
    category = rec.get("category") if isinstance(rec.get("category"), str) else spec.category
    if not paths and category == spec.category and spec.category not in ("text",):
        category = spec.category
    return {"images": refs, "conversations": conv, "meta": R.dumps_meta(meta or None), "category": category}


# --- parquet -------------------------------------------------------------------------------------------
def read_parquet(spec: SourceSpec, uri: str, source_index: int, file_index: int) -> Iterator[dict]:
    import pyarrow.parquet as pq
    root = spec.image_root or posixpath.dirname(uri)
    fs, path = fsspec.core.url_to_fs(uri)
    seen: set[str] = set()
    with fs.open(path, "rb") as fh:
        try:
            pf = pq.ParquetFile(fh)
        except Exception as exc:  # noqa: BLE001 — arrow raises ArrowInvalid/OSError for garbage
            yield _bad_row(spec, posixpath.basename(uri), R.make_ordinal(source_index, file_index, 0),
                           {"uri": uri}, BadSample("unreadable_parquet", str(exc), R.QUARANTINED))
            return
        row_index = 0
        for batch in pf.iter_batches(batch_size=1024):
            for rec in batch.to_pylist():
                ordinal = R.make_ordinal(source_index, file_index, row_index)
                key = str(rec.get(spec.key_column)) if spec.key_column and rec.get(spec.key_column) is not None \
                    else str(row_index)
                prov = {"uri": uri, "row": row_index}
                try:
                    if key in seen:
                        raise BadSample("duplicate_key", f"{key} appears twice in {uri}")
                    seen.add(key)
                    yield _row(spec, key, ordinal, prov, **_parquet_fields(spec, uri, root, rec, row_index))
                except BadSample as bad:
                    yield _bad_row(spec, key, ordinal, prov, bad)
                row_index += 1


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise BadSample("invalid_metadata", "non-finite number in metadata")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _parquet_fields(spec: SourceSpec, uri: str, root: str, rec: dict, row_index: int) -> dict:
    fields: dict[str, Any] = {}
    image = rec.get(spec.image_column)
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (bytes, bytearray)):
        fields["images"] = [_image_ref(bytes(image), uri, I.parquet_member(row_index, spec.image_column), -1)]
        fields["images"][0]["offset"] = -1
    elif isinstance(image, str) and image:
        fields["images"] = [_file_image_ref(_resolve(root, image))]
    if rec.get("conversations") is not None:
        fields["conversations"] = normalize_conversations(rec["conversations"])
    text = rec.get(spec.text_column)
    if text is not None and not isinstance(text, str):
        raise BadSample("invalid_text", f"column {spec.text_column} is {type(text).__name__}")
    if text is None and "conversations" not in fields:
        raise BadSample("missing_text", f"no {spec.text_column!r} and no conversations")
    fields["text"] = text
    skip = {spec.image_column, spec.text_column, spec.key_column, "conversations"}
    meta = _finite({k: v for k, v in rec.items() if k not in skip and not isinstance(v, (bytes, bytearray))})
    fields["meta"] = R.dumps_meta(meta or None)
    if isinstance(rec.get("category"), str):
        fields["category"] = rec["category"]
    return fields


READERS: dict[str, Callable[[SourceSpec, str, int, int], Iterator[dict]]] = {
    "webdataset": read_webdataset, "parquet": read_parquet, "llava": read_llava,
}


def read_file(spec: SourceSpec, uri: str, source_index: int, file_index: int) -> pa.Table:
    """All records of one file (kept, rejected and quarantined) as a conformed table."""
    if spec.format not in READERS:
        raise ValueError(f"unknown source format {spec.format!r}; known: {', '.join(FORMATS)}")
    rows = list(READERS[spec.format](spec, uri, source_index, file_index))
    return R.rows_to_table(rows)


def read_source(path: str, format: str, source: str = "source", category: str = "caption",
                **options: Any) -> pa.Table:
    """Notebook helper: every record of every file matching `path` (including rejected ones)."""
    spec = SourceSpec(name=source, path=path, format=format, category=category, **options)
    tables = [read_file(spec, uri, 0, i) for i, uri in enumerate(list_files(path))]
    return pa.concat_tables(tables) if tables else R.empty_table()
