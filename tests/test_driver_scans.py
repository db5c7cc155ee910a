"""The driver's own scans of a stage's files (kept-row counts, whether any image was removed) read one
row group at a time on the calling thread, so what they hold does not grow with the rows of a file or
the number of files (issue 31: whole-file scans on Arrow's threads grew the driver ~10 B a row)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.base import records as R
from pipelines.engine import removed_images
from pipelines.engine.tables import count_rows, kept_rows, write_table

ROOT = Path(__file__).resolve().parents[1]
STATUSES = [R.KEPT, R.REJECTED, R.QUARANTINED, None]


def _write(path: Path, statuses: list[str | None], group_rows: int, removed: list[int] | None = None) -> None:
    columns = {R.STATUS: pa.array(statuses, pa.string()), R.ORDINAL: pa.array(range(len(statuses)), pa.int64())}
    if removed is not None:
        entry = pa.struct([("position", pa.int32()), ("ref", pa.string()), ("stage", pa.string()),
                           ("reason", pa.string()), ("detail", pa.string())])
        removal = {"position": 0, "ref": "a.jpg", "stage": "image_filter", "reason": "small", "detail": None}
        columns["key"] = pa.array([f"k{i}" for i in range(len(statuses))])
        columns["source"] = pa.array(["docs"] * len(statuses))
        columns["images_removed"] = pa.array([[removal] if i in removed else [] for i in range(len(statuses))],
                                             pa.list_(entry))
    pq.write_table(pa.table(columns), str(path), row_group_size=group_rows)


# Runs of one status (row groups that the footer statistics settle) and mixed stretches (read).
runs = st.lists(st.tuples(st.sampled_from(STATUSES), st.integers(1, 40)), max_size=12)


@settings(max_examples=60, deadline=None)
@given(files=st.lists(runs, min_size=1, max_size=3), group_rows=st.integers(1, 17))
def test_kept_rows_equal_a_filtered_scan(tmp_path_factory, files, group_rows):
    d = tmp_path_factory.mktemp("kept")
    paths = []
    for i, file_runs in enumerate(files):
        statuses = [s for s, n in file_runs for _ in range(n)]
        paths.append(str(d / f"part-{i}.parquet"))
        _write(Path(paths[-1]), statuses, group_rows)
    scanned = pads.dataset(paths, format="parquet").count_rows(filter=pc.field(R.STATUS) == R.KEPT)
    assert count_rows(paths, kept_only=True) == scanned
    assert [kept_rows(p) for p in paths] == [pads.dataset(p).count_rows(filter=pc.field(R.STATUS) == R.KEPT)
                                             for p in paths]


def test_stage_files_written_by_the_engine_count_from_statistics_and_reads(tmp_path):
    # The engine's own writer (write_table: _status with statistics, 16,384-row groups).
    rng = np.random.default_rng(0)
    statuses = np.where(rng.random(50_000) < 0.02, R.REJECTED, R.KEPT)
    statuses[:20_000] = R.KEPT   # a group of one status: counted from the footer
    write_table(pa.table({R.STATUS: pa.array(statuses), R.ORDINAL: pa.array(np.arange(50_000))}), tmp_path / "p.parquet")
    assert kept_rows(str(tmp_path / "p.parquet")) == int((statuses == R.KEPT).sum())


def test_a_file_without_status_fails_loudly(tmp_path):
    pq.write_table(pa.table({"key": ["a"]}), str(tmp_path / "p.parquet"))
    try:
        kept_rows(str(tmp_path / "p.parquet"))
    except ValueError as e:
        assert R.STATUS in str(e)
    else:
        raise AssertionError("counted kept rows of a file without _status")


def test_removes_any_finds_a_removal_in_any_row_group(tmp_path):
    _write(tmp_path / "none.parquet", [R.KEPT] * 100, 16, removed=[])
    _write(tmp_path / "last.parquet", [R.KEPT] * 100, 16, removed=[99])
    assert not removed_images._removes_any(str(tmp_path / "none.parquet"))
    assert removed_images._removes_any(str(tmp_path / "last.parquet"))
    found = removed_images._removals([str(tmp_path / "none.parquet"), str(tmp_path / "last.parquet")])
    assert found.column(R.ORDINAL).to_pylist() == [99] and found.column("reason").to_pylist() == ["small"]


PEAK = r'''
import json, sys
import pyarrow as pa
from pipelines.engine import removed_images
from pipelines.engine.tables import count_rows
files = sys.argv[1:]
kept = count_rows(files, kept_only=True)
removes = any(removed_images._removes_any(f) for f in files)
print(json.dumps({"kept": kept, "removes": removes, "peak": pa.default_memory_pool().max_memory()}))
'''


def test_the_driver_scans_hold_one_row_group_not_a_file(tmp_path):
    # 4 files x 300k rows, 16,384-row groups, 2% rejected: the status column alone is ~3.6 MB a file
    # decoded and the list column ~1.2 MB; counting and looking for removals must peak at about one
    # row group's worth of Arrow memory (the allocator's high-water mark in a fresh process).
    rng = np.random.default_rng(1)
    files, kept = [], 0
    for i in range(4):
        statuses = np.where(rng.random(300_000) < 0.02, R.REJECTED, R.KEPT)
        kept += int((statuses == R.KEPT).sum())
        table = pa.table({R.STATUS: pa.array(statuses), R.ORDINAL: pa.array(np.arange(300_000)),
                          "images_removed": pa.array([[]] * 300_000, pa.list_(pa.struct([("position", pa.int32())])))})
        write_table(table, tmp_path / f"part-{i}.parquet")
        files.append(str(tmp_path / f"part-{i}.parquet"))
    out = subprocess.run([sys.executable, "-c", PEAK, *files], cwd=ROOT, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["kept"] == kept and got["removes"] is False
    assert got["peak"] < 1_000_000, got   # a whole file's status column alone is ~3.6 MB
