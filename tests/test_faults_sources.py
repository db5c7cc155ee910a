"""Damaged and compressed source files: each damaged file is a recorded quarantine with a reason, the
run completes with a balanced report, and gzip-compressed shards are read as the webdataset library
reads them — by both executors, to the same report."""
from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import curate.readers.read as RD
from curate.base import records as R
from pipelines.recipe import parse
from pipelines.runner import run
from tests.corpus import jpeg, write_tar

ROWS = 2000          # rows of each good parquet file
RG_ROWS = 500        # rows per row group


def _text(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(["red", "house", "river", "a", "tall", "tree", "by", "the"], 12))


def _parquet(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    pq.write_table(pa.table({"key": [f"{path.stem}-{i}" for i in range(ROWS)],
                             "text": [_text(rng) for _ in range(ROWS)]}),
                   path, row_group_size=RG_ROWS, compression="zstd")
    return path


def _damage_row_group(path: Path, row_group: int) -> None:
    """Garble bytes inside one row group's text column chunk: its page header no longer parses."""
    offset = pq.ParquetFile(path).metadata.row_group(row_group).column(1).data_page_offset
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + 64):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _conversation(i: int) -> str:
    return json.dumps({"id": f"c{i}", "conversations": [
        {"from": "human", "value": f"question {i} " + "why " * (i % 7)}, {"from": "gpt", "value": f"answer {i}"}]}) + "\n"


def _wds_members(prefix: str, n: int) -> list[tuple[str, bytes]]:
    members = []
    for i in range(n):
        members += [(f"{prefix}{i:03d}.jpg", jpeg(96 + i, 80, seed=i)), (f"{prefix}{i:03d}.txt", f"a photo {i}".encode())]
    return members


def damaged_corpus(root: Path) -> Path:
    (root / "pq").mkdir(parents=True)
    _parquet(root / "pq" / "a.parquet", 1)
    (root / "pq" / "b.parquet").write_bytes(b"not a parquet!!")              # 15 bytes
    cut = _parquet(root / "pq" / "c.parquet", 2)
    cut.write_bytes(cut.read_bytes()[:-30])                                  # footer cut off
    _damage_row_group(_parquet(root / "pq" / "d.parquet", 3), 2)             # one damaged row group
    lines = [_conversation(i) for i in range(400)]
    (root / "cut.jsonl").write_text("".join(lines[:200]) + lines[200][:17])  # cut mid-line 201
    compressed = gzip.compress("".join(_conversation(i) for i in range(3000)).encode(), mtime=0)
    (root / "cut.jsonl.gz").write_bytes(compressed[: len(compressed) * 2 // 3])
    (root / "wds").mkdir()
    write_tar(root / "plain.tar", _wds_members("g", 4))
    (root / "wds" / "00000.tar.gz").write_bytes(gzip.compress((root / "plain.tar").read_bytes(), mtime=0))
    write_tar(root / "plain.tar", _wds_members("t", 3))
    (root / "wds" / "00001.tgz").write_bytes(gzip.compress((root / "plain.tar").read_bytes(), mtime=0))
    write_tar(root / "plain.tar", _wds_members("x", 6))
    whole = gzip.compress((root / "plain.tar").read_bytes(), mtime=0)
    (root / "wds" / "00002.tar.gz").write_bytes(whole[: len(whole) * 2 // 3])   # a gzip stream cut short
    (root / "plain.tar").unlink()
    return root


def recipe(src: Path):
    return parse({"name": "damaged", "seed": 2, "sources": [
        {"name": "pq", "path": str(src / "pq" / "*.parquet"), "format": "parquet"},
        {"name": "jl", "path": str(src / "cut.jsonl"), "format": "llava"},
        {"name": "gz", "path": str(src / "cut.jsonl.gz"), "format": "llava"},
        {"name": "wds", "path": str(src / "wds" / "*"), "format": "webdataset"}],
        "stages": [{"name": "image_filter", "settings": {"preset": "lenient"}}, {"name": "count_tokens"},
                   {"name": "pack", "settings": {"context_length": 4096}},
                   {"name": "shards", "settings": {"dp_size": 1, "micro_batches": 1}}]})


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    return damaged_corpus(tmp_path_factory.mktemp("damaged"))


def _run(src: Path, out: Path, executor: str, monkeypatch):
    monkeypatch.setattr(RD, "BYTES_PER_PART", 4096)    # cut.jsonl is read by several tasks
    return run(recipe(src), out=out, executor=executor, progress=False)


def _reasons(out: Path) -> dict[str, str]:
    rejects = pq.read_table(out / "stages" / "00_ingest" / "rejects.parquet").to_pylist()
    return {r["key"]: r[R.REASON] for r in rejects}


def test_damaged_files_are_quarantined_with_reasons_and_the_run_completes(tmp_path, damaged, monkeypatch):
    result = _run(damaged, tmp_path / "out", "inline", monkeypatch)
    for e in result.report["stages"]:
        assert e["balanced"]
    reasons = _reasons(tmp_path / "out")
    assert reasons["pq/b.parquet"] == reasons["pq/c.parquet"] == "unreadable_parquet"
    assert reasons[f"pq/d.parquet@row{2 * RG_ROWS}"] == "unreadable_parquet"       # row group 2 only
    assert "truncated_tar" in {r for k, r in reasons.items() if k.startswith("wds/x")}
    gz = [(k, r) for k, r in reasons.items() if k.startswith("gz/")]
    assert [r for _, r in gz] == ["truncated_file"]
    cut_line = [r for k, r in reasons.items() if k.startswith("jl/")]
    assert cut_line == ["invalid_json_line"]
    kept = Counter(k.split("/")[0] for k in result.kept(0, ["key"]).column("key").to_pylist())
    assert kept["pq"] == ROWS + (ROWS - RG_ROWS)            # a.parquet whole, d.parquet less one row group
    assert kept["jl"] == 200 and kept["gz"] > 1000          # every complete record before each cut
    assert kept["wds"] >= 4 + 3                             # the compressed shards that are whole
    ingest = result.report["stages"][0]
    assert ingest["quarantined"]["unreadable_parquet"] == 3
    # the samples of .tar.gz shards reach the shards with their bytes verified (offsets in the gzip stream)
    shards = result.report["stages"][-1]
    assert shards["quarantined"] == {} and shards["out"] == result.report["stages"][-2]["out"]


@pytest.mark.slow
def test_the_ray_executor_records_the_same_faults(tmp_path, damaged, monkeypatch):
    inline = _run(damaged, tmp_path / "inline", "inline", monkeypatch)
    ray = _run(damaged, tmp_path / "ray", "ray", monkeypatch)
    assert ray.report == inline.report
    assert _reasons(tmp_path / "ray") == _reasons(tmp_path / "inline")


def test_gzip_shards_give_the_samples_webdataset_gives(damaged):
    import webdataset as wds
    from curate.readers.sources import SourceSpec
    for name in ("00000.tar.gz", "00001.tgz"):
        uri = str(damaged / "wds" / name)
        theirs = [s["__key__"] for s in wds.WebDataset(uri, shardshuffle=False, empty_check=False)]
        table = RD.read_file(SourceSpec(name="w", path=uri, format="webdataset"), uri, 0, 0)
        ours = [k.split("/", 1)[1] for k in table.column("key").to_pylist()]
        assert ours == theirs and set(table.column(R.STATUS).to_pylist()) == {R.KEPT}
        texts = [s["txt"].decode() for s in wds.WebDataset(uri, shardshuffle=False, empty_check=False)]
        assert table.column("text").to_pylist() == texts


def test_batches_of_a_gzip_shard_continue_one_stream_instead_of_restarting_it(damaged, monkeypatch):
    """Reading a .tar.gz's members batch after batch (as per-row stages do) decompresses it once,
    not once per batch; the bytes are the members' bytes."""
    import curate.readers.compression as C
    from curate.media import images as I
    from curate.media.identity import sha256_bytes
    from curate.readers.sources import SourceSpec
    opened = []

    class Counting(C.gzip.GzipFile):
        def __init__(self, *a, **kw):
            opened.append(1)
            super().__init__(*a, **kw)
    monkeypatch.setattr(C.gzip, "GzipFile", Counting)
    monkeypatch.setattr(C, "STREAMS", C.OpenStreams())
    monkeypatch.setattr(I, "STREAMS", C.STREAMS)
    uri = str(damaged / "wds" / "00000.tar.gz")
    table = RD.read_file(SourceSpec(name="w", path=uri, format="webdataset"), uri, 0, 0)
    refs = [r for refs in table.column("images").to_pylist() for r in refs]
    opened.clear()
    got = I.read_many(refs[:2]) + I.read_many(refs[2:])
    assert [sha256_bytes(b) if isinstance(b, bytes) else b for b in got] == [r["sha256"] for r in refs]
    assert len(opened) == 1
    I.read_many(refs[:1])                       # going back restarts the stream, once
    assert len(opened) == 2
