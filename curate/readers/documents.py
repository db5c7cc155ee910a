"""What the two document readers (``obelics``, ``mint1t``) share: aligned lists in, a document row out.

Both formats describe a document as two lists of equal length, ``texts`` and ``images``, where at
each position exactly one of the two is non-null (OBELICS' and MINT-1T's layout). Reading one:

* the lists must be lists of the same length, with exactly one non-null entry per position, or the
  document is rejected as ``document:misaligned`` (the detail names the first bad position);
* a document with no non-empty paragraph and no image is rejected as ``document:empty``;
* an image the reader cannot resolve the way the format says it must (a MINT-1T member absent from
  the tar) rejects the document (``document:missing_member``): the document itself is broken;
* an image reference that resolves but cannot be read or probed (a missing file, a host not in
  ``allowed_hosts``, bytes that are not an image) is *removed* from the document at ingest and recorded
  in ``images_removed`` (stage ``ingest``), like any image a later per-image rule removes: the rest of
  the document is good, and the rejects output names the image (curate.documents.record).

Documents are always category ``interleaved`` (curate.base.records: what the token counter, the
splitter and the trainer recognise); the source's category is ignored for them.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from curate.base import records as R
from curate.documents.record import Removal, build_document, remove_images
from curate.readers.sources import BadSample, SourceSpec, check_image_count

INGEST_STAGE = "ingest"
DOCUMENT_CATEGORY = "interleaved"

# An image entry of the document -> its reference, or BadSample (the image is removed, the document kept).
ResolveImage = Callable[[int, Any], dict]


def aligned_parts(texts: Any, images: Any) -> list[tuple[str, Any]]:
    """[("text", paragraph) | ("image", entry)] in order, or BadSample naming the misalignment."""
    if not isinstance(texts, list) or not isinstance(images, list):
        raise BadSample("document:misaligned", f"texts is {type(texts).__name__}, images is {type(images).__name__}; "
                                               "both must be lists", R.REJECTED)
    if len(texts) != len(images):
        raise BadSample("document:misaligned", f"{len(texts)} texts for {len(images)} images", R.REJECTED)
    parts: list[tuple[str, Any]] = []
    for position, (text, image) in enumerate(zip(texts, images)):
        if (text is None) == (image is None):
            both = "both" if text is not None else "neither"
            raise BadSample("document:misaligned", f"position {position}: {both} of text and image set", R.REJECTED)
        if text is not None:
            if not isinstance(text, str):
                raise BadSample("document:misaligned", f"position {position}: text is {type(text).__name__}", R.REJECTED)
            parts.append(("text", text))
        else:
            parts.append(("image", image))
    return parts


def _placeholder(entry: Any) -> dict:
    """The reference recorded for an image that could not be read: the entry as the document gave it."""
    given = entry if isinstance(entry, str) else f"<{type(entry).__name__}>"
    return R.image_ref(given[:2000])


def document_fields(spec: SourceSpec, parts: Sequence[tuple[str, Any]], resolve: ResolveImage,
                    meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The record fields of one document (text, images, segments, images_removed, meta, category).

    `resolve(position, entry)` reads one image entry; a BadSample it raises removes that image (kept
    in ``images_removed`` with its reason) unless its reason starts with ``document:`` (then the
    whole document is rejected)."""
    image_count = sum(1 for kind, _ in parts if kind == "image")
    if not image_count and not any(value for kind, value in parts if kind == "text"):
        raise BadSample("document:empty", f"{len(parts)} entries, no paragraph and no image", R.REJECTED)
    check_image_count(spec, image_count)   # before reading any image
    built: list[str | dict] = []
    failed: list[Removal] = []
    position = 0
    for kind, value in parts:
        if kind == "text":
            built.append(value)
            continue
        try:
            built.append(resolve(position, value))
        except BadSample as bad:
            if bad.reason.startswith("document:"):
                raise
            built.append(_placeholder(value))
            failed.append(Removal(position, bad.reason, bad.detail[:500] or None))
        position += 1
    doc = build_document(built)
    fields = {**doc, "images_removed": [], "meta": R.dumps_meta(dict(meta) if meta else None),
              "category": DOCUMENT_CATEGORY}
    if failed:
        fields = _without(fields, failed)
    return fields


def _without(fields: dict[str, Any], failed: list[Removal]) -> dict[str, Any]:
    """`fields` with the images that failed at ingest removed through the one removal path
    (curate.documents.record.remove_images), so they are recorded exactly as later removals are."""
    import pyarrow as pa
    row = {name: None for name in R.BASE_SCHEMA.names}
    row.update({"key": "", "source": "", "category": "", R.ORDINAL: 0, R.STATUS: R.KEPT}, **{
        k: fields[k] for k in ("images", "segments", "images_removed", "text")})
    table = pa.Table.from_pylist([row], schema=R.BASE_SCHEMA)
    out = remove_images(table, [failed], INGEST_STAGE).to_pylist()[0]
    return {**fields, "images": out["images"], "segments": out["segments"], "images_removed": out["images_removed"]}
