"""The runner end to end: accounting, resume, SIGKILL mid-stage, and Ray == inline."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from curate.base import records as R
from pipelines.recipe import load
from pipelines.runner import read_kept, run
from tests.corpus import caption_corpus

ROOT = Path(__file__).resolve().parents[1]


def recipe_text(data: Path, extra_stages: str = "", seconds: float = 0.0) -> str:
    return f"""\
name: runner-test
seed: 11
plugins: [tests.plugins.slow_stage]
sources:
  - {{name: web, path: "{data}/*.tar", format: webdataset, category: caption}}
stages:
  - {{name: slow_caption_length, settings: {{seconds_per_batch: {seconds}, max_words: 30}}}}
{extra_stages}"""


def final_digest(out: Path) -> str:
    """Digest of the run's final outputs: shard bytes when a shards stage ran, else the final rows."""
    h = hashlib.sha256()
    shards = out / "shards"
    if shards.exists():
        for p in sorted(shards.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(shards)).encode())
                h.update(p.read_bytes())
        return h.hexdigest()
    last = sorted((out / "stages").glob("[0-9][0-9]_*"))[-1]
    t = read_kept(last)
    t = t.take(pc.sort_indices(t, sort_keys=[(R.ORDINAL, "ascending")]))
    h.update(json.dumps(t.to_pylist(), sort_keys=True, default=str).encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return caption_corpus(tmp_path_factory.mktemp("corpus"), n_files=3, per_file=20)


def test_every_stage_balances_and_resume_skips_complete_stages(tmp_path, corpus):
    (tmp_path / "r.yaml").write_text(recipe_text(corpus))
    recipe = load(tmp_path / "r.yaml")
    first = run(recipe, out=tmp_path / "out", executor="inline", progress=False)
    for e in first.report["stages"]:
        assert e["in"] == e["out"] + sum(e["rejected"].values()) + sum(e["quarantined"].values())
        assert e["balanced"]
    assert first.report["stages"][0]["in"] == 60
    slow = first.report["stages"][1]
    assert slow["in"] == 60 and slow["rejected"].get("too_many_words", 0) > 0
    report_bytes = (tmp_path / "out" / "report.json").read_bytes()
    run(recipe, out=tmp_path / "out", executor="inline", progress=False)
    assert all(resumed(tmp_path / "out"))
    assert (tmp_path / "out" / "report.json").read_bytes() == report_bytes  # no clock, flag or path in it
    # a changed setting re-runs that stage (and only the stages from there on)
    (tmp_path / "r.yaml").write_text(recipe_text(corpus).replace("max_words: 30", "max_words: 10"))
    third = run(load(tmp_path / "r.yaml"), out=tmp_path / "out", executor="inline", progress=False)
    assert resumed(tmp_path / "out")[:2] == [True, False]
    assert third.report["stages"][1]["out"] < slow["out"]


def resumed(out: Path) -> list[bool]:
    return [s["resumed"] for s in json.loads((out / "run.json").read_text())["stages"]]


def test_from_forces_a_rerun_and_deleted_outputs_are_not_complete(tmp_path, corpus):
    (tmp_path / "r.yaml").write_text(recipe_text(corpus))
    recipe = load(tmp_path / "r.yaml")
    run(recipe, out=tmp_path / "out", executor="inline", progress=False)
    run(recipe, out=tmp_path / "out", executor="inline", progress=False, rerun_from="slow_caption_length")
    assert resumed(tmp_path / "out")[:2] == [True, False]
    # a stage whose output files vanished is not complete, whatever its marker says
    victim = next((tmp_path / "out" / "stages" / "00_ingest" / "data").glob("*.parquet"))
    victim.unlink()
    run(recipe, out=tmp_path / "out", executor="inline", progress=False)
    assert resumed(tmp_path / "out")[0] is False


def test_a_changed_stage_module_changes_its_fingerprint(tmp_path, monkeypatch):
    from pipelines import fingerprint as F
    mod = tmp_path / "curate" / "fake_stage_mod.py"
    mod.parent.mkdir()
    (mod.parent / "__init__.py").write_text("")
    mod.write_text("X = 1\n")
    monkeypatch.setattr(F, "_module_file", lambda name: mod if name == "fake" else None)
    F.code_hash.cache_clear()
    before = F.code_hash("fake")
    mod.write_text("X = 2\n")
    F.code_hash.cache_clear()
    assert F.code_hash("fake") != before
    monkeypatch.undo()
    F.code_hash.cache_clear()
    # real modules: the hash covers the project modules a stage imports, transitively
    assert F.code_hash("curate.filters.text_rules") != F.code_hash("curate.filters.image_rules")


def _mmcurate(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([sys.executable, "-m", "pipelines.present.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, **kw)


@pytest.mark.parametrize("executor", ["inline", "ray"])
def test_sigkill_mid_stage_then_rerun_gives_identical_final_bytes(tmp_path, corpus, executor):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(corpus, seconds=0.25))
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    proc = _mmcurate(["run", str(recipe), "--out", str(crashed), "--executor", executor])
    building = crashed / "stages" / "01_slow_caption_length.tmp"
    deadline = time.time() + 240
    while not building.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed: " + proc.stdout.read().decode()[-2000:]
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)   # the driver and every worker it started
    proc.wait(timeout=60)
    assert not (crashed / "stages" / "01_slow_caption_length" / "_COMPLETE.json").exists()
    for out in (crashed, clean):
        p = _mmcurate(["run", str(recipe), "--out", str(out), "--executor", executor])
        log = p.communicate(timeout=600)[0].decode()
        assert p.returncode == 0, log[-3000:]
    assert resumed(crashed)[:2] == [True, False]
    assert not list((crashed / "stages").glob("*.tmp"))
    assert final_digest(crashed) == final_digest(clean)


def test_ray_and_inline_executors_agree(tmp_path, corpus):
    (tmp_path / "r.yaml").write_text(recipe_text(corpus))
    recipe = load(tmp_path / "r.yaml")
    a = run(recipe, out=tmp_path / "inline", executor="inline", progress=False)
    b = run(recipe, out=tmp_path / "ray", executor="ray", progress=False)
    assert a.report == b.report
    assert final_digest(tmp_path / "inline") == final_digest(tmp_path / "ray")
