"""``repeated_images``: images seen in more than ``max_image_repeats`` places across the corpus's
documents — logos, icons, share buttons, tracking pixels — are taken out of every document.

OBELICS drops images that appear more than a few times across its web pages: a picture repeated on
hundreds of pages says nothing about any one of them. Counting needs the whole corpus, so this is a
global step (``curate.base.global_data``; Ray Data under the Ray executor), and no process holds a
table of images:

1. ``map_batches(occurrences)``: one row per image of every document — its content key (the sha256
   ingest recorded in the reference; for a reference without one, the sha256 of its bytes, read
   here), the document's ``_ordinal`` and the image's index in it.
2. ``shuffle_reduce(key, mark_repeated)``: all occurrences of one image meet; when there are more than
   ``max_image_repeats``, each occurrence becomes a *mark* (document, image index, times seen).
3. When some image is marked: ``union`` of the documents' image columns with the marks, and
   ``shuffle_reduce(_ordinal, apply_marks)``: each document meets its marks and loses those images
   through ``curate.documents.record.remove_images`` (every image-aligned column stays aligned, the
   segments are renumbered, each removal is recorded in ``images_removed`` with reason
   ``image:repeated``). When nothing is marked, a map answers "kept, unchanged" without a shuffle.
4. ``aggregate`` for the report: the images counted, the distinct images over the limit, the images
   removed, the documents changed, the most times one image was seen. The driver gets those numbers,
   a schema, and nothing per image.

What counts: every occurrence, in every document (an icon used twice on one page counts twice).
Rows that are not documents (``segments`` null: captions, conversations) are neither counted nor
changed: copies among them are ``exact_dedup``'s job. A document keeps its place even when it loses
every image (``document_filter`` judges what is left). An image whose bytes cannot be read to hash
them (no sha256 recorded, storage broken) is left in place and counted in the report
(``unhashed_images``): ``image_filter`` quarantines such images.

Every decision depends on the rows alone (the counts, the content keys, ``_ordinal``), never on the
partitioning: the same corpus gives the same documents on one process and on a cluster.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import Resources, Stage, StepResult, register
from curate.base import records as R
from curate.documents.record import IMAGE_ALIGNED_COLUMNS, Removal, remove_images
from curate.media import identity
from curate.media.image_facts import FACTS_TYPE

REASON = "image:repeated"
KEY, IMAGE, SEEN, FIRST, IS_MARK, UNHASHED = "_image_key", "_image", "_seen", "_first", "_is_mark", "_unhashed"
# Occurrences (or documents) per shuffle partition, as the dedup steps size theirs.
ROWS_PER_PARTITION = 200_000
OCCURRENCE_SCHEMA = pa.schema([(KEY, pa.string()), (R.ORDINAL, pa.int64()), (IMAGE, pa.int32())])
MARK_SCHEMA = pa.schema([(R.ORDINAL, pa.int64()), (IMAGE, pa.int32()), (SEEN, pa.int64()), (FIRST, pa.bool_())])
CHANGED_COLUMNS = ("images", "segments", "images_removed", *[c for c in IMAGE_ALIGNED_COLUMNS if c != "images"])


# --- 1. occurrences ------------------------------------------------------------------------------
def content_key(ref: dict[str, Any]) -> str | None:
    """The sha256 of an image's bytes: as ingest recorded it, else read now; None when unreadable."""
    if ref.get("sha256"):
        return ref["sha256"]
    from curate.media import images as I
    try:
        return identity.sha256_bytes(I.read_image_bytes(ref))
    except (I.UnreadableImage, OSError):
        return None


def occurrences(batch: pa.Table) -> pa.Table:
    """One row per image of every document in the batch (key null: its bytes could not be hashed)."""
    keys: list[str | None] = []
    ords: list[int] = []
    idx: list[int] = []
    segments = batch.column("segments").to_pylist()
    for ordinal, refs, segs in zip(batch.column(R.ORDINAL).to_pylist(), batch.column("images").to_pylist(), segments):
        if segs is None:
            continue
        for i, ref in enumerate(refs or ()):
            keys.append(content_key(ref))
            ords.append(ordinal)
            idx.append(i)
    return pa.table([pa.array(keys, pa.string()), pa.array(ords, pa.int64()), pa.array(idx, pa.int32())],
                    schema=OCCURRENCE_SCHEMA)


def occurrence_counts_partial(occ: pa.Table) -> pa.Table:
    return pa.table({"images": [occ.num_rows], UNHASHED: [occ.column(KEY).null_count]})


def sums_combine(parts: pa.Table) -> dict[str, int]:
    return {c: int(pc.sum(parts.column(c)).as_py() or 0) for c in parts.column_names}


# --- 2. marks ------------------------------------------------------------------------------------
def mark_repeated(group: pa.Table, max_repeats: int) -> pa.Table:
    """Reduce by content key (rows sorted by key, then _ordinal): every occurrence of a key seen more
    than `max_repeats` times becomes a mark; the first one of each key carries ``_first``."""
    group = group.filter(pc.is_valid(group.column(KEY)))
    if group.num_rows == 0:
        return MARK_SCHEMA.empty_table()
    keys = group.column(KEY).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sizes = np.diff(np.r_[starts, keys.shape[0]])
    seen = np.repeat(sizes, sizes)
    first = np.zeros(keys.shape[0], dtype=bool)
    first[starts] = True
    over = seen > max_repeats
    return pa.table([group.column(R.ORDINAL).filter(pa.array(over)), group.column(IMAGE).filter(pa.array(over)),
                     pa.array(seen[over], pa.int64()), pa.array(first[over])], schema=MARK_SCHEMA)


def marks_partial(marks: pa.Table) -> pa.Table:
    seen = marks.column(SEEN)
    return pa.table({"removed": [marks.num_rows], "repeated": [int(pc.sum(marks.column(FIRST)).as_py() or 0)],
                     "most_seen": [int(pc.max(seen).as_py() or 0) if marks.num_rows else 0]})


def marks_combine(parts: pa.Table) -> dict[str, int]:
    if parts.num_rows == 0:
        return {"removed": 0, "repeated": 0, "most_seen": 0}
    return {"removed": int(pc.sum(parts.column("removed")).as_py() or 0),
            "repeated": int(pc.sum(parts.column("repeated")).as_py() or 0),
            "most_seen": int(pc.max(parts.column("most_seen")).as_py() or 0)}


# --- 3. the join ---------------------------------------------------------------------------------
def schema_partial(batch: pa.Table) -> pa.Table:
    """One all-null row of the batch's schema: the driver learns the schema, no row."""
    return pa.table({f.name: pa.nulls(1, f.type) for f in batch.schema})


def schema_combine(parts: pa.Table) -> pa.Schema:
    return parts.schema


def join_schema(rows: pa.Schema) -> pa.Schema:
    """The rows' columns (the document's image columns), then the mark's, then the record kind."""
    schema = pa.schema([rows.field(c) for c in (R.ORDINAL, *CHANGED_COLUMNS) if c in rows.names])
    return schema.append(pa.field(SEEN, pa.int64())).append(pa.field(IMAGE, pa.int32())).append(pa.field(IS_MARK, pa.bool_()))


def row_records(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    n = batch.num_rows
    given = {name: batch.column(name) for name in batch.column_names}
    given[IS_MARK] = pa.array(np.zeros(n, dtype=bool))
    return pa.table([given[f.name].cast(f.type) if f.name in given else pa.nulls(n, f.type) for f in schema],
                    schema=schema)


def mark_records(marks: pa.Table, schema: pa.Schema) -> pa.Table:
    n = marks.num_rows
    given = {R.ORDINAL: marks.column(R.ORDINAL), SEEN: marks.column(SEEN), IMAGE: marks.column(IMAGE),
             IS_MARK: pa.array(np.ones(n, dtype=bool))}
    return pa.table([given[f.name].cast(f.type) if f.name in given else pa.nulls(n, f.type) for f in schema],
                    schema=schema)


def apply_marks(group: pa.Table, max_repeats: int, stage: str) -> pa.Table:
    """Reduce by _ordinal over row records and marks: each row loses its marked images (recorded)."""
    is_mark = np.asarray(group.column(IS_MARK).to_numpy(zero_copy_only=False), dtype=bool)
    rows = group.filter(pa.array(~is_mark))
    marks = group.filter(pa.array(is_mark))
    ords = rows.column(R.ORDINAL).to_numpy()
    wanted: dict[int, list[Removal]] = {}
    for ordinal, image, seen in zip(marks.column(R.ORDINAL).to_pylist(), marks.column(IMAGE).to_pylist(),
                                    marks.column(SEEN).to_pylist()):
        wanted.setdefault(ordinal, []).append(Removal(image, REASON, f"seen {seen} times across the documents "
                                                                      f"(> max_image_repeats {max_repeats})"))
    if set(wanted) - set(ords.tolist()):
        raise AssertionError("a repeated-image mark names a row that is not in the step's input")
    removals = [sorted(wanted.get(o, []), key=lambda r: r.image) for o in ords.tolist()]
    return decisions(remove_images(rows.drop_columns([SEEN, IMAGE, IS_MARK]), removals, stage))


def decisions(rows: pa.Table) -> pa.Table:
    """Kept decisions carrying the (possibly changed) image columns of each row."""
    n = rows.num_rows
    return (rows.append_column(R.STATUS, pa.array([R.KEPT] * n, pa.string()))
            .append_column(R.REASON, pa.nulls(n, pa.string())).append_column(R.DETAIL, pa.nulls(n, pa.string())))


def changed_partial(decided: pa.Table, stage: str) -> pa.Table:
    """Documents this step changed in a batch of decisions (for the report)."""
    changed = 0
    for record in decided.column("images_removed").to_pylist():
        changed += any(r["stage"] == stage for r in record or ())
    return pa.table({"documents_changed": [changed]})


# --- the stage -----------------------------------------------------------------------------------
@register
class RepeatedImages(Stage):
    name: ClassVar[str] = "repeated_images"
    description: ClassVar[str] = ("Images seen more than max_image_repeats times across the documents (logos, icons, "
                                  "tracking pixels) are removed from every document (image:repeated); a global count "
                                  "by content hash.")
    requires: ClassVar[tuple[str, ...]] = ("images", "segments", "images_removed")
    global_columns: ClassVar[tuple[str, ...]] = CHANGED_COLUMNS
    adds: ClassVar[dict[str, pa.DataType]] = {
        "images": pa.list_(R.IMAGE_REF), "segments": pa.list_(R.SEGMENT), "images_removed": pa.list_(R.REMOVED_IMAGE),
        "image_tokens": R.WELL_KNOWN_COLUMNS["image_tokens"], "image_facts": FACTS_TYPE}
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=1024, kind="task")
    batch_phase: ClassVar[str] = "count"

    @dataclass
    class Config:
        max_image_repeats: int = field(default=10, metadata={
            "doc": "An image (by content hash) seen more than this many times across all documents is removed from "
                   "every one of them. OBELICS's order of magnitude: 10."})
        partitions: int = field(default=0, metadata={
            "doc": "Shuffle partitions of the count and the join; 0: one per 200,000 images (or documents)."})

    def validate_config(self) -> None:
        if self.config.max_image_repeats < 1:
            raise ValueError(f"max_image_repeats: must be >= 1, got {self.config.max_image_repeats}")
        if self.config.partitions < 0:
            raise ValueError(f"partitions: must be >= 0, got {self.config.partitions}")

    def _parts(self, rows: int) -> int:
        return self.config.partitions or max(1, -(-rows // ROWS_PER_PARTITION))

    def global_step(self, data: Any) -> Any:
        max_repeats, stage = self.config.max_image_repeats, self.name
        occ = data.map_batches(occurrences).materialize()
        counted = occ.aggregate(occurrence_counts_partial, sums_combine)
        counted = {"images": counted.get("images", 0), UNHASHED: counted.get(UNHASHED, 0)}
        marks = occ.shuffle_reduce(KEY, lambda g: mark_repeated(g, max_repeats),
                                   self._parts(counted["images"])).materialize()
        marked = marks.aggregate(marks_partial, marks_combine)
        report = {"repeated_images": {
            "max_image_repeats": max_repeats, "images_counted": counted["images"],
            "unhashed_images": counted[UNHASHED], "repeated_images": marked["repeated"],
            "images_removed": marked["removed"], "most_seen": marked["most_seen"], "documents_changed": 0}}
        if marked["removed"] == 0:   # nothing changes
            return StepResult(data.map_batches(lambda b: decisions(b.select([R.ORDINAL]))), report)
        schema = join_schema(data.aggregate(schema_partial, schema_combine))
        rows = data.map_batches(lambda b: row_records(b, schema))
        decided = (rows.union(marks.map_batches(lambda m: mark_records(m, schema)))
                   .shuffle_reduce(R.ORDINAL, lambda g: apply_marks(g, max_repeats, stage),
                                   self._parts(data.count())).materialize())
        report["repeated_images"]["documents_changed"] = decided.aggregate(
            lambda d: changed_partial(d, stage), sums_combine).get("documents_changed", 0)
        return StepResult(decided, report)
