"""The shards step's slot table, made with numpy as integers and kept on disk (pack.shards.slots):
the rows every sample travels with to its shard are the ones the earlier driver-side table gave
(a copy of that code is the reference here), so the shards' bytes do not change."""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings, strategies as st

from pack.balance import plan as B
from pack import packformat as F
from pack.shards import slots as T
def old_slot_table(plan: B.Plan, pack_ids: np.ndarray, packs_per_shard: int, carry_over: bool):
    rows: dict[str, list[Any]] = {c: [] for c in ("pack_index", *T.SLOT_COLUMNS)}
    paths: list[str] = []
    ranks: list[int] = []
    first_key: dict[int, str] = {}

    def add(p, shard, order, key, rank, step, micro, repeat_of):
        for c, v in zip(("pack_index", *T.SLOT_COLUMNS),
                        (p, shard, paths[shard] if shard >= 0 else "", order, key, rank, step, micro, repeat_of,
                         key == first_key.get(p, key))):
            rows[c].append(v)

    for s in range(plan.steps):
        for r in range(plan.dp_size):
            for m in range(plan.micro_batches):
                first_key.setdefault(int(plan.slots[s, r, m]), F.pack_key(r, s, m))
    for r in range(plan.dp_size):
        seq = [(s, m) for s in range(plan.steps) for m in range(plan.micro_batches)]
        for i, (s, m) in enumerate(seq):
            if i % packs_per_shard == 0:
                paths.append(f"{F.rank_dir(r)}/{F.shard_name(i // packs_per_shard)}")
                ranks.append(r)
            p = int(plan.slots[s, r, m])
            key = F.pack_key(r, s, m)
            add(p, len(paths) - 1, i % packs_per_shard, key, r, s, m, first_key[p] if key != first_key[p] else "")
    for i, p in enumerate(plan.leftover.tolist()):
        key = F.leftover_key(int(pack_ids[p]))
        if carry_over:
            if i % packs_per_shard == 0:
                paths.append(f"{F.LEFTOVER_DIR}/{F.shard_name(i // packs_per_shard)}")
                ranks.append(-1)
            add(p, len(paths) - 1, i % packs_per_shard, key, -1, -1, -1, "")
        else:
            add(p, -1, i, key, -1, -1, -1, "")
    table = pa.table(rows)
    order = pc.sort_indices(table, sort_keys=[("pack_index", "ascending"), ("_shard", "ascending")])
    return table.take(order), paths, ranks


def old_assign_slots(batch, pack_ids, slots):
    idx = np.searchsorted(pack_ids, batch.column("pack_id").to_numpy())
    slot_pack = slots.column("pack_index").to_numpy()
    start = np.searchsorted(slot_pack, idx, side="left")
    count = np.searchsorted(slot_pack, idx, side="right") - start
    rows = np.repeat(np.arange(batch.num_rows), count)
    offsets = np.arange(rows.size) - np.repeat(np.cumsum(count) - count, count)
    take = np.repeat(start, count) + offsets
    out = batch.take(pa.array(rows, type=pa.int64()))
    for c in T.SLOT_COLUMNS:
        out = out.append_column(c, slots.column(c).take(pa.array(take, type=pa.int64())))
    return out


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), packs=st.integers(1, 90), dp=st.integers(1, 4), micro=st.integers(1, 3),
       per_shard=st.integers(1, 7), policy=st.sampled_from(B.LEFTOVER_POLICIES))
def test_slots_and_the_rows_they_give_equal_the_driver_side_table(tmp_path_factory, seed, packs, dp, micro,
                                                                  per_shard, policy):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(100, 4096, packs).astype(np.float64)
    img = rng.integers(0, 3000, packs).astype(np.float64)
    costs = B.PackCosts(tokens.astype(np.int64), tokens * tokens / 3, img, img * img, img + img * img / 7680)
    plan = B.plan_balanced(costs, dp, micro, policy, seed=seed)
    pack_ids = np.sort(rng.choice(10 * packs, packs, replace=False)).astype(np.int64)
    carry = policy == "carry_over"
    want, want_paths, want_ranks = old_slot_table(plan, pack_ids, per_shard, carry)
    assert T.shard_layout(plan, len(plan.leftover), per_shard, carry) == (want_paths, want_ranks)
    directory = str(tmp_path_factory.mktemp("slots"))
    T.write_slots(directory, plan, T.slot_table(plan, per_shard, carry), pack_ids, per_shard)
    samples = rng.integers(0, packs, 3 * packs)
    batch = pa.table({"_ordinal": np.arange(samples.size), "pack_id": pack_ids[samples]})
    for part in (batch, batch.slice(0, samples.size // 2)):
        assert T.assign_slots(part, directory).equals(old_assign_slots(part, pack_ids, want))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), n=st.integers(1, 400), size=st.integers(1, 60), fan_in=st.integers(2, 5))
def test_pack_statistics_merged_in_a_tree_equal_the_flat_combine(seed, n, size, fan_in):
    """The workers' tree-combine of the shards step's per-pack statistics (merge_pack_stats) gives
    the numbers the flat combine gives."""
    from pack.shards import schedule as S
    rng = np.random.default_rng(seed)
    rows = pa.table({"num_tokens": rng.integers(1, 500, n), "pack_id": rng.integers(0, 30, n),
                     "pack_position": np.zeros(n, np.int32),
                     "image_tokens": [[int(x)] * int(k) for x, k in zip(rng.integers(0, 900, n), rng.integers(0, 3, n))]})
    parts = [S.pack_partial(rows.slice(i, size)) for i in range(0, n, size)]
    flat = S.combine_pack_stats(pa.concat_tables(parts))
    while len(parts) > 1:
        parts = [S.merge_pack_stats(pa.concat_tables(parts[i:i + fan_in])) for i in range(0, len(parts), fan_in)]
    tree = S.combine_pack_stats(parts[0])
    for name in flat.__dataclass_fields__:
        assert np.array_equal(getattr(flat, name), getattr(tree, name)), name
