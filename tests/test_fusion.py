"""Fused per-row stages (pipelines.engine.fusion): one pass for a chain of per-row stages, yet per-stage
accounting, rejects, summaries and resume exactly as if every stage had written its own rows."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, strategies as st

from curate.base import records as R
from pack.tokens.stage import histogram_percentile
from pipelines.recipe import load
from pipelines.runner import read_kept, run
from tests.corpus import caption_corpus
from tests.test_runner import final_digest, resumed

# slow_caption_length, text_filter and image_filter each drop rows; count_tokens summarises. The chain
# slow_caption_length + text_filter + image_filter + count_tokens is written once, in count_tokens'
# directory. The mixture (inserted before pack; it up-samples to 60 rows) and pack are whole-dataset
# steps without a per-batch step: each runs alone on its upstream's rows, read in place.
STAGES = [
    ("slow_caption_length", "{seconds_per_batch: 0, max_words: 30}"),
    ("text_filter", "{min_caption_words: 8}"),
    ("image_filter", "{min_side: 300}"),
    ("count_tokens", "{}"),
    ("pack", "{context_length: 4096}"),
]


def recipe_text(data: Path, checkpoint: set[str] = frozenset(), max_side: int | None = None) -> str:
    lines = []
    for name, settings in STAGES:
        if name == "image_filter" and max_side:
            settings = "{min_side: 300, max_aspect_ratio: %s}" % max_side
        extra = ", checkpoint: true" if name in checkpoint else ""
        lines.append(f"  - {{name: {name}, settings: {settings}{extra}}}")
    return f"""\
name: fusion-test
seed: 5
plugins: [tests.plugins.slow_stage]
model: {{preset: qwen2-vl, context_length: 4096}}
mixture: {{by: category, unit: samples, total: 60, max_repeat: 3, ratios: {{caption: 1.0}}}}
sources:
  - {{name: web, path: "{data}/*.tar", format: webdataset, category: caption}}
stages:
""" + "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return caption_corpus(tmp_path_factory.mktemp("corpus"), n_files=3, per_file=30, seed=3)


def _run(tmp_path: Path, name: str, text: str, executor: str = "inline"):
    (tmp_path / f"{name}.yaml").write_text(text)
    return run(load(tmp_path / f"{name}.yaml"), out=tmp_path / name, executor=executor, progress=False)


def test_a_fused_chain_reports_and_rejects_exactly_like_stage_by_stage(tmp_path, corpus):
    every = {name for name, _ in STAGES}
    fused = _run(tmp_path, "fused", recipe_text(corpus))
    apart = _run(tmp_path, "apart", recipe_text(corpus, checkpoint=every))
    # the chain was one pass: only its owner (count_tokens) wrote rows
    assert [d.name for d in fused.stage_dirs if (d / "data").is_dir()] == \
        ["00_ingest", "04_count_tokens", "05_mixture", "06_pack"]
    assert all((d / "data").is_dir() for d in apart.stage_dirs)
    # ... yet every stage dropped something and is accounted for on its own, identically
    entries = fused.report["stages"]
    assert all(sum(e["rejected"].values()) for e in entries[1:4]), entries
    assert entries[5]["repeated"] > 0
    assert (tmp_path / "fused/report.json").read_bytes() == (tmp_path / "apart/report.json").read_bytes()
    assert (tmp_path / "fused/rejects.parquet").read_bytes() == (tmp_path / "apart/rejects.parquet").read_bytes()
    for a, b in zip(fused.stage_dirs, apart.stage_dirs):
        assert pq.read_table(a / "rejects.parquet").equals(pq.read_table(b / "rejects.parquet")), a.name
    assert final_digest(tmp_path / "fused") == final_digest(tmp_path / "apart")
    # the summary streamed as histograms equals numpy's percentiles over the kept rows
    tokens = np.asarray(read_kept(apart.stage_dirs[4], ["num_tokens"]).column("num_tokens"))
    assert entries[4]["tokens"]["p90"] == round(float(np.percentile(tokens, 90)))
    # a fused stage's kept rows read back as the same rows (by ordinal) as its own manifest
    for index in (1, 2, 3):
        mine = read_kept(fused.stage_dirs[index], ["key", R.ORDINAL])
        own = read_kept(apart.stage_dirs[index], ["key", R.ORDINAL])
        assert mine.sort_by(R.ORDINAL).equals(own.sort_by(R.ORDINAL))


def test_resume_restarts_a_chain_at_its_last_checkpoint(tmp_path, corpus):
    text = recipe_text(corpus, checkpoint={"text_filter"})
    first = _run(tmp_path, "out", text)
    assert [json.loads((d / "_COMPLETE.json").read_text()).get("fused_into") for d in first.stage_dirs] == \
        [None, "02_text_filter", None, "04_count_tokens", None, None, None]
    _run(tmp_path, "out", text)
    assert all(resumed(tmp_path / "out"))
    # image_filter changed: the stages up to the checkpoint are kept, the rest of the chain re-runs
    changed = recipe_text(corpus, checkpoint={"text_filter"}, max_side=2)
    again = _run(tmp_path, "out", changed)
    assert resumed(tmp_path / "out") == [True, True, True, False, False, False, False]
    fresh = _run(tmp_path, "fresh", changed)
    assert again.report == fresh.report
    assert final_digest(tmp_path / "out") == final_digest(tmp_path / "fresh")
    # the owner's rows deleted: the chain is incomplete and re-runs from the checkpoint
    # (pack's fingerprint and files are unchanged: the re-run chain writes the same bytes, so it stays)
    next((tmp_path / "out/stages/04_count_tokens/data").glob("*.parquet")).unlink()
    _run(tmp_path, "out", changed)
    assert resumed(tmp_path / "out") == [True, True, True, False, False, True, True]
    assert final_digest(tmp_path / "out") == final_digest(tmp_path / "fresh")
    # a new mixture total re-runs the mixture and pack only: the chain before it is a resume point
    _run(tmp_path, "out", changed.replace("total: 60", "total: 50"))
    assert resumed(tmp_path / "out") == [True, True, True, True, True, False, False]


def test_ray_runs_the_chain_in_one_pass_with_the_same_report_and_bytes(tmp_path, corpus, monkeypatch):
    from pipelines.engine.ray_data import RayData

    def refuse(self):
        raise AssertionError("a global step gathered every row into the driver")
    monkeypatch.setattr(RayData, "gather", refuse)   # ingest, mixture and pack work on aggregates only
    inline = _run(tmp_path, "inline", recipe_text(corpus))
    ray = _run(tmp_path, "ray", recipe_text(corpus), executor="ray")
    assert ray.report == inline.report
    assert (tmp_path / "ray/rejects.parquet").read_bytes() == (tmp_path / "inline/rejects.parquet").read_bytes()
    assert final_digest(tmp_path / "ray") == final_digest(tmp_path / "inline")
    assert not (ray.stage_dirs[2] / "data").exists()


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=300), st.floats(0, 100))
def test_histogram_percentiles_equal_numpy_on_the_expanded_values(values, q):
    v, c = np.unique(np.asarray(values), return_counts=True)
    assert histogram_percentile(v, c, q) == pytest.approx(float(np.percentile(values, q)), abs=1e-6)


def test_a_stage_marked_checkpoint_is_validated_and_leaves_results_unchanged(tmp_path, corpus):
    a = load_text(tmp_path, "a", recipe_text(corpus))
    b = load_text(tmp_path, "b", recipe_text(corpus, checkpoint={"image_filter"}))
    assert a.hash() == b.hash()     # where rows are written is not part of what they are
    assert [s.checkpoint for s in b.stages] == [False, False, True, False, False]
    (tmp_path / "bad.yaml").write_text(recipe_text(corpus).replace("{min_side: 300}", "{min_side: 300}, checkpoint: 1"))
    with pytest.raises(Exception, match="checkpoint"):
        load(tmp_path / "bad.yaml")


def load_text(tmp_path: Path, name: str, text: str):
    (tmp_path / f"{name}.yaml").write_text(text)
    return load(tmp_path / f"{name}.yaml")


def test_fused_rows_carry_the_index_of_the_stage_that_dropped_them(tmp_path, corpus):
    fused = _run(tmp_path, "fused", recipe_text(corpus))
    data = pq.read_table(sorted((fused.stage_dirs[4] / "data").glob("*.parquet"))[0])
    dropped = data.filter(pc.not_equal(data.column(R.STATUS), R.KEPT))
    by_stage = dict(zip(*dropped.group_by("_dropped_at").aggregate([([], "count_all")]).to_pydict().values()))
    assert {i: by_stage.get(i, 0) for i in (1, 2, 3)} == {
        i: sum(fused.report["stages"][i]["rejected"].values()) + sum(fused.report["stages"][i]["quarantined"].values())
        for i in (1, 2, 3)}
