"""One shuffle on Ray's hash shuffle past SORT_PIECES_BUDGET, the rest untouched (issue 31).

* ``use_hash`` follows the sort shuffle's pieces (blocks x min(blocks, partitions)), and the blocks
  are estimated from the plan without running it (gathered into ``block_rows``: the reads' rows).
* On Ray, with the budget lowered, ``shuffle_reduce`` builds a keyed repartition (the hash shuffle)
  on its own copy of the DataContext — the global one and its input's stay on the sort shuffle —,
  returns the same groups as the sort shuffle, and the driver owns O(blocks + partitions) references
  after it instead of the sort shuffle's blocks x partitions pieces.
* The shards step and the apply of its decisions (the groupby by file) write the same bytes on
  either shuffle.
"""
from __future__ import annotations

import gc
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curate.base import records as R
from pack.shards import schedule as S
from pipelines.engine import shuffles
from tests.shards_corpus import packed_table
from tests.test_shards_driver import L, make_stage, tree_digest


def test_the_hash_shuffle_runs_only_past_the_budget_of_sort_pieces(monkeypatch):
    assert shuffles.sort_pieces(200, 200) == 40_000 and shuffles.sort_pieces(200, 8) == 1_600
    assert shuffles.sort_pieces(4, 1_000) == 16   # the sort shuffle makes no more outputs than blocks
    monkeypatch.setattr(shuffles, "SORT_PIECES_BUDGET", 20_000)
    assert shuffles.use_hash(200, 200) and not shuffles.use_hash(200, 100) and not shuffles.use_hash(None, 10**6)
    # the 5M-row shards step (20 blocks of 250k rows, 20 partitions) and an apply of 5M decisions
    # over 50 files stay on the sort shuffle; 10^8 rows in 250k-row blocks do not
    assert not shuffles.use_hash(20, 20) and not shuffles.use_hash(5, 50) and shuffles.use_hash(400, 400)


@pytest.fixture(scope="module")
def ray_executor():
    import ray
    from pipelines.engine.ray_data import RayExecutor
    assert not ray.is_initialized()
    # Every object in the object store, as the shuffle's pieces are at scale: small ones would be
    # inlined into the tasks that read them and hold no reference.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             _system_config={"max_direct_call_object_size": 0})
    executor = RayExecutor(num_cpus=2)
    yield executor
    executor.close()
    ray.shutdown()


def _files(root: Path, blocks: int, rows: int) -> list[str]:
    root.mkdir(parents=True)
    paths = []
    for b in range(blocks):
        ords = pa.array(range(b * rows, (b + 1) * rows), pa.int64())
        paths.append(str(root / f"part-{b:05d}.parquet"))
        pq.write_table(pa.table({R.ORDINAL: ords, "key": pc.cast(pc.bit_wise_and(ords, 63), pa.string())}), paths[-1])
    return paths


def _per_key(group: pa.Table) -> pa.Table:
    """One row per key of the call: its rows' _ordinals in the order the reduce saw them."""
    keys = group.column("key").to_pylist()
    ords = group.column(R.ORDINAL).to_pylist()
    seen: dict[str, list[int]] = {}
    for k, o in zip(keys, ords):
        seen.setdefault(k, []).append(o)
    return pa.table({"key": list(seen), "ordinals": [",".join(map(str, v)) for v in seen.values()]})


def test_shuffle_reduce_on_the_hash_shuffle_gives_the_sort_shuffles_groups_and_bounds_the_driver(
        ray_executor, tmp_path, monkeypatch):
    import ray
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy
    from pipelines.engine.ray_data import RayData
    owned = ray._private.worker.global_worker.core_worker.get_all_reference_counts
    files = {blocks: _files(tmp_path / f"in-{blocks}", blocks, 50) for blocks in (16, 32)}
    assert shuffles.estimated_blocks(ray_executor._read(files[16])) == 16
    assert shuffles.estimated_blocks(ray_executor._read(files[16]), block_rows=200) == 4   # 800 rows / 200
    results, held = {}, {}
    for budget, name, blocks in ((10**9, "sort", 16), (0, "hash", 16), (0, "hash", 32)):
        monkeypatch.setattr(shuffles, "SORT_PIECES_BUDGET", budget)
        data = RayData(ray_executor._read(files[blocks]))
        out = data.shuffle_reduce("key", _per_key, partitions=blocks)
        assert shuffles.hash_shuffles(out.ds) == (name == "hash")
        assert data.ds.context.shuffle_strategy == ShuffleStrategy.SORT_SHUFFLE_PULL_BASED   # its copy only
        gc.collect()
        before = len(owned())
        done = out.materialize()
        gc.collect()   # Ray Data's plans hold reference cycles: what is unreachable goes now
        held[name, blocks] = len(owned()) - before
        results[name, blocks] = done.gather().sort_by("key")
        del out, done, data
    assert DataContext.get_current().shuffle_strategy == ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    assert results["sort", 16].num_rows == 64 and results["hash", 16].equals(results["sort", 16])
    print("driver-held references while the shuffle's result is held, by (shuffle, blocks = partitions):", held)
    # the sort shuffle's pieces stay referenced (lineage) while its output is: ~blocks x partitions;
    # and the hash shuffle's grow with blocks + partitions (~3.5 a block or partition here; +32 of them)
    assert held["sort", 16] >= 16 * 16 // 2, held
    assert held["hash", 32] - held["hash", 16] <= 5 * (64 - 32) and held["hash", 32] < 32 * 32 // 2, held

def test_the_shards_step_and_its_apply_write_the_same_bytes_on_the_hash_shuffle(ray_executor, tmp_path, monkeypatch):
    """The shards' writing shuffle and the apply's groupby of decisions by file, both on the hash
    shuffle: the same shards and the same applied files as in one process (where the sort shuffle's
    results are, tests/test_shards_driver.py)."""
    from pipelines.engine.chains import global_step
    from pipelines.engine.inline_executor import InlineExecutor
    monkeypatch.setattr(S, "REDUCE_ROWS", 40)   # several partitions of whole shards
    table = packed_table(tmp_path / "data", n=120, context_length=L, seed=4)
    packs = len(pc.unique(table.column("pack_id")))
    pps = -(-(packs // 4) * 2 // 4)
    files = []
    (tmp_path / "files").mkdir()
    for i, start in enumerate(range(0, table.num_rows, 20)):
        files.append(str(tmp_path / "files" / f"part-{i:05d}.parquet"))
        pq.write_table(table.slice(start, 20), files[-1])
    monkeypatch.setattr(shuffles, "SORT_PIECES_BUDGET", 0)
    built = []
    group_map = shuffles.group_map
    monkeypatch.setattr(shuffles, "group_map", lambda ds, key, parts, fn, blocks, **kw:
                        (built.append(shuffles.use_hash(blocks, parts)), group_map(ds, key, parts, fn, blocks, **kw))[1])
    digests = {}
    for name, executor in (("ray", ray_executor), ("inline", InlineExecutor())):
        stage = make_stage(tmp_path / f"out-{name}", packs_per_shard=pps)
        global_step(stage, executor, files, tmp_path / f"applied-{name}", direct=False, upstream_kept=None)
        digests[name] = (tree_digest(tmp_path / f"out-{name}" / "shards"), tree_digest(tmp_path / f"applied-{name}"))
    assert built == [True, True]   # the shards' shuffle, then the apply's groupby by file: on the hash shuffle
    assert digests["ray"][0] and len(digests["ray"][1]) == len(files)
    assert digests["ray"] == digests["inline"]


def test_a_sort_shuffle_and_a_union_after_a_hash_shuffle_plan_and_give_the_same_rows(ray_executor, tmp_path, monkeypatch):
    """A hash shuffle, then a union with a dataset on the sort shuffle (on the left) and a
    sort-sized shuffle of the result: the keyed repartition upstream still plans (HASH_SHUFFLE kept
    for planning), the later groupby is still a sort, and the rows are those of all sort shuffles."""
    from pipelines.engine.ray_data import RayData
    files = _files(tmp_path / "in", 4, 50)

    def count_rows(group: pa.Table) -> pa.Table:   # a call gets one or more whole keys
        return group.group_by("key", use_threads=False).aggregate([([], "count_all")]).rename_columns(["key", "rows"])

    def run(first_hash: bool) -> tuple[pa.Table, int]:
        calls = iter([first_hash, False])
        monkeypatch.setattr(shuffles, "use_hash", lambda blocks, partitions: next(calls))
        first = RayData(ray_executor._read(files)).shuffle_reduce("key", _per_key, 8) \
            .map_batches(lambda b: b.select(["key"]))
        plain = RayData(ray_executor._read(files)).map_batches(lambda b: b.select(["key"]))
        out = plain.union(first).shuffle_reduce("key", count_rows, 8)
        return out.gather().sort_by("key"), shuffles.hash_shuffles(out.ds)

    mixed, hashes = run(True)
    assert hashes == 1
    expected, none = run(False)
    assert none == 0 and mixed.equals(expected)
    # each key: its rows in the plain read and the one row per key of the first shuffle
    assert mixed.num_rows == 64 and sum(mixed.column("rows").to_pylist()) == 200 + 64
