"""The mixture stage: ratios by samples or tokens, deterministic and independent of row order."""
from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from curate.base import records as R
from curate.mixture import MixtureStage
from curate.base import StageContext
from pipelines.cli import main


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
    assert stage.report["mixture"]["achieved"] == {"caption": 0.8, "text": 0.2}


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
