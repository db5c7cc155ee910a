"""``decontaminate``: remove training samples that match any sample of a reference corpus.

The same engines as the dedup stages, pointed at a reference (eval sets' images and questions,
read with the recipe's readers from ``reference_path``): exact text (fuzzy normal form) and image
bytes, MinHash near-duplicate text units (Jaccard >= ``threshold``) and pHash near-duplicate
images (Hamming <= ``max_distance``). See ``reference`` for why this is a per-row map against an
index built in ``setup()``. A match rejects the training row as ``decontaminate:text`` or
``decontaminate:image``, naming the reference sample and the measured similarity.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from curate.dedup import minhash as M
from curate.dedup import normalize as N
from curate.dedup import phash as P
from curate.dedup.reference import SortedIndex, text_units
from curate.dedup.sample_bytes import read_rows, thumbnails
from curate.base import Drop, split_drops
from curate.base import BatchResult, Resources, Stage, register


@dataclass
class _TextIndex:
    owners: list[str]
    sigs: np.ndarray
    lsh: SortedIndex
    exact: dict[str, int]


@dataclass
class _ImageIndex:
    owners: list[str]
    hashes: np.ndarray
    lsh: SortedIndex
    exact: dict[bytes, int]


@register
class DecontaminateStage(Stage):
    name = "decontaminate"
    description = ("Remove training samples whose text units or images match a reference corpus (eval sets): "
                   "exact, MinHash near-duplicate text, pHash near-duplicate images.")
    requires = ("key", "text", "conversations", "images")
    resources = Resources(cpus=1, batch_size=256)

    @dataclass
    class Config:
        reference_path: str = field(default="", metadata={"doc": "glob of the reference corpus files (required)"})
        reference_format: Literal["webdataset", "parquet", "llava"] = "llava"
        match: list[str] = field(default_factory=lambda: ["text", "image"], metadata={
            "doc": "engines to use: 'text' (exact + MinHash per caption/turn) and/or 'image' (exact + pHash)"})
        threshold: float = field(default=0.6, metadata={"doc": "Jaccard of character n-grams that counts as a match"})
        ngram: int = 5
        num_perm: int = 128
        min_chars: int = field(default=24, metadata={"doc": "shorter captions/turns are too generic to match"})
        max_distance: int = field(default=12, metadata={"doc": "largest pHash Hamming distance (of 64) that matches"})
        bits_per_band: int = 16
        target_recall: float = 0.95
        flat_max_std: float = field(default=2.0, metadata={"doc": "blank images are matched on exact bytes only"})
        max_bucket_size: int = 1000
        seed: int = 42

    def validate_config(self) -> None:
        c = self.config
        if not c.reference_path:
            raise ValueError("reference_path: the reference corpus to decontaminate against is required")
        unknown = set(c.match) - {"text", "image"}
        if unknown or not c.match:
            raise ValueError(f"match: choose from 'text', 'image' (got {c.match})")
        if c.min_chars < c.ngram:
            raise ValueError("min_chars must be >= ngram")
        self.perms = M.Permutations.make(c.num_perm, c.seed)
        self.bands, self.rows = M.choose_bands(c.threshold, c.num_perm)
        self.positions = P.sampled_positions(P.choose_image_bands(c.max_distance, c.bits_per_band, c.target_recall),
                                             c.bits_per_band, c.seed)

    def setup(self) -> None:
        from curate.readers.read import read_source
        c = self.config
        from curate.readers.read import list_files
        if not list_files(c.reference_path):
            raise ValueError(f"reference_path: no file matches {c.reference_path!r}")
        ref = read_source(c.reference_path, format=c.reference_format, source="reference").kept
        keys = ref.column("key").to_pylist()
        self.reference_rows = ref.num_rows
        self.text_index = self._index_text(ref, keys) if "text" in c.match else None
        self.image_index = self._index_images(ref, keys) if "image" in c.match else None

    def summarize(self, kept: pa.Table) -> dict[str, Any]:
        """The size of the reference index. ``setup()`` builds it where the batches run — under Ray
        in the workers, whose stage objects the driver never sees — so the driver's own instance
        builds it here (once per run; inline it is already built)."""
        self.ensure_setup()
        return {"decontaminate": {"reference_rows": self.reference_rows,
                                  "reference_text_units": len(self.text_index.owners) if self.text_index else 0,
                                  "reference_images": len(self.image_index.owners) if self.image_index else 0}}

    def _index_text(self, ref: pa.Table, keys: list[str]) -> _TextIndex:
        rows, units = text_units(ref, self.config.min_chars)
        sigs, _ = M.signatures(units, self.config.ngram, self.perms)
        lsh = SortedIndex.build(M.band_keys(sigs, self.bands, self.rows), np.arange(len(units)))
        exact = {N.text_hash(u): i for i, u in reversed(list(enumerate(units)))}
        return _TextIndex([keys[r] for r in rows], sigs, lsh, exact)

    def _index_images(self, ref: pa.Table, keys: list[str]) -> _ImageIndex:
        raw = read_rows(ref, np.ones(ref.num_rows, dtype=bool))
        thumbs, _ = thumbnails(raw)
        owners, stack, digests = [], [], []
        for key, row_thumbs, row_bytes in zip(keys, thumbs, raw):
            if isinstance(row_thumbs, Drop):
                continue   # an unreadable reference image cannot contaminate anything
            for t, b in zip(row_thumbs, row_bytes):
                owners.append(key)
                stack.append(t)
                digests.append(N.bytes_digest(b))
        arr = np.stack(stack) if stack else np.empty((0, P.THUMB, P.THUMB), np.float32)
        hashes, flat = P.phash_batch(arr), P.is_flat(arr, self.config.flat_max_std)
        ids = np.flatnonzero(~flat)
        lsh = SortedIndex.build(P.band_keys(hashes[ids], self.positions), ids)
        exact = {d: i for i, d in reversed(list(enumerate(digests)))}
        return _ImageIndex(owners, hashes, lsh, exact)

    def process_batch(self, batch: pa.Table) -> BatchResult:
        drops: list[Drop | None] = [None] * batch.num_rows
        if self.image_index is not None:
            self._match_images(batch, drops)
        if self.text_index is not None:
            self._match_text(batch, drops)
        return split_drops(batch, drops)

    def _match_text(self, batch: pa.Table, drops: list[Drop | None]) -> None:
        idx = self.text_index
        rows, units = text_units(batch, self.config.min_chars)
        for r, u in zip(rows, units):
            hit = idx.exact.get(N.text_hash(u))
            if hit is not None and drops[r] is None:
                drops[r] = Drop("decontaminate:text", f"matches reference {idx.owners[hit]} (same text)")
        if not units or idx.sigs.shape[0] == 0:
            return
        sigs, _ = M.signatures(units, self.config.ngram, self.perms)
        pairs = idx.lsh.lookup(M.band_keys(sigs, self.bands, self.rows), np.arange(len(units)),
                               self.config.max_bucket_size)
        if pairs.shape[0] == 0:
            return
        jac = M.estimated_jaccard(sigs[pairs[:, 0]], idx.sigs[pairs[:, 1]])
        for (unit, ref), j in zip(pairs[jac >= self.config.threshold], jac[jac >= self.config.threshold]):
            r = rows[unit]
            if drops[r] is None:
                drops[r] = Drop("decontaminate:text", f"matches reference {idx.owners[ref]} (est. Jaccard {j:.2f})")

    def _match_images(self, batch: pa.Table, drops: list[Drop | None]) -> None:
        idx = self.image_index
        raw = read_rows(batch, np.ones(batch.num_rows, dtype=bool))
        thumbs, bad = thumbnails(raw)
        owner, stack = [], []
        for r, (row_thumbs, row_bytes) in enumerate(zip(thumbs, raw)):
            if bad[r] is not None:
                drops[r] = bad[r]
                continue
            for t, b in zip(row_thumbs, row_bytes):
                hit = idx.exact.get(N.bytes_digest(b))
                if hit is not None and drops[r] is None:
                    drops[r] = Drop("decontaminate:image", f"matches reference {idx.owners[hit]} (same bytes)")
                owner.append(r)
                stack.append(t)
        if not stack or idx.hashes.shape[0] == 0:
            return
        arr = np.stack(stack)
        hashes, flat = P.phash_batch(arr), P.is_flat(arr, self.config.flat_max_std)
        query = np.flatnonzero(~flat)
        pairs = idx.lsh.lookup(P.band_keys(hashes[query], self.positions), query, self.config.max_bucket_size)
        if pairs.shape[0] == 0:
            return
        dist = P.hamming(hashes[pairs[:, 0]], idx.hashes[pairs[:, 1]])
        close = dist <= self.config.max_distance
        for (img, ref), d in zip(pairs[close], dist[close]):
            r = owner[img]
            if drops[r] is None:
                drops[r] = Drop("decontaminate:image", f"matches reference {idx.owners[ref]} (Hamming {d}/64)")
