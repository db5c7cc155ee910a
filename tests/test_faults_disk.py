"""The disk fills: during a stage's write, during shard writing, during the report, in this process
and in a Ray worker. Each time: one line naming the path and the lack of space, a non-zero exit, no
traceback, no stage committed with partial files; after space is freed the re-run resumes from the
last committed stage and writes what a run that never met a full disk writes, byte for byte.

The output lives on a real size-limited filesystem (a 4 MiB tmpfs, filled with a ballast file to
leave a chosen number of bytes), which needs root and permission to mount: elsewhere those tests
skip, naming why, and the test without a mount (an ENOSPC raised by the tar writer's real write
call) still runs.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipelines.fingerprint import inventory_problem
from tests.test_faults_resume import llava_corpus, outputs, recipe, recipe_dict, resumed

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["ingest", "image_filter", "count_tokens", "pack", "shards"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """40 records with images: about 100 KB of stage files and 630 KB of shards."""
    src = llava_corpus(tmp_path_factory.mktemp("disk") / "src", n=40)
    (src / "r.yaml").write_text(yaml.safe_dump(recipe_dict(src)))
    return src


@pytest.fixture(scope="module")
def fresh(corpus, tmp_path_factory) -> dict[str, str]:
    from pipelines.runner import run
    out = tmp_path_factory.mktemp("fresh") / "out"
    run(recipe(corpus), out=out, executor="inline", progress=False)
    return outputs(out)


@dataclass
class Ran:
    returncode: int
    stderr: str


def mmcurate(src: Path, out: Path, *args: str, executor: str = "inline") -> Ran:
    """`mmcurate run` in a fresh process (the Ray case: Ray's own logging goes to its stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-m", "pipelines.present.cli", "run", str(src / "r.yaml"), "--out", str(out),
                           "--executor", executor, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    return Ran(done.returncode, done.stderr)


@pytest.fixture
def cli(capsys):
    """`mmcurate run` in this process (no start-up cost): an exception escaping it fails the test,
    so a traceback cannot pass unnoticed."""
    from pipelines.present.cli import main

    def call(src: Path, out: Path, *args: str) -> Ran:
        capsys.readouterr()
        code = main(["run", str(src / "r.yaml"), "--out", str(out), "--executor", "inline", *args])
        return Ran(code, capsys.readouterr().err)
    return call


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a size-limited tmpfs needs root to mount (CI runs as root); "
                    "test_enospc_from_the_tar_writer_without_a_mount covers the path without one")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"mounting a tmpfs was refused here ({done.stderr.strip()})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path, leave: int) -> Path:
    """Fill the filesystem with a ballast file, then give back `leave` bytes."""
    ballast = mnt / "ballast"
    block = b"\0" * 65536
    with open(ballast, "wb") as fh:
        try:
            while True:
                fh.write(block)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    os.truncate(ballast, max(0, ballast.stat().st_size - leave))
    return ballast


def assert_clean_failure(p: Ran, out: Path) -> str:
    """One line naming a path under `out` and the lack of space; nothing half-built left behind."""
    assert p.returncode != 0
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and f"no space left on the device holding {out}" in line[0], p.stderr[-3000:]
    assert "MiB free of" in line[0] and "run again" in line[0]
    assert not list((out / "stages").glob("*.tmp")) and not (out / ".shards.tmp").exists()
    for marker in (out / "stages").glob("*/_COMPLETE.json"):
        done = json.loads(marker.read_text())
        assert inventory_problem(done["outputs"], out) is None, f"{marker} committed with files not as recorded"
    return line[0]


@pytest.mark.parametrize("leave", [40_000, 90_000])
def test_disk_full_during_a_stage_write(small_disk, cli, corpus, fresh, leave):
    out = small_disk / "out"
    ballast = fill(small_disk, leave)
    failed = cli(corpus, out)
    line = assert_clean_failure(failed, out)
    assert "/stages/" in line
    ballast.unlink()
    again = cli(corpus, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert outputs(out) == fresh


def test_disk_full_while_writing_shards(small_disk, cli, corpus, fresh):
    out = small_disk / "out"
    assert cli(corpus, out, "--until", "pack").returncode == 0
    ballast = fill(small_disk, 120_000)
    line = assert_clean_failure(cli(corpus, out), out)
    assert ".shards.tmp/rank-00000/shard-" in line and not (out / "shards").exists()
    ballast.unlink()
    again = cli(corpus, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert resumed(out) == [True, True, True, True, False]
    assert outputs(out) == fresh


def test_disk_full_while_writing_the_report(small_disk, cli, corpus, fresh):
    out = small_disk / "out"
    assert cli(corpus, out).returncode == 0
    ballast = fill(small_disk, 8192)
    line = assert_clean_failure(cli(corpus, out), out)
    assert "report." in line
    assert not list(out.glob("*.tmp")), "a half-written report file was left"
    assert outputs(out) == fresh, "the last complete report and shards are kept as they were"
    ballast.unlink()
    again = cli(corpus, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert resumed(out) == [True] * len(STAGES)
    assert outputs(out) == fresh


@pytest.mark.slow
def test_disk_full_in_a_ray_worker(small_disk, corpus, fresh):
    out = small_disk / "out"
    ballast = fill(small_disk, 40_000)
    line = assert_clean_failure(mmcurate(corpus, out, executor="ray"), out)
    assert "/stages/00_ingest.tmp/" in line
    ballast.unlink()
    again = mmcurate(corpus, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert outputs(out) == fresh


def test_enospc_from_the_tar_writer_without_a_mount(tmp_path, corpus, fresh, monkeypatch):
    """No root needed: the tar writer's real write calls fail with ENOSPC after some bytes, as on a
    full disk. The run stops naming the shard; the re-run writes the bytes a clean run writes."""
    from curate.base.diskspace import OutOfSpace
    from pack.shards import tario
    from pipelines.runner import run

    real_write_tar = tario.write_tar

    def write_tar_on_a_full_disk(path, members):
        class FullDisk:
            def __init__(self, raw):
                self.raw, self.budget = raw, 4096

            def write(self, data):
                if len(data) > self.budget:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self.budget -= len(data)
                return self.raw.write(data)

            def __getattr__(self, name):
                return getattr(self.raw, name)
        with open(path, "wb") as raw:
            tario.write_tar_stream(FullDisk(raw), members)

    monkeypatch.setattr(tario, "write_tar", write_tar_on_a_full_disk)
    out = tmp_path / "out"
    with pytest.raises(OutOfSpace, match=r"holding .*/\.shards\.tmp/rank-00000/shard-000000\.tar"):
        run(recipe(corpus), out=out, executor="inline", progress=False)
    assert not (out / ".shards.tmp").exists() and not (out / "shards").exists()
    assert not (out / "stages" / "04_shards" / "_COMPLETE.json").exists()
    monkeypatch.setattr(tario, "write_tar", real_write_tar)
    run(recipe(corpus), out=out, executor="inline", progress=False)
    assert resumed(out) == [True, True, True, True, False]
    assert outputs(out) == fresh
