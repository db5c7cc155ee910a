"""Output safety with real user files in the way, and a lock tested with two real processes."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.present.cli import main
from pipelines.outdir import (LOCK, MARKER, OutputRefused, check_disjoint, check_output_target, claim_output,
                              remove_owned)
from pipelines.recipe import RecipeError, parse
from pipelines.runner import run
from tests.corpus import caption_corpus
from tests.corpus import ingest_resumed

ROOT = Path(__file__).resolve().parents[1]


def user_files(root: Path) -> dict[str, bytes]:
    """A user's folder that looks like a run's: shards/, stages/*.tmp, and a precious file."""
    files = {"thesis.tex": b"\\documentclass{article}", "shards/mine.tar": b"my own tar",
             "stages/notes.tmp/keep.txt": b"do not delete"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def assert_intact(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert (root / rel).read_bytes() == data, rel


def recipe_for(data: Path, **shards_settings) -> object:
    stages = [{"name": "shards", "settings": shards_settings}] if shards_settings else []
    return parse({"name": "o", "seed": 0, "stages": stages,
                  "sources": [{"name": "web", "path": str(data / "*.tar"), "format": "webdataset"}]})


def test_out_on_a_foreign_non_empty_dir_is_refused_and_nothing_is_touched(tmp_path):
    data = caption_corpus(tmp_path / "data", n_files=1, per_file=3)
    home = tmp_path / "home"
    home.mkdir()
    files = user_files(home)
    with pytest.raises((OutputRefused, RecipeError), match="not created by mmcurate"):
        run(recipe_for(data), out=home, executor="inline", progress=False)
    assert_intact(home, files)
    assert not (home / MARKER).exists() and not (home / "recipe.json").exists()


def test_an_empty_dir_becomes_ours_and_a_rerun_resumes(tmp_path):
    data = caption_corpus(tmp_path / "data", n_files=1, per_file=3)
    out = tmp_path / "empty"
    out.mkdir()
    run(recipe_for(data), out=out, executor="inline", progress=False)
    assert (out / MARKER).is_file()
    again = run(recipe_for(data), out=out, executor="inline", progress=False)
    assert ingest_resumed(again) is True


def test_shards_output_dir_on_a_source_folder_is_refused_by_validate_and_run(tmp_path, capsys):
    data = caption_corpus(tmp_path / "data", n_files=2, per_file=2)
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    recipe_yaml = tmp_path / "r.yaml"
    recipe_yaml.write_text(f"name: o\nseed: 0\nsources:\n  - {{name: web, path: '{data}/*.tar', format: webdataset}}\n"
                           f"stages:\n  - {{name: count_tokens}}\n  - {{name: pack, settings: {{context_length: 2048}}}}\n"
                           f"  - {{name: shards, settings: {{output_dir: '{data}'}}}}\n")
    assert main(["validate", "recipe", str(recipe_yaml)]) == 1
    err = capsys.readouterr().err
    assert "stages[2].settings.output_dir" in err and "mmcurate" in err
    assert main(["run", str(recipe_yaml), "--executor", "inline", "--out", str(tmp_path / "o")]) == 2
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before


def test_shards_output_dir_on_a_foreign_folder_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "x.txt").write_text("mine")
    with pytest.raises(OutputRefused, match="not created by mmcurate"):
        check_output_target(target, "shards.output_dir")
    check_output_target(tmp_path / "new")          # missing: fine
    (tmp_path / "owned").mkdir()
    (tmp_path / "owned" / MARKER).write_text("{}")
    (tmp_path / "owned" / "shard.tar").write_text("ours")
    check_output_target(tmp_path / "owned")        # marked: fine


def test_output_and_sources_may_not_overlap(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(OutputRefused, match="where source 0"):
        check_disjoint(src, [f"{src}/*.tar"])
    with pytest.raises(OutputRefused, match="where source 0"):
        check_disjoint(src / "out", [f"{src}/**/*.tar"])
    with pytest.raises(OutputRefused, match="lies inside"):
        check_disjoint(tmp_path, [f"{src}/*.tar"])
    check_disjoint(src / "out", [f"{src}/*.tar"])   # beside the files, not read by the glob: allowed
    check_disjoint(tmp_path / "o", ["s3://bucket/*.tar"])


def test_remove_owned_refuses_what_we_did_not_create(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "a").write_text("x")
    with pytest.raises(OutputRefused, match="did not create"):
        remove_owned(foreign)
    assert (foreign / "a").exists()
    ours = tmp_path / "ours"
    (ours / "sub").mkdir(parents=True)
    (ours / MARKER).write_text("{}")
    remove_owned(ours / "sub")
    remove_owned(ours)
    assert not ours.exists()


HOLDER = """
import sys, time
from pipelines.outdir import claim_output
with claim_output(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _start_holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path):
    out = tmp_path / "out"
    holder = _start_holder(out)
    try:
        t0 = time.monotonic()
        with pytest.raises(OutputRefused) as err:
            with claim_output(out):
                pass
        assert time.monotonic() - t0 < 2, "the second run must refuse at once, not wait"
        msg = str(err.value)
        assert f"pid {holder.pid}" in msg and socket.gethostname() in msg and "started" in msg
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    with claim_output(out) as claim:     # the kernel released the dead run's lock: taken over
        assert claim.took_over_from and claim.took_over_from["pid"] == holder.pid
        assert claim.holder["pid"] == os.getpid()
    assert (out / LOCK).exists()


def test_a_run_on_a_locked_out_refuses_and_leaves_the_holder_alone(tmp_path):
    data = caption_corpus(tmp_path / "data", n_files=1, per_file=2)
    out = tmp_path / "out"
    holder = _start_holder(out)
    try:
        with pytest.raises(OutputRefused, match=f"in use by another mmcurate run .*pid {holder.pid}"):
            run(recipe_for(data), out=out, executor="inline", progress=False)
        assert holder.poll() is None
        assert not (out / "stages").exists()
    finally:
        holder.kill()
        holder.wait(10)


def test_a_run_dir_of_an_earlier_version_is_adopted_but_a_lookalike_with_user_files_is_not(tmp_path):
    legacy = tmp_path / "legacy"
    (legacy / "stages" / "00_ingest").mkdir(parents=True)
    (legacy / "recipe.json").write_text("{}")
    (legacy / "report.json").write_text("{}")
    check_output_target(legacy)
    (legacy / "my-notes.txt").write_text("mine")
    with pytest.raises(OutputRefused):
        check_output_target(legacy)
