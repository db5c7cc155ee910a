"""Routing a global step's decisions to the files holding their rows (pipelines.engine.ray_files), without Ray."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.base import inline as E
from curate.base import records as R
from pipelines.engine.ray_files import FILE, FileIndex, read_units, tag_file


def _write(path: Path, ordinals: list[int], row_group_size: int | None = None) -> str:
    pq.write_table(pa.table({R.ORDINAL: pa.array(ordinals, pa.int64())}), path, row_group_size=row_group_size)
    return str(path)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 30), min_size=1, max_size=6), gaps=st.lists(st.integers(0, 5), min_size=6,
       max_size=6), repeats=st.lists(st.integers(0, 3), min_size=6, max_size=6), seed=st.integers(0, 2**16))
def test_every_decision_goes_to_the_file_holding_its_row(tmp_path_factory, sizes, gaps, repeats, seed):
    """Files over consecutive ordinal ranges (some empty, some with negative repeat ordinals at
    their end): an original row's decision is tagged with its file; a repeat row's with -1 (lookup);
    an added repeat's with the file of the row it copies."""
    d = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(seed)
    files, owner, nxt = [], {}, 0
    for i, n in enumerate(sizes):
        ords = list(range(nxt, nxt + n))
        nxt += n + gaps[i]
        reps = [-1 - int(x) for x in rng.integers(0, 2**62, repeats[i] if n else 0)]
        files.append(_write(d / f"part-{i:05d}.parquet", ords + reps, row_group_size=4))
        owner.update({o: i for o in ords})
        owner.update({r: -1 for r in reps})
    index = FileIndex(files)
    assert index.with_repeats == [i for i, n in enumerate(sizes) if n and repeats[i]]
    names = list(owner)
    rng.shuffle(names)
    sources = [o for o in owner if o >= 0]
    decisions = pa.table({R.ORDINAL: pa.array(names, pa.int64()),
                          E.REPEAT_SOURCE: pa.nulls(len(names), pa.int64())})
    if sources:   # an added repeat (negative ordinal) copying an original row
        added = pa.table({R.ORDINAL: pa.array([-7], pa.int64()), E.REPEAT_SOURCE: pa.array([sources[-1]], pa.int64())})
        decisions = pa.concat_tables([decisions, added])
    tagged = tag_file(decisions, index.starts, index.owners)
    got = dict(zip(tagged.column(R.ORDINAL).to_pylist()[:len(names)], tagged.column(FILE).to_pylist()[:len(names)]))
    assert got == owner
    if sources:
        assert tagged.column(FILE)[-1].as_py() == owner[sources[-1]]


def test_files_over_interleaved_ranges_are_routed_by_lookup(tmp_path: Path):
    files = [_write(tmp_path / "part-00000.parquet", [0, 5, 9]), _write(tmp_path / "part-00001.parquet", [3, 4])]
    index = FileIndex(files)
    assert not index.by_range and "overlapping _ordinal ranges" in index.overlap
    tagged = tag_file(pa.table({R.ORDINAL: pa.array([4, 9], pa.int64())}), index.starts, index.owners)
    assert tagged.column(FILE).to_pylist() == [-1, -1]   # every decision goes through the lookup


def test_a_decision_before_every_row_is_refused(tmp_path: Path):
    index = FileIndex([_write(tmp_path / "part-00000.parquet", [10, 11])])
    with pytest.raises(E.AccountingError, match="before every row"):
        tag_file(pa.table({R.ORDINAL: pa.array([3], pa.int64())}), index.starts, index.owners)


@given(tasks=st.integers(0, 5000), batch_size=st.integers(1, 64), cpus=st.integers(1, 512))
def test_source_batches_keep_every_cpu_busy_and_group_small_tasks(tasks, batch_size, cpus):
    from pipelines.engine.ray_data import source_tasks_per_batch
    per = source_tasks_per_batch(tasks, batch_size, cpus)
    assert 1 <= per <= batch_size
    batches = -(-tasks // per)
    assert batches >= min(tasks, 2 * cpus)          # enough batches for every CPU, when there are tasks
    if tasks >= 2 * cpus * batch_size:
        assert per == batch_size                     # many small tasks: grouped as the stage asks


def test_lookup_gives_each_decision_its_rows_file_and_refuses_unknown_or_doubly_held_rows():
    from pipelines.engine.ray_files import LOOKUP, PART, TARGET, _resolve

    def group(targets, files, lookup):
        n = len(targets)
        return pa.table({R.ORDINAL: pa.array([None if lk else t for t, lk in zip(targets, lookup)], pa.int64()),
                         FILE: pa.array(files, pa.int64()), TARGET: pa.array(targets, pa.int64()),
                         LOOKUP: pa.array(lookup), PART: pa.array([0] * n, pa.int64())})
    # rows 5 (file 2), -9 (file 0, a repeat), 7 (file 1); decisions about 7, 5 and a repeat added from 5
    got = _resolve(group([5, -9, 7, 7, 5, 5], [2, 0, 1, -1, -1, -1], [True, True, True, False, False, False]))
    assert got.column(FILE).to_pylist() == [1, 2, 2] and got.column_names == [R.ORDINAL, FILE]
    with pytest.raises(E.AccountingError, match="no file"):
        _resolve(group([5, 6], [2, -1], [True, False]))
    with pytest.raises(E.AccountingError, match="more than one file"):
        _resolve(group([5, 5, 5], [2, 3, -1], [True, True, False]))


@settings(max_examples=80, deadline=None)
@given(groups=st.lists(st.lists(st.integers(1, 40), max_size=6), min_size=1, max_size=4), task_rows=st.integers(1, 60))
def test_read_units_cover_every_row_group_once_in_order(tmp_path_factory, groups, task_rows):
    """Read tasks: consecutive row groups of one file, in file order, every group exactly once, at
    most task_rows rows unless one group alone is larger; a file without rows is one empty task."""
    d = tmp_path_factory.mktemp("units")
    files = []
    for i, sizes in enumerate(groups):
        path = d / f"part-{i:05d}.parquet"
        with pq.ParquetWriter(path, pa.schema([(R.ORDINAL, pa.int64())])) as writer:
            for n in sizes:
                writer.write_table(pa.table({R.ORDINAL: pa.array(range(n), pa.int64())}))
        files.append(str(path))
    units = read_units(files, [10 + i for i in range(len(files))], task_rows)
    seen = []
    for path, number, first, count, rows in zip(units["path"], units["number"], units["first"], units["groups"],
                                                units["rows"]):
        i = number - 10
        assert Path(path).name == Path(files[i]).name
        sizes = groups[i][first:first + count]
        assert rows == sum(sizes) and (rows <= task_rows or count == 1 or not sizes)
        seen.extend((i, g) for g in range(first, first + count))
        if not groups[i]:
            assert (first, count) == (0, 0)
    assert seen == [(i, g) for i, sizes in enumerate(groups) for g in range(len(sizes))]
    assert sorted(set(units["number"])) == [10 + i for i in range(len(files))]
