"""LLaVA/ShareGPT JSON and JSONL (``{id, image(s), conversations: [{from, value}]}``), and the strict
JSON parser every reader uses for metadata.

Strict JSON: NaN/Infinity and numbers that overflow a double (``1e999999``) are refused (not JSON's
meaning, and poison for every later statistic); nesting deeper than ``MAX_JSON_DEPTH`` is refused
per record instead of raising ``RecursionError`` out of the run. A file is an array when its first
non-blank character (after a UTF-8 byte-order mark) is ``[``, else JSONL.
"""
from __future__ import annotations

import codecs
import json
import math
import posixpath
from typing import Any, Iterator

import fsspec

from curate import records as R
from curate import refs
from curate.sources import BadSample, SourceSpec, bad_row, image_ref_from_bytes, make_row

# Real metadata nests a handful of levels; 64 leaves room while staying far from Python's recursion limit.
MAX_JSON_DEPTH = 64

ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "model": "assistant", "bot": "assistant", "system": "system"}


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} overflows a double")
    return value


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (a recursive walk is what we are guarding against)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if deepest > MAX_JSON_DEPTH:
                return deepest
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def strict_json(text: str | bytes) -> Any:
    """json.loads refusing NaN/Infinity, overflowing numbers and deep nesting (all as ValueError)."""
    def refuse(const: str) -> Any:
        raise ValueError(f"non-finite number {const} in JSON")
    try:
        value = json.loads(text, parse_constant=refuse, parse_float=_finite_float)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def iter_json_records(uri: str) -> Iterator[tuple[int, Any]]:
    """(line or array index, record or BadSample) for every record of a JSON array or JSONL file."""
    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as fh:
        raw = fh.read()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    if raw.lstrip().startswith(b"["):
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


def referenced_image(spec: SourceSpec, root: str, value: Any) -> dict:
    """An image reference from a record field: resolved inside the root, read with bounds, hashed."""
    uri = refs.resolve_reference(value, root, spec)
    return image_ref_from_bytes(refs.read_reference(uri, spec), uri, None, 0)


def read_llava(spec: SourceSpec, uri: str, source_index: int, file_index: int) -> Iterator[dict]:
    root = spec.image_root or posixpath.dirname(uri)
    seen: set[str] = set()
    for row_index, (line, rec) in enumerate(iter_json_records(uri)):
        ordinal = R.make_ordinal(source_index, file_index, row_index)
        prov = {"uri": uri, "line": line}
        rid = rec.get("id") if isinstance(rec, dict) else None
        key = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else f"{file_index}-{line}"
        try:
            if isinstance(rec, BadSample):
                raise rec
            if not isinstance(rec, dict):
                raise BadSample("invalid_record", "record is not an object")
            if key in seen:
                raise BadSample("duplicate_key", f"id {key} appears twice in {uri}")
            seen.add(key)
            yield make_row(spec, key, ordinal, prov, **_llava_fields(spec, root, rec))
        except BadSample as bad:
            yield bad_row(spec, key, ordinal, prov, bad)


def _image_values(rec: dict) -> list[Any]:
    img = rec.get("image", rec.get("images"))
    if img is None:
        return []
    if isinstance(img, list):
        return img
    return [img]   # a string, or anything else (rejected by resolve_reference with its type named)


def _llava_fields(spec: SourceSpec, root: str, rec: dict) -> dict:
    conv = normalize_conversations(rec.get("conversations"))
    values = _image_values(rec)
    placeholders = sum(t["content"].count("<image>") for t in conv)
    if values and placeholders == 0:
        # LLaVA convention: an image without placeholder goes before the first user turn's text.
        first_user = next((t for t in conv if t["role"] == "user"), conv[0])
        first_user["content"] = "<image>\n" * len(values) + first_user["content"]
    elif placeholders != len(values):
        raise BadSample("image_placeholder_mismatch", f"{placeholders} <image> tags for {len(values)} images")
    refs_ = [referenced_image(spec, root, v) for v in values]
    meta = {k: v for k, v in rec.items() if k not in ("conversations", "image", "images", "id")}
    category = rec.get("category") if isinstance(rec.get("category"), str) else spec.category
    return {"images": refs_, "conversations": conv, "meta": R.dumps_meta(meta or None), "category": category}
