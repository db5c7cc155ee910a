"""Whole-dataset steps written against GlobalData: the same answer whatever the partitioning."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.base import records as R
from curate.base.global_data import InlineData, partition_of, stable_hash64
from curate.ingest import mark_duplicate_keys
from pack.stages import PackStage


def _decisions_by_ordinal(data) -> dict[int, tuple]:
    t = data.gather()
    cols = [c for c in t.column_names if c != R.ORDINAL]
    return {o: tuple(t.column(c)[i].as_py() for c in cols) for i, o in enumerate(t.column(R.ORDINAL).to_pylist())}


@settings(max_examples=40, deadline=None)
@given(keys=st.lists(st.sampled_from([f"s/{i}" for i in range(12)]), min_size=1, max_size=60),
       partitions=st.integers(1, 7), chunk=st.integers(1, 20))
def test_duplicate_keys_same_decisions_for_any_partitioning(keys, partitions, chunk):
    table = pa.table({"key": keys, R.ORDINAL: pa.array(range(len(keys)), pa.int64())})
    batches = [table.slice(i, chunk) for i in range(0, len(keys), chunk)]
    got = _decisions_by_ordinal(InlineData(batches).shuffle_reduce("key", mark_duplicate_keys, partitions))
    assert sorted(got) == list(range(len(keys)))
    seen = set()
    for o, k in enumerate(keys):
        assert (got[o][0] == R.KEPT) == (k not in seen)
        seen.add(k)


def test_partitions_and_hashes_are_stable():
    assert stable_hash64(["a", "b"], 1).tolist() == stable_hash64(pa.array(["a", "b"]), 1).tolist()
    assert stable_hash64(["a"], 1)[0] != stable_hash64(["a"], 2)[0]
    parts = partition_of(pa.array(np.arange(1000)), 8)
    assert set(parts.tolist()) == set(range(8))  # consecutive ids spread over every partition


def _caption_rows(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = [R.Sample(f"s/{i}", "s", "caption", text="x").to_row() for i in range(n)]
    for i, r in enumerate(rows):
        r[R.ORDINAL] = i
        r["num_tokens"] = int(rng.integers(50, 900))
    schema = R.schema_with({"num_tokens": pa.int64()})
    return R.rows_to_table(rows, schema)


def test_partitioned_packing_accounts_for_every_row_and_loses_little_fill():
    table = _caption_rows(600)
    whole = PackStage(context_length=2048).run(table)
    parts = PackStage(context_length=2048, partition_rows=150).run(table)
    assert parts.kept.num_rows == whole.kept.num_rows == 600
    rep = PackStage(context_length=2048, partition_rows=150)
    rep.run(table)
    assert rep.report["packing"]["partitions"] == 4
    # every pack lives in one partition, and no pack is over capacity
    t = parts.kept.select(["pack_id", "num_tokens"]).group_by("pack_id").aggregate([("num_tokens", "sum")])
    assert max(t.column("num_tokens_sum").to_pylist()) <= 2048
    whole_packs = len(set(whole.kept.column("pack_id").to_pylist()))
    assert t.num_rows <= whole_packs + 4  # at most about one extra pack per partition


def test_partitioned_packing_is_the_same_for_any_batching():
    table = _caption_rows(300, seed=3)
    a = PackStage(context_length=2048, partition_rows=100).run(table, batch_size=7)
    b = PackStage(context_length=2048, partition_rows=100).run(table, batch_size=300)
    key = lambda r: r.sort_by(R.ORDINAL).select([R.ORDINAL, "pack_id", "pack_position"]).to_pylist()
    assert key(a.kept) == key(b.kept)
