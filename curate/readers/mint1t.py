"""``mint1t``: interleaved documents as MINT-1T ships them, WebDataset tars of documents.

A document is the members of one WebDataset key (the basename up to its first dot, as for
``webdataset``): a ``{key}.json`` member holding aligned ``texts`` and ``images`` lists
(curate.readers.documents), where each non-null image entry names an image member of the same tar,
either by its full name (``doc7.2.jpg``) or by what follows the key (``2.jpg``). The images are read
from the tar as the walk passes them (never extracted to disk; the reference carries the member's
offset, so later stages read only its bytes). Every other JSON field becomes the document's metadata.

Rejections, beyond the tar walk's own (unsafe member names, special members, truncated tars;
curate.readers.webdataset): no JSON member (``document:missing_json``), JSON that does not parse
(``invalid_metadata``), misaligned lists or an empty document, and an image entry that names no member
of the tar (``document:missing_member``: the document was cut from its images). Image members the JSON
does not name are not part of the document (MINT-1T keeps none; they are ignored).
"""
from __future__ import annotations

from typing import Any, Iterator

from curate.base import records as R
from curate.readers.documents import aligned_parts, document_fields
from curate.readers.jsonl import strict_json
from curate.readers.sources import BadSample, SourceSpec, image_ref_from_bytes
from curate.readers.webdataset import check_group, read_tar

JSON_MEMBER = "json"


def read_mint1t(spec: SourceSpec, uri: str, source_index: int, file_index: int) -> Iterator[dict]:
    """Every document of one tar."""
    yield from read_tar(spec, uri, source_index, file_index, _document_fields)


def _document_fields(key: str, group: dict[str, tuple[bytes | str, int, str]], uri: str, spec: SourceSpec) -> dict:
    check_group(key, group)
    if JSON_MEMBER not in group:
        raise BadSample("document:missing_json", f"no {key}.json member; members: {sorted(group)}", R.REJECTED)
    try:
        doc = strict_json(group[JSON_MEMBER][0])
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadSample("invalid_metadata", str(exc), R.REJECTED) from None
    if not isinstance(doc, dict):
        raise BadSample("invalid_metadata", f"{key}.json is not an object", R.REJECTED)
    parts = aligned_parts(doc.get("texts"), doc.get("images"))
    by_name = {member: ext for ext, (_, _, member) in group.items()}

    def resolve(position: int, entry: Any) -> dict:
        if not isinstance(entry, str) or not entry:
            raise BadSample("document:missing_member", f"image {position}: entry {str(entry)[:80]!r} names no member", R.REJECTED)
        ext = by_name.get(entry) or (entry if entry in group and entry != JSON_MEMBER else None)
        if ext is None:
            raise BadSample("document:missing_member", f"image {position}: no member {entry!r} in {uri}", R.REJECTED)
        data, offset, member = group[ext]
        return image_ref_from_bytes(data, uri, member, offset)

    meta = {k: v for k, v in doc.items() if k not in ("texts", "images")}
    return document_fields(spec, parts, resolve, meta)
