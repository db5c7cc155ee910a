"""``exact_dedup``: samples whose normalised text and image bytes are identical.

The content hash is BLAKE2b over the NFKC/casefold/whitespace-normalised text (caption and every
turn) and the tuple of the images' byte digests, in order (interleaved and multi-image samples
match only with the same images in the same order). Rows with neither text nor images have no hash
and are never grouped. The image digests come from ``image_facts`` where ``image_filter`` carried
them (no read here), else from reading the bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from curate.base import records as R
from curate.dedup import normalize as N
from curate.dedup.base import DUP_COLUMNS, DedupStage, SurvivorConfig, with_column
from curate.dedup.sample_bytes import image_digests
from curate.base import Drop, split_drops
from curate.base import BatchResult, Resources, register


@register
class ExactDedupStage(DedupStage):
    name = "exact_dedup"
    description = "Remove samples whose normalised text and image bytes equal another's; the best copy survives."
    requires = ("key", "source", "category", "text", "conversations", "images")
    adds = {"content_hash": pa.string(), **DUP_COLUMNS}
    resources = Resources(cpus=1, batch_size=256)
    hash_column = "content_hash"
    reason = "dedup:exact"

    @dataclass
    class Config(SurvivorConfig):
        pass

    def process_batch(self, batch: pa.Table) -> BatchResult:
        scope = self.in_scope(batch)
        rows = image_digests(batch, scope)
        texts = [N.exact_text(t) for t in R.text_of(batch)]
        hashes: list[str | None] = []
        for text, row, want in zip(texts, rows, scope):
            if not want or isinstance(row, Drop) or (not text and not row):
                hashes.append(None)
            else:
                hashes.append(N.sample_hash(text, row))
        drops = [row if isinstance(row, Drop) else None for row in rows]
        out = with_column(self.with_quality(batch), "content_hash", pa.array(hashes, type=pa.string()))
        return split_drops(out, drops)
