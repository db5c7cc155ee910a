"""Whole-dataset steps written against GlobalData: the same answer whatever the partitioning."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.base import records as R
from curate.base.global_data import InlineData, partition_of, stable_hash64
from curate.ingest import mark_duplicate_keys
from pack.pack_stage import PackStage


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


@settings(max_examples=15, deadline=None)
@given(chunk=st.integers(7, 400), unit=st.sampled_from(["samples", "tokens"]), seed=st.integers(0, 3))
def test_distributed_mixture_equals_the_single_process_plan(chunk, unit, seed):
    from curate.base import StageContext
    from curate.mixture.stage import MixtureStage
    rng = np.random.default_rng(seed)
    n = 900
    cats = rng.choice(["caption", "vqa", "text"], size=n, p=[0.7, 0.2, 0.1])
    table = pa.table({"key": [f"s/{i}" for i in range(n)], R.ORDINAL: pa.array(range(n), pa.int64()),
                      "category": cats.tolist(), "source": ["s"] * n,
                      "num_tokens": pa.array(rng.integers(10, 2000, n), pa.int64())})
    settings_ = dict(ratios={"caption": 0.5, "vqa": 0.3, "text": 0.2}, unit=unit, max_repeat=2.0)
    one = MixtureStage(context=StageContext(seed=seed), **settings_)
    reference = one.decide(table)
    many = MixtureStage(context=StageContext(seed=seed), **settings_)
    batches = [table.slice(i, chunk) for i in range(0, n, chunk)]
    got = many.global_step(InlineData(batches)).gather()
    key = lambda t: sorted(zip(*(t.column(c).to_pylist() for c in (R.ORDINAL, R.STATUS, "key", "repeat_of"))),
                           key=lambda r: r[0])
    assert key(got) == key(reference)
    assert many.report == one.report


def test_builtin_global_steps_never_gather_every_row():
    """The memory promise, checked structurally: ingest's duplicate keys, pack and the mixture run on a
    GlobalData whose gather() is forbidden, so none of them pulls all rows into one process."""
    class NoGather(InlineData):
        def gather(self):
            raise AssertionError("a global step gathered every row into one process")

        def map_batches(self, fn):
            return NoGather(InlineData.map_batches(self, fn).tables)

        def shuffle_reduce(self, key, fn, partitions):
            return NoGather(InlineData.shuffle_reduce(self, key, fn, partitions).tables)

    from curate.base import StageContext
    from curate.ingest import IngestStage
    from curate.mixture.stage import MixtureStage
    table = _caption_rows(200)
    table = table.append_column("num_tokens_", table.column("num_tokens")).drop_columns(["num_tokens_"])
    batches = [table.slice(i, 37) for i in range(0, table.num_rows, 37)]
    for stage in (IngestStage(), PackStage(context_length=2048, partition_rows=60),
                  MixtureStage(context=StageContext(seed=1), ratios={"caption": 1.0})):
        out = stage.global_step(NoGather(batches))
        assert sum(t.num_rows for t in out.tables) == table.num_rows
