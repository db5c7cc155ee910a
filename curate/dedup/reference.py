"""A reference corpus (eval sets' images and questions) indexed for ``decontaminate``.

The reference is small next to the training data (eval sets hold thousands to a few hundred
thousand items), so it is indexed once per worker in ``setup()`` and every training row is matched
against it in ``process_batch``: a per-row map against a broadcast index, no global step and no
shuffle of the training data. The index is a sorted array of LSH bucket keys with the reference
item of each (``SortedIndex``): a lookup is one ``searchsorted`` per query key.

Text is matched per *unit* (the caption and each conversation turn separately), so an eval
question hidden inside a longer training conversation is still found; units shorter than
``min_chars`` ("Yes.", "What is this?") are too generic to mean contamination and are skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from curate.dedup import normalize as N


@dataclass
class SortedIndex:
    """LSH bucket key -> reference item ids, as two parallel arrays sorted by key."""
    keys: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    @classmethod
    def build(cls, key_matrix: np.ndarray, ids: np.ndarray) -> "SortedIndex":
        keys = np.asarray(key_matrix, dtype=np.uint64).ravel()
        owners = np.repeat(np.asarray(ids, dtype=np.int64), key_matrix.shape[1] if key_matrix.ndim == 2 else 1)
        order = np.lexsort((owners, keys))
        return cls(keys[order], owners[order])

    def lookup(self, key_matrix: np.ndarray, query_ids: np.ndarray, max_bucket_size: int) -> np.ndarray:
        """Distinct (query id, reference id) candidate pairs, at most `max_bucket_size` per bucket."""
        q = np.asarray(key_matrix, dtype=np.uint64).ravel()
        owners = np.repeat(np.asarray(query_ids, dtype=np.int64), key_matrix.shape[1] if key_matrix.ndim == 2 else 1)
        lo = np.searchsorted(self.keys, q, side="left")
        hi = np.minimum(np.searchsorted(self.keys, q, side="right"), lo + max_bucket_size)
        counts = hi - lo
        if counts.sum() == 0:
            return np.empty((0, 2), dtype=np.int64)
        query = np.repeat(owners, counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        ref = self.ids[np.repeat(lo, counts) + offsets]
        return np.unique(np.stack([query, ref], axis=1), axis=0)


def text_units(table: pa.Table, min_chars: int) -> tuple[np.ndarray, list[str]]:
    """(row index, fuzzy-normalised text) of every caption and turn with at least `min_chars` characters."""
    rows, units = [], []
    texts = table.column("text").to_pylist() if "text" in table.column_names else [None] * table.num_rows
    convs = table.column("conversations").to_pylist() if "conversations" in table.column_names else [None] * table.num_rows
    for i, (text, conv) in enumerate(zip(texts, convs)):
        for raw in [text] + [t.get("content") for t in (conv or [])]:
            unit = N.fuzzy_text(raw)
            if len(unit) >= min_chars:
                rows.append(i)
                units.append(unit)
    return np.array(rows, dtype=np.int64), units
