"""The demo on a real two-node Ray cluster (a head and a second node on this machine), joined through
RAY_ADDRESS as a user's cluster would be, gives the same bytes as the inline run."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import sample_data

ROOT = Path(__file__).resolve().parents[1]


def digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _run(work: Path, out: str, executor: str, env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", str(ROOT / "recipes" / "demo.yaml"),
                           "--out", out, "--executor", executor], cwd=work, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


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
    inline, on_cluster = tmp_path / "inline", tmp_path / "cluster"
    assert digest(inline / "shards") == digest(on_cluster / "shards")
    assert (inline / "report.json").read_bytes() == (on_cluster / "report.json").read_bytes()
    assert (inline / "rejects.parquet").read_bytes() == (on_cluster / "rejects.parquet").read_bytes()
