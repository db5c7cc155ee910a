"""The sample record: one typed Arrow schema for every sample kind.

Why one schema: every stage reads and writes the same columns, so a stage can be dropped into any
position of a recipe and intermediate manifests are plain parquet that users can query. Image *bytes*
never appear here — only references (a tar member with its byte offset, a parquet cell, or a file
path) plus the width/height read from the header at ingest. The final shard writer is the only place
that reads image bytes again.

Stages add their own typed columns (``Stage.adds``); ``conform`` makes every batch match the declared
schema so that Ray blocks written by different workers always unify.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import pyarrow as pa

# Sample categories named by the seeds' data recipes; recipes may use others (validated as strings).
CATEGORIES = (
    "caption", "ocr", "grounding", "table_chart", "stem", "gui", "interleaved", "video", "text",
    "vqa", "conversation",
)

IMAGE_REF = pa.struct([
    ("uri", pa.string()),        # file path or URL of the container (tar, parquet) or of the image itself
    ("member", pa.string()),     # tar member name / "row=N;column=C" for parquet cells / null for plain files
    ("offset", pa.int64()),      # byte offset of the data inside `uri` when known (tar), else -1
    ("size", pa.int64()),        # byte length of the encoded image, -1 when unknown
    ("width", pa.int32()),       # from the header, no decode
    ("height", pa.int32()),
    ("format", pa.string()),     # JPEG / PNG / WEBP / ...
    ("sha256", pa.string()),     # hex sha256 of the encoded bytes read at ingest; readers of the bytes verify it
])

VIDEO_REF = pa.struct([
    ("uri", pa.string()),        # as IMAGE_REF: the container file (tar) or the video file itself
    ("member", pa.string()),
    ("width", pa.int32()),       # from the container header, no decode (curate.media.video.probe_video)
    ("height", pa.int32()),
    ("duration_s", pa.float64()),
    ("fps", pa.float64()),
    ("offset", pa.int64()),      # byte offset inside `uri` when known (tar), else -1
    ("size", pa.int64()),        # byte length of the encoded video, -1 when unknown
    ("frames", pa.int64()),      # the stream's frame count; null: round(duration_s * fps)
    ("format", pa.string()),     # container: mp4 / webm
    ("sha256", pa.string()),     # hex sha256 of the bytes read at ingest; readers of the bytes verify it
])

TURN = pa.struct([("role", pa.string()), ("content", pa.string())])

# One part of an interleaved image-text document (category "interleaved"), in document order. The
# document's text is the ``text`` column (its paragraphs joined by DOCUMENT_PARAGRAPH_JOIN), so every
# text rule and text dedup reads a document unchanged; a text segment points into it by character
# offsets (no second copy of the words). An image segment points into ``images`` (which holds only the
# images still in the document) and remembers the position the document gave it, which stays the same
# when earlier images are removed (curate.documents.record).
SEGMENT = pa.struct([
    ("kind", pa.string()),       # "text" | "image"
    ("start", pa.int32()),       # text: character offsets of the paragraph in `text`; image: null
    ("end", pa.int32()),
    ("image", pa.int32()),       # image: index into `images`; text: null
    ("position", pa.int32()),    # image: its index among the document's images as read; text: null
])
DOCUMENT_PARAGRAPH_JOIN = "\n\n"

# An image taken out of a document by a per-image rule: which one (as the document gave it), by which
# stage and why. Rows carry these so rejects output and the report can name every removed image.
REMOVED_IMAGE = pa.struct([
    ("position", pa.int32()),    # the image's position in the document as read
    ("ref", pa.string()),        # the reference as the document gave it (tar member, path or URL)
    ("stage", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
])

# Bookkeeping columns written by the runner around every stage.
STATUS = "_status"      # kept | rejected | quarantined
REASON = "_reason"      # short machine-readable reason, e.g. "duplicate_key", "blank_image"
DETAIL = "_detail"      # human-readable detail (exception text, measured value)
ORDINAL = "_ordinal"    # stable global order assigned at ingest: (source, file, row)

KEPT, REJECTED, QUARANTINED = "kept", "rejected", "quarantined"

BASE_FIELDS: list[pa.Field] = [
    pa.field("key", pa.string(), nullable=False),   # unique in a run: "{source}/{original key}"
    pa.field("source", pa.string(), nullable=False),
    pa.field("category", pa.string(), nullable=False),
    pa.field("images", pa.list_(IMAGE_REF)),        # empty list for text-only samples
    pa.field("videos", pa.list_(VIDEO_REF)),
    pa.field("text", pa.string()),                  # caption / plain text; null for conversations
    pa.field("conversations", pa.list_(TURN)),      # LLaVA/ShareGPT turns, roles normalised to user/assistant/system
    pa.field("segments", pa.list_(SEGMENT)),        # interleaved documents only: text and images in order; else null
    pa.field("images_removed", pa.list_(REMOVED_IMAGE)),  # images a per-image rule took out of this document
    pa.field("meta", pa.string()),                  # original per-sample metadata as JSON text (NaN-free)
    pa.field("provenance", pa.string()),            # where the sample came from: file, member/line, as JSON text
    pa.field(ORDINAL, pa.int64(), nullable=False),
    pa.field(STATUS, pa.string(), nullable=False),
    pa.field(REASON, pa.string()),
    pa.field(DETAIL, pa.string()),
]

BASE_SCHEMA = pa.schema(BASE_FIELDS)

# Columns that later stages add, named here so that stages written independently agree on them.
WELL_KNOWN_COLUMNS: dict[str, pa.DataType] = {
    "num_tokens": pa.int64(),            # total sequence length as the trainer builds it (count_tokens)
    "text_tokens": pa.int64(),
    "image_tokens": pa.list_(pa.int32()),  # one entry per image, same order as `images`
    "video_tokens": pa.list_(pa.int32()),
    "pack_id": pa.int64(),               # pack plan: which pack this sample lands in (pack)
    "pack_position": pa.int32(),         # position of the sample inside its pack
    "truncated_from": pa.int64(),        # original num_tokens of a sample the pack stage truncated
    "clip_score": pa.float32(),
    "grounding_problems": pa.string(),
}


def schema_with(extra: Mapping[str, pa.DataType] | Iterable[pa.Field] = ()) -> pa.Schema:
    """BASE_SCHEMA plus extra columns (in the order given), extra fields replacing same-named ones."""
    fields = list(extra.items()) if isinstance(extra, Mapping) else [(f.name, f.type) for f in extra]
    schema = BASE_SCHEMA
    for name, typ in fields:
        idx = schema.get_field_index(name)
        if idx >= 0:
            schema = schema.set(idx, pa.field(name, typ))
        else:
            schema = schema.append(pa.field(name, typ))
    return schema


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return `table` with exactly `schema`'s columns, in order, cast; missing columns become null.

    Columns not in the schema are an error: a stage that adds a column must declare it.
    """
    extra = set(table.column_names) - set(schema.names)
    if extra:
        raise ValueError(f"undeclared columns {sorted(extra)}; declare them in the stage's `adds`")
    arrays = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            if col.type != f.type:
                col = col.cast(f.type)
            arrays.append(col)
        else:
            arrays.append(pa.nulls(table.num_rows, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def empty_table(schema: pa.Schema = BASE_SCHEMA) -> pa.Table:
    return schema.empty_table()


@dataclass
class Sample:
    """A convenience view of one record for notebooks and tests (the pipeline itself stays columnar)."""
    key: str
    source: str
    category: str
    images: list[dict] = field(default_factory=list)
    videos: list[dict] = field(default_factory=list)
    text: str | None = None
    conversations: list[dict] | None = None
    meta: dict | None = None
    provenance: dict | None = None
    ordinal: int = 0

    def to_row(self) -> dict[str, Any]:
        return {
            "key": self.key, "source": self.source, "category": self.category,
            "images": [image_ref(**im) for im in self.images], "videos": list(self.videos),
            "text": self.text, "conversations": self.conversations,
            "meta": dumps_meta(self.meta), "provenance": dumps_meta(self.provenance),
            ORDINAL: self.ordinal, STATUS: KEPT, REASON: None, DETAIL: None,
        }


def image_ref(uri: str, member: str | None = None, offset: int = -1, size: int = -1,
              width: int | None = None, height: int | None = None, format: str | None = None,
              sha256: str | None = None) -> dict:
    return {"uri": uri, "member": member, "offset": offset, "size": size,
            "width": width, "height": height, "format": format, "sha256": sha256}


def video_ref(uri: str, member: str | None = None, offset: int = -1, size: int = -1,
              width: int | None = None, height: int | None = None, duration_s: float | None = None,
              fps: float | None = None, frames: int | None = None, format: str | None = None,
              sha256: str | None = None) -> dict:
    return {"uri": uri, "member": member, "offset": offset, "size": size, "width": width, "height": height,
            "duration_s": duration_s, "fps": fps, "frames": frames, "format": format, "sha256": sha256}


def dumps_meta(value: Any) -> str | None:
    """Canonical JSON (sorted keys, no NaN) so that equal metadata gives equal bytes."""
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def rows_to_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema = BASE_SCHEMA) -> pa.Table:
    """Build a conformed table from row dicts (missing keys become null)."""
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.Table.from_pydict(cols, schema=schema)


def row_tables(rows: Iterable[Mapping[str, Any]], rows_per_table: int) -> Iterator[pa.Table]:
    """Row dicts as conformed tables of at most `rows_per_table` rows, streamed (readers use it so
    that memory is a table's worth, whatever the file size)."""
    chunk: list[Mapping[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= rows_per_table:
            yield rows_to_table(chunk)
            chunk = []
    if chunk:
        yield rows_to_table(chunk)


def make_ordinal(source_index: int, file_index: int, row_index: int) -> int:
    """Global order key: 8 bits source, 24 bits file, 31 bits row — stable across runs and machines."""
    if not (0 <= source_index < 1 << 8 and 0 <= file_index < 1 << 24 and 0 <= row_index < 1 << 31):
        raise ValueError(f"ordinal out of range: source={source_index} file={file_index} row={row_index}")
    return (source_index << 55) | (file_index << 31) | row_index


def text_of(table: pa.Table) -> list[str]:
    """All text of each sample (caption + every turn), for stages that just need 'the words'."""
    texts = table.column("text").to_pylist()
    convs = table.column("conversations").to_pylist()
    out = []
    for t, conv in zip(texts, convs):
        parts = [t] if t else []
        parts += [turn["content"] or "" for turn in (conv or [])]
        out.append("\n".join(parts))
    return out
