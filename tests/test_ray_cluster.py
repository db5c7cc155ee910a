"""The demo on a real two-node Ray cluster (a head and a second node on this machine), joined through
RAY_ADDRESS as a user's cluster would be, gives the same bytes as the inline run; and a run whose
second node's raylet is SIGKILLed mid-stage still does (issue 26: Ray retries the lost tasks on the
head and rebuilds the lost blocks from their lineage)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo_data import sample as sample_data
from pipelines.recipe import load
from pipelines.runner import run
from tests.corpus import caption_corpus
from tests.test_ray_faults import same_outputs

ROOT = Path(__file__).resolve().parents[1]


def _run(work: Path, out: str, executor: str, env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "pipelines.present.cli", "run", str(ROOT / "recipes" / "demo.yaml"),
                           "--out", out, "--executor", executor], cwd=work, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(autouse=True)
def cluster_runs_this_checkout(monkeypatch):
    """The test's cluster starts its raylets (and they their workers) from this process's environment:
    with PYTHONPATH on this checkout, the workers import the code under test, not an installed copy."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


def test_demo_on_a_two_node_cluster_matches_inline_byte_for_byte(tmp_path):
    from ray.cluster_utils import Cluster
    sample_data.build(tmp_path / "data" / "sample")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    _run(tmp_path, "inline", "inline", env)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        _run(tmp_path, "cluster", "ray", {**env, "RAY_ADDRESS": cluster.address})
    finally:
        cluster.shutdown()
    same_outputs(tmp_path / "inline", tmp_path / "cluster")


NODE_FAULT_RECIPE = """\
name: node-fault
seed: 3
plugins: [tests.plugins.slow_stage]
sources:
  - {{name: web, path: "{data}/*.tar", format: webdataset}}
stages:
  - {{name: slow_caption_length, settings: {{seconds_per_batch: 1.0, max_words: 30}}}}
  - {{name: count_tokens}}
  - {{name: pack, settings: {{context_length: 1024}}}}
  - {{name: shards, settings: {{dp_size: 1, micro_batches: 1}}}}
"""


def _busy_workers(raylet_pid: int) -> list[int]:
    """Worker processes of a node running a task (their title is ray::<task>, ray::IDLE when idle)."""
    import psutil
    busy = []
    for child in psutil.Process(raylet_pid).children(recursive=True):
        try:
            title = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if title.startswith("ray::") and not title.startswith(("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent")):
            busy.append(child.pid)
    return busy


@pytest.mark.slow
def test_the_second_nodes_raylet_killed_mid_stage_changes_no_byte(tmp_path):
    """SIGKILL of the second node's raylet while it runs slow_caption_length tasks: the run completes
    on the head alone with the same shards, report and rejects as the inline run."""
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster
    data = caption_corpus(tmp_path / "data", n_files=4, per_file=8)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(NODE_FAULT_RECIPE.format(data=data))
    run(load(recipe), out=tmp_path / "inline", executor="inline", progress=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    # A dead node is noticed within ~2 s instead of the default ~30 s.
    fast = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 500}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "_system_config": fast})
    try:
        second = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        raylet = second.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
        out = tmp_path / "cluster"
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.present.cli", "run", str(recipe), "--out", str(out),
                                 "--executor", "ray"], cwd=tmp_path, env={**env, "RAY_ADDRESS": cluster.address},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline, killed = time.monotonic() + 300, None
            while time.monotonic() < deadline and proc.poll() is None and killed is None:
                if (out / "stages" / "00_ingest" / "_COMPLETE.json").exists() and _busy_workers(raylet):
                    os.kill(raylet, signal.SIGKILL)   # the slow stage runs on both nodes: kill the second
                    killed = time.monotonic()
                time.sleep(0.05)
            log = proc.communicate(timeout=600)[0].decode(errors="replace")
        finally:
            if proc.poll() is None:
                proc.kill()
        assert killed is not None, "the second node never ran a task after ingest: nothing was killed\n" + log[-4000:]
        assert proc.returncode == 0, log[-4000:]
    finally:
        cluster.shutdown()
    same_outputs(tmp_path / "inline", tmp_path / "cluster")
