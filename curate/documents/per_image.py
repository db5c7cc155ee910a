"""Per-image verdicts inside documents: how an image rule treats an interleaved document.

A single-image (or LLaVA multi-image) sample fails with its first failing image: the image *is* the
sample. A document is different: one blurred photo or one tracking pixel does not make the paragraphs
around it bad. So an image stage (``image_filter``, ``nsfw_filter``, ``image_dedup``, ``clip_score``)
judges every image of a document on its own and turns each failing image into a ``Removal``: the image
leaves the document (curate.documents.record.remove_images keeps the aligned columns aligned and
records the removal with the image's reason, so the report's ``images_removed[reason]`` and the
rejects output name it), and the document stays. Whether a document with too few images or no text
left is still worth keeping is a document rule's decision (``document_filter``), never an image rule's.

Failing to *read* an image inside a document (a storage error, which quarantines a single-image
sample) also removes just that image: the reason (``image:unreadable:...``) says so, and the document
is not held hostage by one unreadable reference.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import pyarrow as pa

from curate.base import BatchResult
from curate.documents.record import Removal, document_parts, remove_images
from curate.base import Drop, split_drops

# (index of the image in the row's current `images`, why it fails) for every failing image of a row.
ImageDrops = Sequence[tuple[int, Drop]]


def document_rows(batch: pa.Table) -> list[bool]:
    """Which rows are documents (a ``segments`` list): their images are judged one by one."""
    if "segments" not in batch.column_names:
        return [False] * batch.num_rows
    return [v is not None for v in batch.column("segments").to_pylist()]


def removal_stage(stage: Any) -> str:
    """The stage name a removal records: the stage's name, or ``name@index`` for a stage whose name an
    earlier stage of the recipe already has (two ``image_filter`` stages), so that every removal is
    counted under the stage that made it."""
    context = stage.context
    return f"{stage.name}@{context.stage_index}" if stage.name in context.earlier_stages else stage.name


def removals_of(image_drops: ImageDrops) -> list[Removal]:
    return [Removal(i, d.reason, d.detail) for i, d in image_drops]


def apply_verdicts(batch: pa.Table, row_drops: Sequence[Drop | None], image_drops: Sequence[ImageDrops],
                   stage: str) -> BatchResult:
    """The batch with each row's failing images removed (documents), then the rows split by their own
    verdicts (samples; and documents only where a whole-row rule, e.g. a caption keyword, says so)."""
    out = remove_images(batch, [removals_of(d) for d in image_drops], stage)
    return split_drops(out, row_drops)


def image_contexts(text: str | None, segments: Sequence[Mapping[str, Any]] | None, image_count: int
                   ) -> list[str | None]:
    """The paragraph each image of a document is compared with: the one just before it, else the one
    just after (a figure is captioned by its neighbour, not by the whole page); None without any."""
    parts = list(document_parts(text, segments))
    out: list[str | None] = [None] * image_count
    for at, (kind, value) in enumerate(parts):
        if kind != "image" or not 0 <= value < image_count:
            continue
        before = next((v for k, v in reversed(parts[:at]) if k == "text" and v.strip()), None)
        after = next((v for k, v in parts[at + 1:] if k == "text" and v.strip()), None)
        out[value] = before or after
    return out
