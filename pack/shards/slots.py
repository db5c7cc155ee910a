"""Where every pack of the balanced plan is written: its slots, laid out as shards, kept on disk.

The plan (pack.balance.plan) says which pack each rank trains on in each (step, micro-batch). The shards
step turns that into one row per (pack, slot): the shard the pack goes to, its place there, and the
names the tar uses (pack key, shard path, the pack it repeats). Those rows used to be built on the
driver as Python lists (hundreds of bytes a pack while they were built) and shipped to every map
task inside its function. Here the driver computes them with numpy as integers only (7 int64 a
slot, written at once to a Parquet file beside the shards and dropped), and each worker reads that
file once and makes the names for the rows of its own batch: no string per pack on the driver, and
the tasks carry a path instead of the table.

Layout (unchanged): rank by rank in training order (step, then micro-batch), ``packs_per_shard``
per tar; carried-over packs after them in ``leftover/``; dropped leftover packs in no shard (-1). A
pack that ``pad_with_repeats`` places twice has two slots; the second names the first
(``_repeat_of``) and only the first is its samples' primary slot (their decision comes from it).

Each sample's decision is made here too, by a map over the step's input rows (``slot_decisions``),
from its primary slot and the writers' failures (written to the same directory once the shards are
written), not returned by the writing shuffle: a dataset the driver keeps for the decisions' routing
then descends from the read alone, and the shuffle's pieces (input blocks x partitions, each an
object the driver owns) are released as soon as the shards are written (README, "What the driver
holds, per stage").
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.base import records as R
from pack.balance import plan as B
from pack import packformat as F

SLOT_COLUMNS = ("_shard", "_shard_path", "_order", "_pack_key", "_rank", "_step", "_micro", "_repeat_of", "_primary")
# The integer slot table on disk: pack_index, _shard, _order, _rank, _step, _micro, _first (the flat
# (step, rank, micro) position of the pack's first slot when this one repeats it, else -1).
INT_COLUMNS = ("pack_index", "_shard", "_order", "_rank", "_step", "_micro", "_first")


def shard_layout(plan: B.Plan, leftover: int, packs_per_shard: int, carry_over: bool) -> tuple[list[str], list[int]]:
    """The shard paths, and the rank of each (-1: carried-over leftover): O(shards)."""
    per_rank = -(-plan.steps * plan.micro_batches // packs_per_shard)
    paths = [f"{F.rank_dir(r)}/{F.shard_name(j)}" for r in range(plan.dp_size) for j in range(per_rank)]
    ranks = [r for r in range(plan.dp_size) for _ in range(per_rank)]
    if carry_over:
        n = -(-leftover // packs_per_shard)
        paths += [f"{F.LEFTOVER_DIR}/{F.shard_name(j)}" for j in range(n)]
        ranks += [-1] * n
    return paths, ranks


def slot_table(plan: B.Plan, packs_per_shard: int, carry_over: bool) -> pa.Table:
    """One row per (pack, slot) of INT_COLUMNS, sorted by pack then shard (numpy, no row loop)."""
    steps, dp, micro = plan.slots.shape
    per_rank = -(-steps * micro // packs_per_shard)
    flat = plan.slots.reshape(-1).astype(np.int64)            # (step, rank, micro) order: training order
    first_pos = np.full(int(flat.max()) + 1 if flat.size else 0, -1, dtype=np.int64)
    ids, first = np.unique(flat, return_index=True)
    first_pos[ids] = first
    r, s, m = (a.reshape(-1) for a in np.meshgrid(np.arange(dp), np.arange(steps), np.arange(micro), indexing="ij"))
    pack = plan.slots[s, r, m].astype(np.int64)                 # rank by rank, then (step, micro)
    i = s * micro + m
    pos = s * dp * micro + r * micro + m
    first_of = first_pos[pack]
    left = np.asarray(plan.leftover, dtype=np.int64)
    j = np.arange(left.size, dtype=np.int64)
    minus = np.full(left.size, -1, dtype=np.int64)
    cols = {
        "pack_index": np.concatenate([pack, left]),
        "_shard": np.concatenate([r * per_rank + i // packs_per_shard,
                                  dp * per_rank + j // packs_per_shard if carry_over else minus]),
        "_order": np.concatenate([i % packs_per_shard, j % packs_per_shard if carry_over else j]),
        "_rank": np.concatenate([r, minus]), "_step": np.concatenate([s, minus]), "_micro": np.concatenate([m, minus]),
        "_first": np.concatenate([np.where(first_of == pos, -1, first_of), minus]),
    }
    order = np.lexsort((cols["_shard"], cols["pack_index"]))   # stable: a pack's slots in layout order
    return pa.table({c: pa.array(cols[c][order].astype(np.int64)) for c in INT_COLUMNS})


def write_slots(directory: str, plan: B.Plan, slots: pa.Table, pack_ids: np.ndarray, packs_per_shard: int) -> None:
    """The slot table (with the plan's shape in its metadata) and the pack ids, as Parquet files."""
    per_rank = -(-plan.steps * plan.micro_batches // packs_per_shard)
    meta = {"dp_size": plan.dp_size, "micro_batches": plan.micro_batches, "per_rank": per_rank}
    os.makedirs(directory, exist_ok=True)
    pq.write_table(slots.replace_schema_metadata({k.encode(): str(v).encode() for k, v in meta.items()}),
                   os.path.join(directory, "slots.parquet"))
    pq.write_table(pa.table({"pack_id": pa.array(np.asarray(pack_ids, dtype=np.int64))}),
                   os.path.join(directory, "pack_ids.parquet"))


FAILURES_FILE = "failures.parquet"
FAILURE_SCHEMA = pa.schema([(R.ORDINAL, pa.int64()), ("_shard", pa.int64()), (R.REASON, pa.string()),
                            (R.DETAIL, pa.string())])
DROPPED_DETAIL = "pack did not fill a global step"
CARRIED_DETAIL = f"written to {F.LEFTOVER_DIR}/ for a later run"


def write_failures(directory: str, failures: list[tuple[int, int, str, str]]) -> None:
    """The writers' failures as (_ordinal, shard, reason, detail) rows, read by ``slot_decisions``."""
    cols = list(zip(*failures)) if failures else [[], [], [], []]
    pq.write_table(pa.table([pa.array(c, t) for c, t in zip(cols, FAILURE_SCHEMA.types)], schema=FAILURE_SCHEMA),
                   os.path.join(directory, FAILURES_FILE))


_LOADED: dict[tuple[str, int], tuple[np.ndarray, pa.Table, dict[str, int]]] = {}
_PRIMARY: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray, np.ndarray, pa.Table]] = {}


def _load(directory: str) -> tuple[np.ndarray, pa.Table, dict[str, int]]:
    """(pack ids, slot table, plan shape), read once per worker process and plan."""
    path = os.path.join(directory, "slots.parquet")
    key = (path, os.stat(path).st_mtime_ns)
    if key not in _LOADED:
        _LOADED.clear()
        table = pq.read_table(path)
        meta = {k.decode(): int(v) for k, v in (table.schema.metadata or {}).items()}
        ids = pq.read_table(os.path.join(directory, "pack_ids.parquet")).column("pack_id").to_numpy()
        _LOADED[key] = (ids, table.replace_schema_metadata(None), meta)
    return _LOADED[key]


def assign_slots(batch: pa.Table, directory: str) -> pa.Table:
    """Every row once per slot of its pack (the slot table written to `directory`), with the slot's columns."""
    pack_ids, slots, meta = _load(directory)
    idx = np.searchsorted(pack_ids, batch.column("pack_id").to_numpy())
    slot_pack = slots.column("pack_index").to_numpy()
    start = np.searchsorted(slot_pack, idx, side="left")
    count = np.searchsorted(slot_pack, idx, side="right") - start
    rows = np.repeat(np.arange(batch.num_rows), count)
    offsets = np.arange(rows.size) - np.repeat(np.cumsum(count) - count, count)
    take = pa.array(np.repeat(start, count) + offsets, type=pa.int64())
    mine = slots.take(take)
    out = batch.take(pa.array(rows, type=pa.int64()))
    for c, values in zip(SLOT_COLUMNS, _slot_values(mine, pack_ids, meta)):
        out = out.append_column(c, values)
    return out


def _slot_values(slots: pa.Table, pack_ids: np.ndarray, meta: dict[str, int]) -> list[Any]:
    """The SLOT_COLUMNS of these slots, names made here (for this batch's rows only)."""
    dp, micro, per_rank = meta["dp_size"], meta["micro_batches"], meta["per_rank"]
    cols = {c: slots.column(c).to_numpy() for c in INT_COLUMNS}
    paths, keys, repeats = [], [], []
    for p, shard, rank, step, m, first in zip(*(cols[c].tolist() for c in ("pack_index", "_shard", "_rank", "_step",
                                                                           "_micro", "_first"))):
        if rank >= 0:
            keys.append(F.pack_key(rank, step, m))
        else:
            keys.append(F.leftover_key(int(pack_ids[p])))
        repeats.append("" if first < 0 else F.pack_key((first // micro) % dp, first // (dp * micro), first % micro))
        paths.append(_shard_path(shard, rank, dp, per_rank))
    return [pa.array(cols["_shard"]), pa.array(paths, pa.string()), pa.array(cols["_order"]),
            pa.array(keys, pa.string()), pa.array(cols["_rank"]), pa.array(cols["_step"]), pa.array(cols["_micro"]),
            pa.array(repeats, pa.string()), pa.array(cols["_first"] < 0)]


def _shard_path(shard: int, rank: int, dp: int, per_rank: int) -> str:
    if shard < 0:
        return ""
    if rank >= 0:
        return f"{F.rank_dir(rank)}/{F.shard_name(shard - rank * per_rank)}"
    return f"{F.LEFTOVER_DIR}/{F.shard_name(shard - dp * per_rank)}"


def _primary(directory: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, pa.Table]:
    """(pack ids, primary slot's shard and rank per pack, failures), read once per worker and plan."""
    path, fpath = os.path.join(directory, "slots.parquet"), os.path.join(directory, FAILURES_FILE)
    key = (path, os.stat(path).st_mtime_ns, os.stat(fpath).st_mtime_ns)
    if key not in _PRIMARY:
        _PRIMARY.clear()
        pack_ids, slots, _ = _load(directory)
        first = slots.column("_first").to_numpy()
        mask = first < 0   # every pack has exactly one primary slot (a dropped pack: its shard is -1)
        order = np.argsort(slots.column("pack_index").to_numpy()[mask], kind="stable")
        shard = slots.column("_shard").to_numpy()[mask][order]
        rank = slots.column("_rank").to_numpy()[mask][order]
        if shard.size != pack_ids.size:
            raise RuntimeError(f"shards: {shard.size} primary slots for {pack_ids.size} packs")
        _PRIMARY[key] = (pack_ids, shard, rank, pq.read_table(fpath))
    return _PRIMARY[key]


def slot_decisions(batch: pa.Table, directory: str, carried_reason: str) -> pa.Table:
    """One decision per sample of `batch`, from its pack's primary slot: in a dropped leftover pack,
    rejected ``leftover_dropped``; named by a writer's failure in that slot's shard, quarantined with
    its reason; in a carried-over pack (`carried_reason` set), rejected with it; otherwise kept."""
    pack_ids, shard_of, rank_of, failures = _primary(directory)
    idx = np.searchsorted(pack_ids, batch.column("pack_id").to_numpy())
    shard, rank = shard_of[idx], rank_of[idx]
    n = batch.num_rows
    ordinal = batch.column(R.ORDINAL).combine_chunks()
    status = np.full(n, R.KEPT, dtype=object)
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)
    if carried_reason:
        carried = (rank < 0) & (shard >= 0)
        status[carried], reason[carried], detail[carried] = R.REJECTED, carried_reason, CARRIED_DETAIL
    if failures.num_rows:
        width = int(max(shard.max(initial=0), pc.max(failures.column("_shard")).as_py()) + 1)
        mine = pc.add(pc.multiply(ordinal, width), pa.array(shard))
        theirs = pc.add(pc.multiply(failures.column(R.ORDINAL), width), failures.column("_shard"))
        found = pc.index_in(mine, value_set=theirs.combine_chunks())
        hit = pc.is_valid(found).to_numpy(zero_copy_only=False)
        at = pc.drop_null(found).to_numpy(zero_copy_only=False).astype(np.int64)
        status[hit] = R.QUARANTINED
        reason[hit] = np.asarray(failures.column(R.REASON).to_pylist(), dtype=object)[at]
        detail[hit] = np.asarray(failures.column(R.DETAIL).to_pylist(), dtype=object)[at]
    dropped = shard < 0
    status[dropped], reason[dropped], detail[dropped] = R.REJECTED, "leftover_dropped", DROPPED_DETAIL
    return pa.table({R.ORDINAL: ordinal.cast(pa.int64()), R.STATUS: pa.array(status, pa.string()),
                     R.REASON: pa.array(reason, pa.string()), R.DETAIL: pa.array(detail, pa.string())})
