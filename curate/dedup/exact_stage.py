"""``exact_dedup``: samples whose normalised text and image bytes are identical.

The content hash is BLAKE2b over the NFKC/casefold/whitespace-normalised text (caption and every
turn) and the tuple of the images' byte digests, in order (interleaved and multi-image samples
match only with the same images in the same order). Rows with neither text nor images have no hash
and are never grouped. The image digests come from ``image_facts`` where ``image_filter`` carried
them (no read here), else from reading the bytes. A document's hash also covers where its images sit
between its paragraphs, and an image of a document that cannot be read is removed from it (with its
reason, curate.documents.per_image) instead of quarantining the document.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from curate.base import records as R
from curate.dedup import normalize as N
from curate.dedup.base import DUP_COLUMNS, DedupStage, SurvivorConfig, with_column
from curate.dedup.sample_bytes import image_digests
from curate.base import Drop, split_drops
from curate.base import BatchResult, Resources, register
from curate.documents.per_image import apply_verdicts, document_rows, removal_stage
from curate.media.decode import read_or_drop
from curate.media import images as I
from curate.media.image_facts import FACTS_COLUMN, bytes_digest, row_facts


@register
class ExactDedupStage(DedupStage):
    name = "exact_dedup"
    description = "Remove samples whose normalised text and image bytes equal another's; the best copy survives."
    requires = ("key", "source", "category", "text", "conversations", "images")
    reads_if_present = (FACTS_COLUMN,)   # image_filter's digests (and pHashes), where it carried them
    adds = {"content_hash": pa.string(), **DUP_COLUMNS}
    resources = Resources(cpus=1, batch_size=256)
    hash_column = "content_hash"
    reason = "dedup:exact"

    @dataclass
    class Config(SurvivorConfig):
        pass

    def process_batch(self, batch: pa.Table) -> BatchResult:
        scope = self.in_scope(batch)
        documents = np.array(document_rows(batch), dtype=bool)
        rows = image_digests(batch, scope & ~documents)
        removals = _document_digests(batch, scope & documents, rows)
        texts = [N.exact_text(t) for t in R.text_of(batch)]
        layouts = _layouts(batch, documents)
        hashes: list[str | None] = []
        for text, row, want, layout in zip(texts, rows, scope, layouts):
            if not want or isinstance(row, Drop) or (not text and not row):
                hashes.append(None)
            else:
                hashes.append(N.sample_hash(text + layout, row))
        drops = [row if isinstance(row, Drop) else None for row in rows]
        out = with_column(self.with_quality(batch), "content_hash", pa.array(hashes, type=pa.string()))
        return apply_verdicts(out, drops, removals, removal_stage(self))


def _document_digests(batch: pa.Table, wanted: np.ndarray, rows: list) -> list[list[tuple[int, Drop]]]:
    """Fill `rows` in place with each document's image digests (carried by image_facts or read here);
    an image that cannot be read is removed from its document rather than dropping the document."""
    removals: list[list[tuple[int, Drop]]] = [[] for _ in range(batch.num_rows)]
    if not wanted.any():
        return removals
    refs = batch.column("images").to_pylist()
    facts = row_facts(batch)
    for i in np.flatnonzero(wanted):
        if facts[i] is not None:
            rows[i] = [f["digest"] for f in facts[i]]
            continue
        digests = []
        for j, ref in enumerate(refs[i] or []):
            got = read_or_drop(ref, I.read_image_bytes)
            if isinstance(got, Drop):
                removals[i].append((j, got))
            else:
                digests.append(bytes_digest(got))
        rows[i] = digests
    return removals


def _layouts(batch: pa.Table, documents: np.ndarray) -> list[str]:
    """What the text and the image digests do not say about a document: where its images sit between
    its paragraphs (two pages with the same words and pictures in another order are not the same)."""
    if not documents.any():
        return [""] * batch.num_rows
    segments = batch.column("segments").to_pylist()
    return ["\x00" + "".join("i" if s["kind"] == "image" else "t" for s in segments[i]) if documents[i] else ""
            for i in range(batch.num_rows)]
