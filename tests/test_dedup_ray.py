"""text_dedup's global step on Ray Data (a local Ray, 2 CPUs) decides byte for byte as in one process:
the distributed components, the union + shuffle join and the per-component kept rows (greedy stars,
on planted groups and on chains of captions) hold on a real shuffle, with Ray's own partitioning of blocks."""
from __future__ import annotations

import pyarrow as pa
import pytest

from curate import base as S
from curate.base import records as R
from curate.base.global_data import InlineData
from curate.base.inline import apply_batch, global_input, with_bookkeeping
from curate.dedup import base as DB
from curate.dedup import chained as CH
from curate.dedup import global_step as G
from demo_data import planted_duplicates as PL
from curate.dedup import star_components as CC
from tests.test_dedup import rows_table


def _ipc_bytes(table: pa.Table) -> bytes:
    table = table.sort_by(R.ORDINAL).select(G.DECISION_SCHEMA.names).cast(G.DECISION_SCHEMA)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1 << 20)
    return sink.getvalue().to_pybytes()


def _ray_data_class():
    """pipelines.engine.ray_data.RayData, with GlobalData.union if it does not have it yet: the same one line
    (Dataset.union) that the coordinator adds to RayData."""
    from pipelines.engine.ray_data import RayData
    if hasattr(RayData, "union"):
        return RayData

    class RayDataWithUnion(RayData):
        def union(self, other):
            return RayDataWithUnion(self.ds.union(other.ds))

        def map_batches(self, fn):
            return RayDataWithUnion(RayData.map_batches(self, fn).ds)

        def shuffle_reduce(self, key, fn, partitions):
            return RayDataWithUnion(RayData.shuffle_reduce(self, key, fn, partitions).ds)

        def materialize(self):
            return RayDataWithUnion(self.ds.materialize())
    return RayDataWithUnion


def test_text_dedup_on_ray_decides_byte_for_byte_as_inline(monkeypatch):
    """The whole step in one reduce call (the default at this size), and as distributed steps with
    large/small-star rounds over several shuffle partitions."""
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    stage = S.build("text_dedup")
    chains = [{"key": link.key, "text": link.text} for link in CH.caption_chains(chains=2, length=20, seed=1)]
    table = with_bookkeeping(rows_table([{"key": r.key, "text": r.text} for r in PL.planted_captions()] + chains))
    out = pa.concat_tables([apply_batch(stage, table.slice(i, 64)) for i in range(0, table.num_rows, 64)])
    inputs = global_input(stage, out)
    chunks = [inputs.slice(i, 41) for i in range(0, inputs.num_rows, 41)]
    step = stage.global_step(InlineData(chunks))
    inline, inline_report = _ipc_bytes(step.decisions.gather()), step.report
    report = inline_report["dedup"]
    assert report["component_rounds"] == 0 and report["farthest_removed"]["estimated_jaccard"] >= 0.6
    assert report["largest_component"] > max(int(s) for s in report["group_sizes"])   # the chains: several kept
    started = not ray.is_initialized()
    if started:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    try:
        import ray.data
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        # Sort-based shuffle (tasks): Ray's default hash shuffle starts aggregator actors for 200
        # partitions per shuffle, minutes on 2 busy CPUs for this 400-row corpus.
        monkeypatch.setattr(ctx, "shuffle_strategy", "sort_shuffle_pull_based")
        data = _ray_data_class()(ray.data.from_arrow(chunks))
        step = stage.global_step(data)
        on_ray = _ipc_bytes(step.decisions.gather())   # gathered here, by the test, to compare
        assert on_ray == inline and step.report == inline_report
        monkeypatch.setattr(DB, "ROWS_PER_PARTITION", 97)        # several shuffle partitions on 400 rows
        monkeypatch.setattr(CC, "ONE_REDUCE_EDGES", 0)
        step = stage.global_step(data)
        in_rounds = _ipc_bytes(step.decisions.gather())
        assert in_rounds == inline and step.report["dedup"]["component_rounds"] >= 1
    finally:
        if started:
            ray.shutdown()
