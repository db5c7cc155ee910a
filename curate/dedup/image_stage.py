"""``image_dedup``: near-duplicate images by 64-bit pHash with a Hamming tolerance.

Per batch: each image's bytes are read, decoded at reduced size and hashed (``phash``) — unless
``image_filter`` ran before and carried the digest, pHash and thumbnail std (``image_facts``): then
nothing is read or decoded here (``sample_bytes.hashed_rows``). The row gets ``image_phash`` (one uint64 per image, in order) and ``image_hash`` (digest of the exact
bytes). A row with a flat (blank) image gets no pHash: blank hashes are noise, so it is matched on
exact bytes only and counted as ``flat_images`` in the report.

Documents (category ``interleaved`` with segments) are matched image by image inside the document: an
image that repeats an earlier one of the same page (same bytes, or within ``max_distance`` bits) is
removed from the document with ``dedup:image_repeated_in_document`` (curate.documents.per_image);
documents take no part in the row matching below (images repeated *across* documents are the
repeated-images step's to count).

Globally: equal byte hashes are linked (a star per hash); the first image's pHash goes through
bit-sampling LSH (``bits_per_band`` sampled bits per band, bands chosen so a pair at ``max_distance`` collides with
probability >= ``target_recall``); a candidate becomes an edge only if the two rows have the same
number of images and every image pair is within ``max_distance`` bits. Inside a component an image
is removed only when within ``max_distance`` bits of a KEPT image (``greedy_stars``), so chains of
edits do not collapse to one survivor. Default 12 of 64: measured
on scikit-image photos, re-encoding (JPEG q30-q90) and 2x-4x downscaling move 0-2 bits, crops of
3-5% up to 12, different photos differ in >= 20 (bench/bench_dedup.py has the table).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.dedup import normalize as N
from curate.dedup import phash as P
from curate.dedup.base import DUP_COLUMNS, DedupStage, SurvivorConfig, with_column
from curate.dedup.sample_bytes import HashedImage, document_images, hashed_rows
from curate.base import Drop, split_drops
from curate.documents.per_image import apply_verdicts, document_rows, removal_stage
from curate.media.image_facts import FACTS_COLUMN, row_facts
from curate.base import BatchResult, Resources, register


def phash_matrix(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n x max_images) uint64 hashes padded with 0, image counts, and validity of each row.

    Vectorised (Arrow list lengths + flattened values): the verifier builds it over every bucket row
    of a reduce call (~bands rows per image), where a Python loop over the rows was most of the stage."""
    lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(lists)
    counts = np.asarray(pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    valid = counts > 0
    width = max(1, int(counts.max()) if n else 1)
    mat = np.zeros((n, width), dtype=np.uint64)
    flat = np.asarray(pc.list_flatten(lists).to_numpy(zero_copy_only=False), dtype=np.uint64)
    if flat.shape[0]:
        rows = np.repeat(np.arange(n), counts)
        starts = np.cumsum(counts) - counts
        mat[rows, np.arange(flat.shape[0]) - np.repeat(starts, counts)] = flat
    return mat, counts, valid


@register
class ImageDedupStage(DedupStage):
    name = "image_dedup"
    description = ("Remove near-duplicate images (pHash, bit-sampling LSH, Hamming-confirmed; robust to "
                   "re-encoding, resizing and small crops). The best copy survives.")
    requires = ("key", "source", "category", "images")
    reads_if_present = (FACTS_COLUMN,)   # image_filter's digests (and pHashes), where it carried them
    adds = {"image_hash": pa.string(), "image_phash": pa.list_(pa.uint64()), **DUP_COLUMNS}
    resources = Resources(cpus=1, batch_size=64)
    hash_column = "image_hash"
    signature_columns = ("image_phash",)
    no_signature_label = "flat_images"
    reason = "dedup:near_image"

    @dataclass
    class Config(SurvivorConfig):
        categories: list[str] = field(default_factory=lambda: ["caption", "interleaved"], metadata={
            "doc": "categories deduplicated by image ([] = all). VQA and grounding samples legitimately "
                   "share an image across many questions, so they are out of scope by default"})
        max_distance: int = field(default=12, metadata={"doc": "largest Hamming distance (of 64 bits) between duplicates"})
        bits_per_band: int = field(default=16, metadata={
            "doc": "sampled bits per LSH band; ~log2(rows) keeps buckets small on large corpora"})
        target_recall: float = field(default=0.95, metadata={
            "doc": "probability that a pair at max_distance shares a band (sets the number of bands)"})
        flat_max_std: float = field(default=2.0, metadata={
            "doc": "images whose 32x32 grey thumbnail has a smaller standard deviation are blank: exact match only"})
        seed: int = field(default=42, metadata={"doc": "seed of the sampled bit positions"})

    def __init__(self, config: Any = None, context: Any = None, **settings: Any):
        super().__init__(config, context, **settings)
        c = self.config
        self.bands = P.choose_image_bands(c.max_distance, c.bits_per_band, c.target_recall)
        self.positions = P.sampled_positions(self.bands, c.bits_per_band, c.seed)

    def validate_config(self) -> None:
        super().validate_config()
        c = self.config
        if not 0 <= c.max_distance < P.HASH_BITS // 2:
            raise ValueError(f"max_distance must be in [0, {P.HASH_BITS // 2}), got {c.max_distance}")
        if not 1 <= c.bits_per_band <= P.HASH_BITS - c.max_distance:
            raise ValueError(f"bits_per_band must be in [1, {P.HASH_BITS - c.max_distance}]")

    def process_batch(self, batch: pa.Table) -> BatchResult:
        documents = np.array(document_rows(batch), dtype=bool)
        scope = self.in_scope(batch)
        rows, drops = hashed_rows(batch, scope & ~documents)
        removals = self._within_documents(batch, scope & documents)
        phashes: list[list[int] | None] = []
        digests: list[str | None] = []
        for row in rows:
            if row is None:   # out of scope, unreadable, or a document (matched image by image, above)
                phashes.append(None)
                digests.append(None)
                continue
            flat = row.stds < self.config.flat_max_std
            phashes.append(None if flat.any() else [int(h) for h in row.phashes])
            digests.append(N.digest(row.digests).hex())
        out = with_column(self.with_quality(batch), "image_hash", pa.array(digests, type=pa.string()))
        out = with_column(out, "image_phash", pa.array(phashes, type=pa.list_(pa.uint64())))
        return apply_verdicts(out, drops, removals, removal_stage(self))

    def _within_documents(self, batch: pa.Table, wanted: np.ndarray) -> list[list[tuple[int, Drop]]]:
        """Per document, the images to remove: a repeat of an earlier image of the same document (the
        same bytes, or a pHash within ``max_distance`` bits; blank images by bytes only), or one that
        cannot be read or decoded. Documents take no part in the row matching: two pages that share
        their pictures are not the same page (their text is text_dedup's to compare)."""
        refs = batch.column("images").to_pylist()
        facts = row_facts(batch, need_phash=True)
        out: list[list[tuple[int, Drop]]] = [[] for _ in range(batch.num_rows)]
        for i in np.flatnonzero(wanted):
            kept: list[tuple[int, HashedImage]] = []
            for j, image in enumerate(document_images(refs[i], facts[i])):
                if isinstance(image, Drop):
                    out[i].append((j, image))
                    continue
                flat = image.std < self.config.flat_max_std
                twin = next((k for k, other in kept if other.digest == image.digest or (
                    not flat and other.std >= self.config.flat_max_std
                    and P.hamming(np.array([other.phash], np.uint64), np.array([image.phash], np.uint64))[0]
                    <= self.config.max_distance)), None)
                if twin is None:
                    kept.append((j, image))
                else:
                    out[i].append((j, Drop("dedup:image_repeated_in_document", f"same as image {twin} of the document")))
        return out

    def lsh_keys(self, batch: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        mat, _, valid = phash_matrix(batch.column("image_phash"))
        rows = np.flatnonzero(valid)
        return rows, P.band_keys(mat[rows, 0], self.positions)

    def verifier(self, rows: pa.Table):
        mat, counts, _ = phash_matrix(rows.column("image_phash"))
        limit = self.config.max_distance

        def verify(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            close = (P.hamming(mat[a], mat[b]) <= limit).all(axis=1)
            return close & (counts[a] == counts[b])
        return verify

    same_label = "same bytes"
    farthest_label = "hamming_bits"
    integer_values = True

    def signature_closeness(self, rows: pa.Table):
        """Same number of images and every image pair within ``max_distance`` bits; the value is the
        largest of those distances (blank images have no pHash: never close here)."""
        mat, counts, valid = phash_matrix(rows.column("image_phash"))
        limit = self.config.max_distance

        def close(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            both = valid[a] & valid[b] & (counts[a] == counts[b])
            dist = P.hamming(mat[a], mat[b]).max(axis=1).astype(np.float64)
            return both & (dist <= limit), np.where(both, dist, np.nan)
        return close

    def describe(self, values: np.ndarray) -> list[str]:
        return [self.same_label if np.isnan(d) else f"Hamming {int(d)}/64" for d in values]

    def no_signature(self, batch: pa.Table) -> np.ndarray:
        return np.asarray(batch.column("image_hash").is_valid()) & np.asarray(batch.column("image_phash").is_null())

    def engine_report(self) -> dict[str, Any]:
        return {"bands": self.bands, "bits_per_band": self.config.bits_per_band,
                "max_distance": self.config.max_distance}
