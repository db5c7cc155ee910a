"""A Ray worker dies mid-stage (issue 26, item 1): SIGKILL of the actor process of a model-like
(actor-pool) stage and of the worker running a global step's shuffle reduce. Ray Data retries the
task and restarts the actor (pipelines.ray_data leaves Ray Data's defaults on: tasks
``max_retries=-1``, actors ``max_restarts=-1`` / ``max_task_retries=-1``; stage files are written
under unique staging names, so a retried write leaves no partial file), and the run completes with
the same bytes as an undisturbed run of the same recipe.

The kills come from tests.plugins.worker_faults (deterministic: once per run, at a chosen point).
The two-node variant (the second node's raylet killed mid-run) is in tests/test_ray_cluster.py.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.recipe import load
from pipelines.runner import run
from tests.corpus import caption_corpus

ROOT = Path(__file__).resolve().parents[1]

RECIPE = """\
name: worker-faults
seed: 7
plugins: [tests.plugins.worker_faults]
sources:
  - {{name: web, path: "{data}/*.tar", format: webdataset}}
stages:
  - {{name: kill_once_caption_length, settings: {{seconds_per_batch: 0, max_words: 30}}}}
  - {{name: kill_once_exact_dedup}}
  - {{name: count_tokens}}
  - {{name: pack, settings: {{context_length: 1024}}}}
  - {{name: shards, settings: {{dp_size: 1, micro_batches: 1}}}}
"""


def digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def same_outputs(a: Path, b: Path) -> None:
    assert digest(a / "shards") == digest(b / "shards")
    assert (a / "report.json").read_bytes() == (b / "report.json").read_bytes()
    assert (a / "rejects.parquet").read_bytes() == (b / "rejects.parquet").read_bytes()


@pytest.mark.slow
def test_a_worker_killed_in_an_actor_stage_and_in_a_shuffle_reduce_changes_no_byte(tmp_path):
    data = caption_corpus(tmp_path / "data", n_files=2, per_file=12)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(data=data))
    run(load(recipe), out=tmp_path / "inline", executor="inline", progress=False)
    kills = tmp_path / "kills"
    kills.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "MMCURATE_KILL_ONCE_DIR": str(kills)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", str(recipe), "--out", str(tmp_path / "ray"),
                           "--executor", "ray"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in kills.iterdir()) == ["kill_once_caption_length", "kill_once_exact_dedup"], \
        "both workers must have been killed"
    same_outputs(tmp_path / "inline", tmp_path / "ray")
