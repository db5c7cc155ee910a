"""The mixture stage: ratios by samples or tokens, deterministic and independent of row order."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings, strategies as st

from curate.base import records as R
from curate.mixture import MixtureStage
from curate.base import StageContext
from pipelines.present.cli import main


def corpus(counts: dict[str, int], tokens: dict[str, int] | None = None) -> pa.Table:
    rows, i = [], 0
    for cat, n in counts.items():
        for j in range(n):
            rows.append({"key": f"{cat}/{j}", "source": cat, "category": cat, R.ORDINAL: i, R.STATUS: R.KEPT,
                         "num_tokens": (tokens or {}).get(cat, 1)})
            i += 1
    return R.rows_to_table(rows, R.schema_with({"num_tokens": pa.int64()}))


def kept_counts(result) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in result.kept.column("category").to_pylist():
        out[c] = out.get(c, 0) + 1
    return out


def test_samples_mixture_hits_the_ratio_and_keeps_the_largest_total():
    stage = MixtureStage(by="category", ratios={"caption": 0.8, "text": 0.2}, context=StageContext(seed=3))
    res = stage.run(corpus({"caption": 1000, "text": 100}))
    assert kept_counts(res) == {"caption": 400, "text": 100}
    assert set(res.dropped.column(R.REASON).to_pylist()) == {"mixture:downsampled"}
    assert res.report["mixture"]["achieved"] == {"caption": 0.8, "text": 0.2}


def test_token_mixture_weights_by_num_tokens():
    stage = MixtureStage(by="category", unit="tokens", ratios={"a": 0.5, "b": 0.5})
    res = stage.run(corpus({"a": 100, "b": 100}, tokens={"a": 10, "b": 40}))
    assert kept_counts(res) == {"a": 100, "b": 25}


def test_unlisted_groups_are_rejected_with_their_own_reason():
    res = MixtureStage(ratios={"a": 1.0}).run(corpus({"a": 5, "zzz": 3}))
    assert kept_counts(res) == {"a": 5}
    assert res.dropped.column(R.REASON).to_pylist() == ["mixture:unlisted_group"] * 3


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.permutations(list(range(60))))
def test_selection_depends_on_seed_and_keys_not_on_row_order(seed, perm):
    t = corpus({"a": 40, "b": 20})
    stage = MixtureStage(ratios={"a": 0.5, "b": 0.5}, context=StageContext(seed=seed))
    base = sorted(stage.run(t).kept.column("key").to_pylist())
    shuffled = sorted(stage.run(t.take(pa.array(perm))).kept.column("key").to_pylist())
    assert base == shuffled and len(base) == 40


def test_bad_ratios_are_refused():
    with pytest.raises(ValueError, match="sum to"):
        MixtureStage(ratios={"a": 0.5, "b": 0.6})
    with pytest.raises(ValueError, match="positive"):
        MixtureStage(ratios={"a": 1.0, "b": 0.0})


def test_cli_lists_stages_and_prints_schema(capsys):
    assert main(["stages"]) == 0
    out = capsys.readouterr().out
    assert "mixture" in out and "ratios" in out
    assert main(["schema"]) == 0
    assert '"mmcurate recipe"' in capsys.readouterr().out


# --- two levels, budgets, repeats -------------------------------------------------------------------
import dataclasses  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from curate.mixture import REPEAT_OF, REPEAT_SOURCE, MixtureShortfall  # noqa: E402
from curate.mixture import plan as P  # noqa: E402
from curate.mixture.targets import build_targets  # noqa: E402
from curate.base import inline as E  # noqa: E402


def sourced(counts: dict[tuple[str, str], int], tokens: dict[str, int] | None = None) -> pa.Table:
    rows, i = [], 0
    for (cat, src), n in counts.items():
        for j in range(n):
            rows.append({"key": f"{src}/{j}", "source": src, "category": cat, R.ORDINAL: i, R.STATUS: R.KEPT,
                         "num_tokens": (tokens or {}).get(src, 10 + j % 7)})
            i += 1
    return R.rows_to_table(rows, R.schema_with({"num_tokens": pa.int64()}))


def by_source(table: pa.Table) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in table.column("source").to_pylist():
        out[s] = out.get(s, 0) + 1
    return out


def test_two_levels_split_a_category_by_source_weights():
    t = sourced({("caption", "a"): 300, ("caption", "b"): 300, ("ocr", "c"): 300})
    stage = MixtureStage(ratios={"caption": 0.5, "ocr": 0.5}, within={"caption": {"a": 3, "b": 1}},
                         total=400, context=StageContext(seed=1))
    res = stage.run(t)
    assert by_source(res.kept) == {"a": 150, "b": 50, "c": 200}
    levels = res.report["mixture"]["levels"]
    assert [lv["level"] for lv in levels] == ["category", "source"]
    assert {g["group"]: g["target"] for g in levels[1]["groups"]} == {"caption/a": 0.375, "caption/b": 0.125,
                                                                      "ocr": 0.5}


def test_total_upsamples_small_groups_with_distinct_repeat_rows():
    t = sourced({("caption", "big"): 500, ("gui", "small"): 40})
    stage = MixtureStage(ratios={"caption": 0.8, "gui": 0.2}, total=500, max_repeat=3, context=StageContext(seed=7))
    res = stage.run(t)
    assert by_source(res.kept) == {"big": 400, "small": 100}   # 40 rows x 2.5
    kept = res.kept
    repeats = kept.filter(pc.is_valid(kept.column(REPEAT_OF)))
    assert repeats.num_rows == 60
    keys = kept.column("key").to_pylist()
    assert len(set(keys)) == len(keys) and all("#r" in k for k in repeats.column("key").to_pylist())
    originals = set(kept.filter(pc.is_null(kept.column(REPEAT_OF))).column("key").to_pylist())
    assert set(repeats.column(REPEAT_OF).to_pylist()) <= originals
    ordinals = kept.column(R.ORDINAL).to_pylist()
    assert len(set(ordinals)) == len(ordinals) and all(o < 0 for o in repeats.column(R.ORDINAL).to_pylist())
    # in + repeated = out + dropped
    assert t.num_rows + repeats.num_rows == res.kept.num_rows + res.dropped.num_rows
    grp = {g["group"]: g for g in res.report["mixture"]["levels"][0]["groups"]}
    assert grp["gui"]["repeated_samples"] == 60 and grp["gui"]["repeat_factor"] == 2.5


def test_a_group_capped_by_max_repeat_is_reported_not_renormalised():
    t = sourced({("caption", "big"): 900, ("gui", "small"): 10})
    stage = MixtureStage(ratios={"caption": 0.9, "gui": 0.1}, total=1000, max_repeat={"gui": 2})
    res = stage.run(t)
    assert by_source(res.kept) == {"big": 900, "small": 20}   # caption keeps its own target, gui stays short
    short = res.report["mixture"]["shortfall"]
    assert short == [{"group": "gui", "target": 100.0, "achievable": 20.0, "available": 10.0, "max_repeat": 2.0}]
    with pytest.raises(MixtureShortfall, match="gui"):
        MixtureStage(ratios={"caption": 0.9, "gui": 0.1}, total=1000, max_repeat={"gui": 2},
                     on_shortfall="fail").run(t)


def test_token_budget_counts_tokens_of_repeats():
    t = sourced({("caption", "a"): 200, ("text", "b"): 20}, tokens={"a": 10, "b": 50})
    stage = MixtureStage(ratios={"caption": 0.5, "text": 0.5}, unit="tokens", total=2000, max_repeat=4)
    res = stage.run(t)
    assert by_source(res.kept) == {"a": 100, "b": 20}
    stage = MixtureStage(ratios={"caption": 0.5, "text": 0.5}, unit="tokens", total=4000, max_repeat=4)
    res = stage.run(t)
    assert by_source(res.kept) == {"a": 200, "b": 40}
    m = res.report["mixture"]
    assert m["total_achieved"] == 4000 and m["achieved"] == {"caption": 0.5, "text": 0.5}


def test_normalize_and_setting_errors_name_the_setting():
    MixtureStage(ratios={"a": 55.81, "b": 16.45}, normalize=True)
    with pytest.raises(ValueError, match="within: categories"):
        MixtureStage(ratios={"a": 1.0}, within={"zzz": {"s": 1}})
    with pytest.raises(ValueError, match="max_repeat"):
        MixtureStage(ratios={"a": 1.0}, max_repeat=0.5)
    with pytest.raises(ValueError, match="total"):
        MixtureStage(ratios={"a": 1.0}, total=-3)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 400), st.integers(0, 2**31), st.lists(st.integers(1, 60), min_size=2, max_size=5),
       st.integers(50, 3000), st.sampled_from(["samples", "tokens"]))
def test_plan_is_exact_and_independent_of_batches(batch_rows, seed, sizes, total, unit):
    """Row-exact budgets (nearest achievable weight) and the same copies whatever the batch cut."""
    names = [f"g{i}" for i in range(len(sizes))]
    targets = build_targets("source", {n: 1.0 for n in names}, {}, True, 1e-6, 10.0)
    labels = np.array([n for n, k in zip(names, sizes) for _ in range(k)], dtype=object)
    keys = [f"{lab}/{i}" for i, lab in enumerate(labels)]
    ranks = P.seeded_rank(keys, seed)
    w = (np.arange(labels.size) % 5 + 1).astype(np.float64) if unit == "tokens" else np.ones(labels.size)
    plans_a, _, _ = P.plan_mixture(targets, labels, ranks, w, None, total, batch_rows=batch_rows)
    plans_b, _, _ = P.plan_mixture(targets, labels, ranks, w, None, total, batch_rows=labels.size + 1)
    assert plans_a == plans_b
    copies = P.apply_plan(plans_a, labels, ranks)
    for n in names:
        m = labels == n
        got = float((copies[m] * w[m]).sum())
        p = plans_a[n]
        base = p.full * w[m].sum()
        # every achievable selection is a prefix in rank order; ours is the closest to the plan
        order = np.argsort(ranks[m], kind="stable")
        achievable = base + np.r_[0.0, np.cumsum(w[m][order])]
        assert abs(got - p.planned) == pytest.approx(np.abs(achievable - p.planned).min())


def test_repeat_ordinals_and_keys_are_derived_from_the_original():
    assert P.repeat_ordinal(5, 1) == P.repeat_ordinal(5, 1) < 0
    assert P.repeat_ordinal(5, 1) != P.repeat_ordinal(5, 2) != P.repeat_ordinal(6, 1)
    assert P.repeat_key("src/k", 2) == "src/k#r2"
    assert REPEAT_SOURCE == E.REPEAT_SOURCE


def test_runner_rejects_a_repeat_of_a_dropped_row():
    stage = MixtureStage(ratios={"a": 1.0})
    inputs = corpus({"a": 2}).select(["key", R.ORDINAL])
    bad = pa.table({R.ORDINAL: [0, 1, -5], R.STATUS: [R.KEPT, R.REJECTED, R.KEPT],
                    R.REASON: [None, "x", None], REPEAT_SOURCE: [None, None, 1], "key": [None, None, "a/1#r1"]})
    with pytest.raises(E.AccountingError, match="not kept"):
        E.validate_decisions(stage, inputs, bad)


def _repeat_recipe(tmp_path: Path, stages: list | None = None):
    from pipelines.recipe import parse
    for name, n in (("big", 60), ("small", 8)):
        pq.write_table(pa.table({"uid": [f"{name}{i}" for i in range(n)], "text": [f"t {i}" for i in range(n)]}),
                       tmp_path / f"{name}.parquet")
    return parse({"name": "rep", "seed": 3, "stages": stages or [],
                  "sources": [{"name": s, "path": str(tmp_path / f"{s}.parquet"), "format": "parquet",
                               "category": s, "key_column": "uid"} for s in ("big", "small")],
                  "mixture": {"ratios": {"big": 0.5, "small": 0.5}, "total": 40, "max_repeat": 3}})


def test_runner_accounts_repeats_and_writes_them(tmp_path: Path):
    from pipelines.runner import run
    result = run(_repeat_recipe(tmp_path), out=tmp_path / "out", executor="inline", progress=False)
    entry = result.report["stages"][-1]
    assert entry["name"] == "mixture" and entry["balanced"]
    assert (entry["in"], entry["repeated"], entry["out"], entry["rejected"]) == (68, 12, 40,
                                                                                {"mixture:downsampled": 40})
    kept = result.kept()
    assert kept.num_rows == 40 and len(set(kept.column("key").to_pylist())) == 40
    assert sorted(by_source(kept).values()) == [20, 20]


def test_ray_executor_writes_the_same_repeats_as_inline(tmp_path: Path, monkeypatch):
    """The one Ray run: repeat rows appended per Ray batch give the same rows as the inline executor."""
    from pipelines.runner import run
    monkeypatch.setenv("RAY_ADDRESS", "local")  # a fresh local Ray, not another process's cluster on this host
    recipe = _repeat_recipe(tmp_path)
    cols = ["key", "source", REPEAT_OF, R.ORDINAL]
    rows = {}
    for executor in ("inline", "ray"):
        result = run(recipe, out=tmp_path / executor, executor=executor, progress=False)
        assert result.report["stages"][-1]["repeated"] == 12 and result.report["stages"][-1]["balanced"]
        t = result.kept(columns=cols)
        rows[executor] = sorted(zip(*[t.column(c).to_pylist() for c in cols]), key=str)
    assert rows["inline"] == rows["ray"]


def test_ray_routes_decisions_about_repeat_rows_to_their_files(tmp_path: Path, monkeypatch):
    """Repeat rows carry negative, hash-derived ordinals that no file range locates: a global step
    after the mixture (pack) must find them through the repeat lookup, many small files apart, and
    give the inline executor's rows."""
    from pipelines.engine import ray_files
    from pipelines.runner import run
    monkeypatch.setenv("RAY_ADDRESS", "local")
    monkeypatch.setattr(ray_files, "ROWS_PER_FILE", 7)   # repeats spread over many files
    recipe = _repeat_recipe(tmp_path, [{"name": "count_tokens"},
                                       {"name": "pack", "settings": {"context_length": 64}}])
    cols = ["key", REPEAT_OF, R.ORDINAL, "pack_id"]
    rows = {}
    for executor in ("inline", "ray"):
        result = run(recipe, out=tmp_path / executor, executor=executor, progress=False)
        stages = {e["name"]: e for e in result.report["stages"]}
        assert stages["mixture"]["repeated"] == 12 and stages["pack"]["in"] == 40
        t = result.kept(columns=cols)
        rows[executor] = sorted(zip(*[t.column(c).to_pylist() for c in cols]), key=str)
    assert rows["inline"] == rows["ray"] and len(rows["ray"]) == 40
    assert sum(1 for r in rows["ray"] if r[1] is not None) == 12   # the repeats were packed too
    mixture_files = sorted((tmp_path / "ray" / "stages").glob("*mixture*/data/*.parquet"))
    assert len(mixture_files) > 3
    # every file holds its original rows in _ordinal order, over ranges disjoint in file order
    ords = [o for f in mixture_files for o in pq.read_table(f, columns=[R.ORDINAL]).column(0).to_pylist() if o >= 0]
    assert ords == sorted(ords) and len(set(ords)) == len(ords)
    # files whose ranges interleave (Ray handing blocks over out of order): every decision is looked
    # up by its row's _ordinal instead, with the same rows
    real_init = ray_files.FileIndex.__init__

    def interleaved(self, files):
        real_init(self, files)
        self.by_range, self.starts, self.owners, self.overlap = False, [], [], "forced by the test"
    monkeypatch.setattr(ray_files.FileIndex, "__init__", interleaved)
    t = run(recipe, out=tmp_path / "ray-lookup", executor="ray", progress=False).kept(columns=cols)
    assert sorted(zip(*[t.column(c).to_pylist() for c in cols]), key=str) == rows["inline"]


def test_output_rows_do_not_depend_on_batch_size():
    t = sourced({("caption", "big"): 300, ("gui", "small"): 25})
    out = []
    for size in (7, 1000):
        stage = MixtureStage(ratios={"caption": 0.7, "gui": 0.3}, total=300, max_repeat=4, context=StageContext(seed=9))
        kept = stage.run(t, batch_size=size).kept
        out.append(sorted(zip(kept.column("key").to_pylist(), kept.column(R.ORDINAL).to_pylist())))
    assert out[0] == out[1] and len(out[0]) == 300


def test_global_step_on_no_rows_reports_an_empty_mixture():
    """Every upstream row rejected: the mixture's passes see no batch at all, and still report."""
    from curate.base.global_data import InlineData
    stage = MixtureStage(ratios={"caption": 1.0}, context=StageContext(seed=1))
    step = stage.global_step(InlineData([]))
    assert step.decisions.gather().num_rows == 0
    assert step.report["mixture"]["total_achieved"] == 0
