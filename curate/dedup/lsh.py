"""LSH buckets -> verified candidate edges, shaped as the distributed steps will run them.

Pipeline shape (each function is pure, so the coordinator's GlobalData primitives can run it):

1. **map** ``band_rows``: one (bucket, member) row per row and band, from the band keys computed
   per batch (``minhash.band_keys`` / ``phash.band_keys``).
2. **per-bucket reduce** ``bucket_edges``: all rows of one bucket in one call (``shuffle_reduce`` by
   bucket). Edges are *chained through an anchor*, never all pairs: the bucket's first member is
   compared with every other member, verified matches become edges (at most n-1 per bucket, as in
   NeMo's ``pairwise()`` chaining), and the members that failed verification form the bucket again
   without the anchor for the next round. Unlike NeMo, a candidate only becomes an edge after the
   caller's ``verify`` (estimated Jaccard from signatures, or Hamming distance of perceptual hashes),
   which removes NeMo's ~1-2% false positives (NeMo#471). A bucket with more than ``max_bucket_size``
   members is cut to its first ``max_bucket_size`` (by ``_ordinal``, so the cut is deterministic): one degenerate bucket (blank images, boilerplate) cannot cost
   O(n^2) rounds, and the cut is reported.
3. ``equal_key_edges``: rows with an equal exact key (content hash) linked to the key's first
   member, n-1 edges per key, never cut (no verification cost). A star, not a path: the
   distributed components (``star_components``) settle a star in one round, a path of n in ~log2 n.

Member ids are row positions in (bucket, ``_ordinal``) order (``global_step.reduce_buckets``), so
every choice here (anchor, cut, edge direction) depends on the bucket's rows alone, never on input
order or partitioning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

Verify = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Edges:
    """Undirected edges between member ids, plus counters for the report."""
    src: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    dst: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    candidates: int = 0          # distinct (anchor, member) pairs verified
    rejected: int = 0            # candidates that failed verification
    capped_buckets: int = 0      # buckets cut to max_bucket_size
    capped_members: int = 0      # memberships dropped by those cuts

    def extend(self, other: "Edges") -> "Edges":
        return Edges(np.concatenate([self.src, other.src]), np.concatenate([self.dst, other.dst]),
                     self.candidates + other.candidates, self.rejected + other.rejected,
                     self.capped_buckets + other.capped_buckets, self.capped_members + other.capped_members)


def band_rows(members: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten an (n x bands) key matrix into (bucket, member) rows; keys already include the band."""
    keys = np.asarray(keys, dtype=np.uint64)
    members = np.asarray(members, dtype=np.int64)
    return keys.ravel(), np.repeat(members, keys.shape[1] if keys.ndim == 2 else 1)


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Boolean mask: True where a new run of equal keys begins."""
    start = np.ones(sorted_keys.shape[0], dtype=bool)
    start[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return start


def _position_in_run(start: np.ndarray) -> np.ndarray:
    idx = np.arange(start.shape[0])
    run_first = np.maximum.accumulate(np.where(start, idx, 0))
    return idx - run_first


def cap_buckets(bucket: np.ndarray, member: np.ndarray, max_bucket_size: int
                ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Sort by (bucket, member), drop duplicate rows and singleton buckets, cut big buckets.

    Returns (bucket, member, capped_buckets, capped_members)."""
    order = np.lexsort((member, bucket))
    bucket, member = bucket[order], member[order]
    if bucket.shape[0]:
        dup = np.zeros(bucket.shape[0], dtype=bool)
        dup[1:] = (bucket[1:] == bucket[:-1]) & (member[1:] == member[:-1])
        bucket, member = bucket[~dup], member[~dup]
    start = _run_starts(bucket)
    pos = _position_in_run(start)
    over = pos >= max_bucket_size
    capped_buckets = int(np.count_nonzero(over & (pos == max_bucket_size)))
    bucket, member = bucket[~over], member[~over]
    start = _run_starts(bucket)
    run_id = np.cumsum(start) - 1
    sizes = np.bincount(run_id) if run_id.shape[0] else np.empty(0, dtype=np.int64)
    multi = sizes[run_id] > 1 if run_id.shape[0] else np.empty(0, dtype=bool)
    return bucket[multi], member[multi], capped_buckets, int(np.count_nonzero(over))


def bucket_edges(bucket: np.ndarray, member: np.ndarray, verify: Verify, max_bucket_size: int = 1000) -> Edges:
    """Verified anchor-chained edges for every bucket at once (see the module docstring)."""
    bucket = np.asarray(bucket, dtype=np.uint64)
    member = np.asarray(member, dtype=np.int64)
    bucket, member, capped_b, capped_m = cap_buckets(bucket, member, max_bucket_size)
    src_parts, dst_parts = [], []
    candidates = rejected = 0
    while bucket.shape[0]:
        start = _run_starts(bucket)
        anchor_of = member[np.maximum.accumulate(np.where(start, np.arange(start.shape[0]), 0))]
        rest = ~start
        a, b, bk = anchor_of[rest], member[rest], bucket[rest]
        pairs = np.unique(np.stack([a, b], axis=1), axis=0) if a.shape[0] else np.empty((0, 2), dtype=np.int64)
        ok_pairs = pairs[verify(pairs[:, 0], pairs[:, 1])] if pairs.shape[0] else pairs
        candidates += pairs.shape[0]
        rejected += pairs.shape[0] - ok_pairs.shape[0]
        src_parts.append(ok_pairs[:, 0])
        dst_parts.append(ok_pairs[:, 1])
        # members that failed against their anchor try again, without it, in the next round
        ok_set = _pair_codes(ok_pairs[:, 0], ok_pairs[:, 1])
        failed = ~np.isin(_pair_codes(a, b), ok_set)
        bucket, member = bk[failed], b[failed]
        start = _run_starts(bucket)
        run_id = np.cumsum(start) - 1
        if run_id.shape[0]:
            multi = np.bincount(run_id)[run_id] > 1
            bucket, member = bucket[multi], member[multi]
    src = np.concatenate(src_parts) if src_parts else np.empty(0, dtype=np.int64)
    dst = np.concatenate(dst_parts) if dst_parts else np.empty(0, dtype=np.int64)
    return Edges(src.astype(np.int64), dst.astype(np.int64), candidates, rejected, capped_b, capped_m)


def _pair_codes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One comparable value per (a, b) pair of non-negative ids below 2^31."""
    return (np.asarray(a, dtype=np.int64) << np.int64(31)) | np.asarray(b, dtype=np.int64)


def equal_key_edges(keys: np.ndarray, valid: np.ndarray | None = None) -> Edges:
    """Link the members (ids 0..n-1) that share an exact key to its first (smallest id) member: n-1
    edges per key, no verification."""
    keys = np.asarray(keys)
    ids = np.arange(keys.shape[0], dtype=np.int64)
    if valid is not None:
        keys, ids = keys[valid], ids[valid]
    if keys.shape[0] < 2:
        return Edges()
    _, codes = np.unique(keys, return_inverse=True)
    order = np.lexsort((ids, codes))
    codes, ids = codes[order], ids[order]
    first = np.r_[True, codes[1:] != codes[:-1]]
    anchor = ids[np.maximum.accumulate(np.where(first, np.arange(first.shape[0]), 0))]
    return Edges(anchor[~first], ids[~first])
