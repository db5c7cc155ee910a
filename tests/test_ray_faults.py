"""A Ray worker dies mid-stage (issue 26, item 1): SIGKILL of the actor process of a model-like
(actor-pool) stage and of the worker running a global step's shuffle reduce.

A killed task is retried by Ray Data (tasks ``max_retries=-1``; stage files are written under unique
staging names, so a retried write leaves no partial file). A killed actor is restarted on a cluster
(``RAY_ADDRESS``: Ray Data's ``max_restarts=-1``); on a local Ray, actor pools start with
``max_restarts=0`` (pipelines.engine.ray_data: Ray's core worker would print an error line for every actor
started with restarts on), so the pass fails naming the stage and the re-run resumes at that stage.
Either way the finished run has the same bytes as an undisturbed run of the same recipe.

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


def undisturbed_run_and_kill_dir(tmp_path: Path) -> tuple[Path, Path]:
    """The recipe over a small caption corpus, its undisturbed (inline) run in tmp_path/inline, and an
    empty directory for the kill-once markers."""
    data = caption_corpus(tmp_path / "data", n_files=2, per_file=12)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(data=data))
    run(load(recipe), out=tmp_path / "inline", executor="inline", progress=False)
    kills = tmp_path / "kills"
    kills.mkdir()
    return recipe, kills


@pytest.mark.slow
def test_a_worker_killed_in_an_actor_stage_and_in_a_shuffle_reduce_changes_no_byte(tmp_path):
    recipe, kills = undisturbed_run_and_kill_dir(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "MMCURATE_KILL_ONCE_DIR": str(kills)}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "pipelines.present.cli", "run", str(recipe), "--out", str(tmp_path / "ray"),
               "--executor", "ray"]
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    # the local policy: the killed actor fails its pass, naming the stage; the shuffle's worker is not reached
    assert first.returncode != 0, "a local Ray restarts no actor: the killed actor must fail its pass"
    assert "kill_once_caption_length" in first.stdout + first.stderr
    assert sorted(p.name for p in kills.iterdir()) == ["kill_once_caption_length"]
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert sorted(p.name for p in kills.iterdir()) == ["kill_once_caption_length", "kill_once_exact_dedup"], \
        "both workers must have been killed"
    same_outputs(tmp_path / "inline", tmp_path / "ray")


@pytest.mark.slow
def test_on_a_two_node_cluster_the_killed_actor_restarts_and_the_run_changes_no_byte(tmp_path, monkeypatch):
    """The same kills on the two-node test cluster joined through RAY_ADDRESS, where actor pools keep
    Ray's restarts: the first run completes, both workers were killed, the bytes are the inline run's."""
    from ray.cluster_utils import Cluster
    recipe, kills = undisturbed_run_and_kill_dir(tmp_path)
    # the cluster's raylets start their workers from this process's environment: the code under test
    # and the kill directory must be in it before the cluster starts
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("MMCURATE_KILL_ONCE_DIR", str(kills))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        proc = subprocess.run([sys.executable, "-m", "pipelines.present.cli", "run", str(recipe), "--out",
                               str(tmp_path / "cluster"), "--executor", "ray"], cwd=tmp_path,
                              env={**env, "RAY_ADDRESS": cluster.address}, capture_output=True, text=True, timeout=600)
    finally:
        cluster.shutdown()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in kills.iterdir()) == ["kill_once_caption_length", "kill_once_exact_dedup"], \
        "both workers must have been killed"
    same_outputs(tmp_path / "inline", tmp_path / "cluster")
