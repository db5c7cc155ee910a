"""The seeds' recipes in recipes/: every one validates and runs on its synthetic stand-in corpus, and
MindVL's warm-up realises Table 11 within 0.5 percentage points, by samples and by tokens, with repeats."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import yaml

from curate.base import records as R
from pipelines.recipe import Recipe, StageSpec, load
from pipelines.runner import run
from demo_data.synthetic import generate

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
# The seeds' data recipes run on synthetic sources named after the seeds' datasets; the other recipes
# (demo, dedup, ocr, cluster, the MLM-Filter filter) run on the bundled sample corpus in their own tests.
SEED_RECIPES = sorted(p for p in RECIPES.glob("*.yaml") if p.stem.startswith(("mindvl_", "openpangu_", "openqwen2vl_")))
TOLERANCE_PP = 0.5


def test_the_seed_recipes_are_all_there():
    names = {p.stem for p in SEED_RECIPES}
    assert {"mindvl_warmup", "mindvl_multitask", "mindvl_sft_2k", "mindvl_sft_4k", "mindvl_sft_8k",
            "openpangu_warmup", "openpangu_pretrain", "openpangu_pretrain_grounding14", "openpangu_annealing",
            "openqwen2vl_pretrain"} <= names


@pytest.mark.parametrize("path", SEED_RECIPES, ids=lambda p: p.stem)
def test_recipe_validates_and_runs_on_its_synthetic_corpus(path: Path, tmp_path: Path, monkeypatch):
    """Through the mixture (the warm-up's full check is below; pack and shards of every recipe ran in
    the issue's note: their stages are tested on their own)."""
    recipe = load(path)
    if recipe.name == "mindvl_warmup":
        return  # runs twice in test_mindvl_warmup_realises_table_11_within_half_a_point
    monkeypatch.chdir(tmp_path)
    generate(recipe, tmp_path, rows=160)
    plan = [s.name for s in recipe.plan()]
    until = "mixture" if "mixture" in plan else "count_tokens"
    result = run(recipe, out=tmp_path / "out", executor="inline", until=until, progress=False)
    entries = result.report["stages"]
    assert all(e["balanced"] for e in entries) and entries[-1]["out"] > 0
    mix = entries[-1].get("mixture")
    if mix:
        assert not mix["shortfall"]
        assert mix["max_abs_error_pp"] <= TOLERANCE_PP


def test_mindvl_sft_lengths_and_pixels_follow_the_seed():
    for k, pixels in ((2, 1280), (4, 3072), (8, 4096)):
        r = load(RECIPES / f"mindvl_sft_{k}k.yaml")
        settings = {s.name: s.settings for s in r.stages}
        assert settings["pack"]["context_length"] == k * 1024
        assert r.model.max_pixels == pixels * 28 * 28 and r.model.context_length == k * 1024
        assert r.mixture["ratios"] == {"vqa": 0.5, "text": 0.5}


def test_openpangu_grounding_share_and_context():
    shares = {n: load(RECIPES / f"{n}.yaml") for n in ("openpangu_pretrain", "openpangu_pretrain_grounding14",
                                                         "openpangu_annealing")}
    assert shares["openpangu_pretrain"].mixture["ratios"]["grounding"] == 0.07
    assert shares["openpangu_pretrain_grounding14"].mixture["ratios"]["grounding"] == 0.14
    ctx = {n: {s.name: s.settings for s in r.stages}["pack"]["context_length"] for n, r in shares.items()}
    assert ctx == {"openpangu_pretrain": 24576, "openpangu_pretrain_grounding14": 24576, "openpangu_annealing": 131072}


# --- MindVL warm-up: realised vs declared ----------------------------------------------------------------
def declared_shares(path: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Table 11 as the recipe declares it, computed here independently of the engine."""
    mix = yaml.safe_load(path.read_text())["mixture"]
    total = sum(mix["ratios"].values())
    cats = {c: r / total for c, r in mix["ratios"].items()}
    sources = {}
    for c, weights in mix["within"].items():
        s = sum(weights.values())
        sources.update({src: cats[c] * w / s for src, w in weights.items()})
    return cats, sources


def realised(kept, column: str, weights: np.ndarray) -> dict[str, float]:
    names = np.array(kept.column(column).to_pylist(), dtype=object)
    return {n: float(weights[names == n].sum() / weights.sum()) for n in np.unique(names)}


def with_mixture(recipe: Recipe, **settings) -> Recipe:
    return dataclasses.replace(recipe, mixture={**recipe.mixture, **settings})


@pytest.fixture(scope="module")
def warmup(tmp_path_factory):
    base = tmp_path_factory.mktemp("warmup")
    path = RECIPES / "mindvl_warmup.yaml"
    recipe = load(path)
    recipe = dataclasses.replace(recipe, sources=[dataclasses.replace(s, path=str(base / s.path)) for s in recipe.sources])
    generate(load(path), base, rows=1500)
    return base, recipe, declared_shares(path)


@pytest.mark.parametrize("unit", ["samples", "tokens"])
def test_mindvl_warmup_realises_table_11_within_half_a_point(warmup, unit):
    base, recipe, (cats, sources) = warmup
    # The largest total every dataset reaches within max_repeat, then 70% of it: every dataset is
    # feasible and the smallest ones must be repeated (factor up to 0.7 x 4 = 2.8).
    # One run directory: ingest and count_tokens run once and are resumed; only the mixture re-runs.
    probe = run(with_mixture(recipe, unit=unit), out=base / "out", executor="inline", until="mixture",
                progress=False)
    total = int(0.7 * probe.report["stages"][-1]["mixture"]["total_target"])
    result = run(with_mixture(recipe, unit=unit, total=total), out=base / "out", executor="inline",
                 until="mixture", progress=False)
    import json
    assert json.loads((base / "out" / "run.json").read_text())["stages"][1]["resumed"]
    entry = result.report["stages"][-1]
    assert entry["balanced"] and entry["repeated"] > 0 and not entry["mixture"]["shortfall"]
    kept = result.kept(columns=["key", "source", "category", "num_tokens", "repeat_of"])
    assert len(set(kept.column("key").to_pylist())) == kept.num_rows
    assert pc.sum(pc.is_valid(kept.column("repeat_of"))).as_py() == entry["repeated"]
    w = (np.ones(kept.num_rows) if unit == "samples"
         else np.asarray(kept.column("num_tokens").to_numpy(zero_copy_only=False), dtype=np.float64))
    got_total = w.sum()
    assert abs(got_total - total) <= 0.01 * total
    got_cats, got_sources = realised(kept, "category", w), realised(kept, "source", w)
    for name, share in cats.items():
        assert abs(100 * (got_cats.get(name, 0) - share)) <= TOLERANCE_PP, (name, got_cats.get(name), share)
    for name, share in sources.items():
        assert abs(100 * (got_sources.get(name, 0) - share)) <= TOLERANCE_PP, (name, got_sources.get(name), share)
    # the report says the same as the rows
    levels = {lv["level"]: {g["group"]: g for g in lv["groups"]} for lv in entry["mixture"]["levels"]}
    key = "achieved_samples" if unit == "samples" else "achieved_tokens"
    for name in cats:
        assert levels["category"][name][key] == pytest.approx(got_cats.get(name, 0), abs=1e-6)
    assert (base / "out" / "report.html").exists()


def test_mixture_stage_spec_is_where_the_recipe_puts_it():
    recipe = load(RECIPES / "mindvl_warmup.yaml")
    plan = recipe.plan()
    assert [s.name for s in plan] == ["ingest", "count_tokens", "mixture", "pack", "shards"]
    assert isinstance(plan[2], StageSpec) and plan[2].settings["within"]["gui"]["Screen-UI-zh"] == 360000
    assert R.KEPT == "kept"
