"""Test-only stage: caption samples become interleaved documents (their caption repeated into
paragraphs, their image at two positions), so that recipe-level tests can run documents through
count_tokens, pack and shards before a document reader is in the recipe."""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from curate.base import BatchResult, Resources, Stage, register, split_drops
from curate.base import records as R
from curate.documents.record import build_document


@register
class AsDocuments(Stage):
    name = "as_documents"
    description = "Test-only: each caption sample becomes a document of paragraphs and its image twice."
    requires = ("text", "images")
    adds = {}
    resources = Resources(cpus=1, batch_size=16)

    @dataclass
    class Config:
        paragraph_repeats: int = 8     # the caption repeated this many times per paragraph (x row index % 5)

    def process_batch(self, batch: pa.Table) -> BatchResult:
        rows = batch.to_pylist()
        for i, row in enumerate(rows):
            caption, image = row["text"] or "", row["images"][0]
            n = self.config.paragraph_repeats * (1 + row[R.ORDINAL] % 5)
            para = " ".join([caption] * n)
            row.update(build_document([para, image, "In short: " + caption, image, para]), category="interleaved")
        out = pa.Table.from_pylist(rows, schema=batch.schema)
        return split_drops(out, [None] * len(rows))
