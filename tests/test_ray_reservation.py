"""Ray Data's per-operator resource reservation: off for a pass of tasks, on for a pass with an actor pool.

Reservation splits the CPUs between a plan's operators up front; on a small machine a task pass ran
on ~1.3 of 2 cores with it (pipelines/engine/ray_data.py). An actor pool (a model stage) keeps it, so the
tasks ahead of it cannot take every CPU while its actors wait to start. The flag must reach the
dataset that executes, not only the global DataContext.
"""
from __future__ import annotations

import pytest

from curate import base as S
from curate.base import records as R
from pipelines.engine.tables import write_table

ray = pytest.importorskip("ray")


def test_task_passes_run_without_reservation_and_actor_passes_with_it(tmp_path, monkeypatch):
    from pipelines.engine.ray_data import RayExecutor
    source = tmp_path / "part-00000.parquet"
    write_table(R.BASE_SCHEMA.empty_table(), source)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    executor = RayExecutor(num_cpus=2)
    seen: list[tuple[str, bool]] = []
    # Record what the pass would execute with, instead of executing it.
    monkeypatch.setattr(RayExecutor, "_write", lambda self, ds, out, schema, per_block=False: seen.append(
        (out.name, ds.context.op_resource_reservation_enabled)))
    try:
        text, ocr = S.build("text_filter"), S.build("ocr")
        assert (text.resources.kind, ocr.resources.kind) == ("task", "actor")
        executor.map_stages([text], [str(source)], tmp_path / "tasks")
        executor.map_stages([ocr], [str(source)], tmp_path / "actors")
        executor.map_stages([text], [str(source)], tmp_path / "tasks-again")   # the actor pass changed nothing global
    finally:
        executor.close()
    assert seen == [("tasks", False), ("actors", True), ("tasks-again", False)]
