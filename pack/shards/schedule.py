"""The shards stage's whole-dataset step, distributed: no process holds every sample.

1. ``pack_partial`` / ``combine_pack_stats`` (an aggregate): per-pack statistics — segments, tokens,
   attention cost (sum of squared segment lengths), image tokens and their squares. Costs are sums
   over segments, so partial sums from any batching combine exactly.
2. The balanced plan (pack.balance.plan) runs on the driver over those per-pack numbers only, and
   ``pack.shards.slots`` lays its slots out as shards (integers, written to disk, not kept): rank by
   rank in training order, ``packs_per_shard`` per tar, carried-over packs after them, dropped
   leftover packs in no shard (-1).
3. ``slots.assign_slots`` (a map, reading that file) gives every row the slots of its pack — one
   copy per slot, so a pack repeated by ``pad_with_repeats`` travels to both shards — and
   ``write_shard_groups`` (a shuffle-reduce by shard, ``reduce_partitions`` partitions of whole
   shards) writes each tar where its rows meet and leaves a small result file beside it for the
   manifest; the driver gets one row per shard.
4. ``slots.slot_decisions`` (a map over the step's input) gives every sample its decision from its
   first slot and the writers' failures.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import records as R
from curate.base.partials import read_partials, write_partial
from pack.balance import plan as B
from pack.shards.slots import SLOT_COLUMNS
from pack.shards.writer import PackJob, ShardJob, ShardResult, WriterSettings, write_shard
from pack.shards.ids import SegmentTokenizer

RESULTS_DIR = ".results"
REDUCE_ROWS = 250_000   # rows per call of the shuffle that writes the shards, at most (and at least one shard)


@dataclass
class PackStats:
    """Per-pack numbers, ordered by pack_id."""
    pack_ids: np.ndarray
    segments: np.ndarray
    tokens: np.ndarray
    attention: np.ndarray
    min_segment: np.ndarray
    image_tokens: np.ndarray
    image_tokens_sq: np.ndarray

    def costs(self, model: B.CostModel) -> B.PackCosts:
        patches = self.image_tokens * model.patches_per_image_token
        patches_sq = self.image_tokens_sq * model.patches_per_image_token ** 2
        vit = patches + patches_sq / (6.0 * model.vit_hidden)
        return B.PackCosts(self.tokens.astype(np.int64), self.attention, patches, patches_sq, vit)


def _list_sums(col: pa.ChunkedArray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row sum and sum of squares of an integer list column (null and missing lists count as empty)."""
    if col is None:
        return np.zeros(n), np.zeros(n)
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    arr = pc.fill_null(arr, pa.scalar([], type=arr.type))
    flat = np.asarray(pc.list_flatten(arr).to_numpy(zero_copy_only=False), dtype=np.float64)
    row = np.asarray(pc.list_parent_indices(arr).to_numpy(zero_copy_only=False), dtype=np.int64)
    return np.bincount(row, flat, minlength=n), np.bincount(row, flat * flat, minlength=n)


def pack_partial(batch: pa.Table) -> pa.Table:
    for col in ("num_tokens", "pack_id", "pack_position"):
        if col not in batch.column_names:
            raise ValueError(f"shards: column {col!r} is missing; run count_tokens and pack before shards")
        if batch.column(col).null_count:
            raise ValueError(f"shards: {batch.column(col).null_count} kept rows have no {col}; "
                             "run count_tokens and pack before shards")
    n = batch.num_rows
    pid = batch.column("pack_id").to_numpy()
    tok = batch.column("num_tokens").to_numpy().astype(np.float64)
    img, img_sq = _list_sums(batch.column("image_tokens") if "image_tokens" in batch.column_names else None, n)
    vid, vid_sq = _list_sums(batch.column("video_tokens") if "video_tokens" in batch.column_names else None, n)
    ids, inv = np.unique(pid, return_inverse=True)
    m = ids.size
    min_seg = np.full(m, np.inf)
    np.minimum.at(min_seg, inv, tok)
    return pa.table({"pack_id": ids, "segments": np.bincount(inv, minlength=m).astype(np.int64),
                     "tokens": np.bincount(inv, tok, minlength=m), "attention": np.bincount(inv, tok * tok, minlength=m),
                     "min_segment": min_seg, "image_tokens": np.bincount(inv, img + vid, minlength=m),
                     "image_tokens_sq": np.bincount(inv, img_sq + vid_sq, minlength=m)})


def merge_pack_stats(parts: pa.Table) -> pa.Table:
    """Partials of ``pack_partial`` as one, one row per pack: the workers' tree-combine step (sums of
    integers, exact in float64 below 2**53, so any grouping gives the same numbers)."""
    sums = [(c, "sum") for c in ("segments", "tokens", "attention", "image_tokens", "image_tokens_sq")]
    merged = parts.group_by("pack_id", use_threads=False).aggregate(sums + [("min_segment", "min")])
    return merged.rename_columns([n.rsplit("_sum", 1)[0] if n.endswith("_sum") else n.rsplit("_min", 1)[0]
                                  if n.endswith("_min") else n for n in merged.column_names]) \
        .select(parts.column_names).sort_by("pack_id")


def combine_pack_stats(parts: pa.Table) -> PackStats:
    """Sum the partials per pack (any order, any batching) into one row per pack, by pack_id."""
    if parts.num_rows == 0:
        z = np.zeros(0)
        return PackStats(np.zeros(0, dtype=np.int64), z.astype(np.int64), z, z, z, z, z)
    ids, inv = np.unique(parts.column("pack_id").to_numpy(), return_inverse=True)
    m = ids.size

    def total(name: str) -> np.ndarray:
        return np.bincount(inv, parts.column(name).to_numpy().astype(np.float64), minlength=m)

    min_seg = np.full(m, np.inf)
    np.minimum.at(min_seg, inv, parts.column("min_segment").to_numpy())
    return PackStats(ids, total("segments").astype(np.int64), total("tokens"), total("attention"), min_seg,
                     total("image_tokens"), total("image_tokens_sq"))


def check_stats(stats: PackStats, L: int) -> None:
    over = np.flatnonzero(stats.tokens > L)
    if over.size:
        p = int(stats.pack_ids[over[0]])
        raise ValueError(f"shards: pack {p} holds {int(stats.tokens[over[0]])} tokens > context_length {L}; "
                         "the pack plan was made for another context_length")
    if stats.min_segment.size and stats.min_segment.min() <= 0:
        p = int(stats.pack_ids[int(np.argmin(stats.min_segment))])
        raise ValueError(f"shards: pack {p} has a sample with num_tokens <= 0")


_TOKENIZERS: dict[tuple, SegmentTokenizer] = {}


def _tokenizer(settings: WriterSettings) -> SegmentTokenizer | None:
    if not settings.tokenizer:
        return None
    key = (settings.tokenizer, json.dumps(dict(settings.template), sort_keys=True, default=str))
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = SegmentTokenizer(settings.tokenizer, settings.template)
    return _TOKENIZERS[key]


def reduce_partitions(shards: int, rows: int) -> int:
    """Partitions of the shuffle that takes every row to its shard: one per REDUCE_ROWS rows, never
    more than the shards. Ray's sort shuffle makes input blocks x partitions pieces, each an object
    the driver owns while the shuffle runs (~20-35 KB of its memory apiece, measured): one partition
    per shard made that grow with the square of the rows (~5,000 pieces at 5M rows). A partition
    holds whole shards, so the shards written do not depend on the count (write_shard_groups)."""
    return max(1, min(shards, -(-rows // REDUCE_ROWS)))


def write_shard_groups(group: pa.Table, root: str, settings: WriterSettings) -> pa.Table:
    """Write the shards whose rows are in `group` (dropped leftover packs, shard -1, are not written);
    one row per shard met, with its slot rows. The samples' decisions are made apart, by
    ``slots.slot_decisions``, so nothing per row comes back from this shuffle."""
    shard_col = group.column("_shard").to_numpy()
    shards, counts = np.unique(shard_col, return_counts=True)
    for shard in shards:
        if shard >= 0:
            _write_one(group.filter(pa.array(shard_col == shard)), root, settings)
    return pa.table({"_shard": pa.array(shards, pa.int64()), "rows": pa.array(counts, pa.int64())})


def check_met(met: pa.Table, shards: int) -> None:
    """Each shard met in exactly one reduce call (the shuffle's contract: whole key groups)."""
    ids = met.column("_shard").to_numpy() if met.num_rows else np.zeros(0, dtype=np.int64)
    written, times = np.unique(ids[ids >= 0], return_counts=True)
    if (times > 1).any() or (written >= shards).any():
        raise RuntimeError(f"shards: the writing shuffle met shard(s) {written[(times > 1) | (written >= shards)][:5].tolist()} "
                           f"more than once or out of range ({shards} shards)")


def _write_one(rows: pa.Table, root: str, settings: WriterSettings) -> ShardResult:
    order = np.lexsort((rows.column(R.ORDINAL).to_numpy(), rows.column("pack_position").to_numpy(),
                        rows.column("_order").to_numpy()))
    t = rows.take(pa.array(order, type=pa.int64()))
    records = t.to_pylist()
    packs: list[PackJob] = []
    for rec in records:
        if not packs or packs[-1].key != rec["_pack_key"]:
            rank = rec["_rank"] if rec["_rank"] >= 0 else None
            packs.append(PackJob(rec["_pack_key"], int(rec["pack_id"]), rank, rec["_step"] if rank is not None else None,
                                 rec["_micro"] if rank is not None else None, rec["_repeat_of"] or None, []))
        packs[-1].segments.append({k: v for k, v in rec.items() if k not in SLOT_COLUMNS})
    result = write_shard(root, ShardJob(records[0]["_shard_path"], packs), settings, _tokenizer(settings))
    write_partial(os.path.join(root, RESULTS_DIR), int(records[0]["_shard"]), asdict(result))
    return result


def read_results(root: str, n_shards: int) -> list[ShardResult]:
    """The per-shard results the writers left beside the tars, in shard order (then removed)."""
    docs = read_partials(os.path.join(root, RESULTS_DIR))
    missing = [i for i in range(n_shards) if i not in docs]
    if missing:
        raise RuntimeError(f"shards: no result for shard(s) {missing[:5]}; a writer did not finish")
    return [ShardResult(**{**docs[i], "failures": [tuple(f) for f in docs[i]["failures"]]}) for i in range(n_shards)]
