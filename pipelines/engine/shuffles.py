"""Which of Ray Data's shuffles one groupby runs: sort while it is small, hash once it is large.

Ray's sort shuffle (``SORT_SHUFFLE_PULL_BASED``, the executor's default) makes as many output blocks
as input blocks and cuts every input block into a piece per output block that receives rows:
blocks x min(blocks, partitions) pieces, each an object the driver owns (~20-35 KB of its memory:
Ray's reference table and the tasks' lineage) while the shuffle runs. That is quadratic in the rows:
(rows / 250k)^2 = 160k pieces, ~5 GB on the driver, for the shards step at 10^8 rows. Ray's hash
shuffle (``HASH_SHUFFLE``) sends every block's rows to aggregator actors, one output block per
partition: the driver holds O(blocks + partitions), but it starts the actors and costs 4-5x the
time of the sort shuffle on 2 cores, so it runs only where the sort shuffle's pieces would pass
SORT_PIECES_BUDGET.

Both give each reduce call one whole partition (the hash shuffle's output blocks are never split:
``disallow_block_splitting``), and the reduce sorts its group (``sort_for_reduce``), so the results
are the same; only the order of the output blocks differs, which no step depends on (GlobalData).

Ray Data decides the strategy twice: ``GroupedData.map_groups`` reads the grouped dataset's
``context.shuffle_strategy`` when it is called (a hash one builds ``repartition(keys=, sort=True)``,
a sort one ``sort``), and the planner plans the whole lineage of the dataset that runs with that
dataset's context, where a keyed repartition plans only under ``HASH_SHUFFLE`` (a ``sort`` plans
the same pull-based shuffle under either). A dataset shares its context with its parents, so each
groupby here runs on a copy of it (``with_strategy``) and nothing changes the global DataContext or
another dataset's; a dataset with a hash shuffle upstream keeps ``HASH_SHUFFLE`` for its planning
(``plannable``, ``union``) while its own sort-sized groupbys still build sorts.
"""
from __future__ import annotations

import warnings
from typing import Any

# The most pieces a sort shuffle may make (blocks x min(blocks, partitions)) before the hash shuffle
# runs instead: ~20k objects, ~0.4-0.7 GB of the driver's memory at their peak. The shards step
# passes it at ~35M rows (141 blocks of 250k rows), an apply of decisions in blocks of 1M rows over
# 100k-row files at ~45M rows; the demo and the 5M-row bench stay on the sort shuffle (<= 5,000).
SORT_PIECES_BUDGET = 20_000


def sort_pieces(blocks: int, partitions: int) -> int:
    """The objects Ray's sort shuffle makes for `blocks` input blocks and `partitions` keys."""
    return blocks * min(blocks, max(partitions, 1))


def use_hash(blocks: int | None, partitions: int) -> bool:
    """Hash shuffle when the sort shuffle's pieces would pass SORT_PIECES_BUDGET (unknown blocks: sort)."""
    return blocks is not None and sort_pieces(blocks, partitions) > SORT_PIECES_BUDGET


def estimated_blocks(ds: Any, block_rows: int | None = None) -> int | None:
    """The blocks `ds` will enter a shuffle in, without running it: Ray's own estimate (its read
    tasks, carried through the maps); gathered into blocks of `block_rows`, the rows its reads
    declare (an upper bound when a map filters) over `block_rows`."""
    dag = ds._logical_plan.dag
    if block_rows:
        rows = _source_rows(dag)
        if rows is not None:
            return max(1, -(-rows // block_rows))
    return dag.estimated_num_outputs()


def _source_rows(op: Any) -> int | None:
    """The rows the reads (or materialized inputs) at the roots of a logical plan declare."""
    if not op.input_dependencies:
        meta = op.infer_metadata() if hasattr(op, "infer_metadata") else None
        return None if meta is None else meta.num_rows
    counts = [_source_rows(child) for child in op.input_dependencies]
    return None if any(c is None for c in counts) else sum(counts)


def _hashing(ds: Any) -> bool:
    from ray.data.context import ShuffleStrategy
    return ds.context.shuffle_strategy == ShuffleStrategy.HASH_SHUFFLE


def with_strategy(ds: Any, hashed: bool) -> Any:
    """`ds` on its own copy of its DataContext with the hash or the (pull-based) sort shuffle."""
    from ray.data import Dataset
    from ray.data.context import ShuffleStrategy
    wanted = ShuffleStrategy.HASH_SHUFFLE if hashed else ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    if ds.context.shuffle_strategy == wanted:
        return ds
    with warnings.catch_warnings():   # DataContext.copy() reads its deprecated aliases too
        warnings.simplefilter("ignore", DeprecationWarning)
        copied = Dataset.copy(ds, _deep_copy=True)   # a copy of the plan's root and of the context
    copied.context.shuffle_strategy = wanted
    return copied


def plannable(ds: Any, hash_upstream: bool) -> Any:
    """`ds`, planned with HASH_SHUFFLE when its lineage holds a hash shuffle (module docstring)."""
    return with_strategy(ds, True) if hash_upstream and not _hashing(ds) else ds


def group_map(ds: Any, key: str, partitions: int, fn: Any, blocks: int | None, **map_kwargs: Any) -> Any:
    """``ds.groupby(key, num_partitions=partitions).map_groups(fn, **map_kwargs)`` on the shuffle
    that `blocks` input blocks call for (``use_hash``)."""
    hashed = use_hash(blocks, partitions)
    grouped = with_strategy(ds, hashed).groupby(key, num_partitions=partitions).map_groups(fn, **map_kwargs)
    return plannable(grouped, hashed or _hashing(ds))


def union(left: Any, right: Any) -> Any:
    """``left.union(right)``, planned with HASH_SHUFFLE when either side has a hash shuffle upstream
    (a union plans both sides with the left one's context)."""
    return plannable(left.union(right), _hashing(left) or _hashing(right))


def hash_shuffles(ds: Any) -> int:
    """Hash shuffles (keyed repartitions) in the logical plan of `ds`: what tests and benches check."""
    def count(op: Any) -> int:
        own = int(type(op).__name__ == "Repartition" and bool(getattr(op, "keys", None)))
        return own + sum(count(child) for child in op.input_dependencies)
    return count(ds._logical_plan.dag)
