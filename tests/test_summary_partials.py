"""Stage summaries as mergeable partials (curate.base.summary_sketch, issue 31).

* the report numbers from partials merged in any batching and tree equal the numbers the stages
  computed from every kept row before (a copy of that code is the reference here), exactly while a
  group holds at most EXACT_LIMIT values, within the stated relative error beyond;
* a summary-bearing stage of every family runs on a driver that fails when the merged partials it
  receives carry more than a fixed number of rows (below the input's row count).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from curate.base import StageContext, get
from curate.base import summary_sketch as K
from curate.base.global_data import COMBINE_FAN_IN, InlineData
from curate.ocr import columns as OC
from curate.ocr.reading import size_bucket

SOURCES = ("laion", "coyo", "docs")


def make(name: str, **settings_):
    return get(name)(context=StageContext(seed=1), **settings_)


# --- the previous, row-per-sample summaries (reference) -------------------------------------------
def old_scores(kept: pa.Table, column: str, pcts: tuple[int, ...]) -> dict:
    out = {}
    sources = kept.column("source").to_pylist()
    vals = np.asarray(kept.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)
    for src in sorted(set(sources)):
        v = vals[np.asarray([s == src for s in sources])]
        valid = v[~np.isnan(v)]
        out[src] = {"scored": int(valid.size), "unscored": int(v.size - valid.size),
                    **({f"p{p}": round(float(np.percentile(valid, p)), 4) for p in pcts} if valid.size else {}),
                    **({"mean": round(float(valid.mean()), 4)} if valid.size else {})}
    return out


def old_ocr(kept: pa.Table, low: float, buckets) -> dict:
    per_source = {}
    sources = kept.column("source").to_pylist()
    sizes = [(refs[0]["width"] or 0, refs[0]["height"] or 0) if refs else (0, 0) for refs in kept.column("images").to_pylist()]
    f1 = np.asarray(kept.column(OC.F1).to_numpy(zero_copy_only=False), dtype=np.float64)
    cov = np.asarray(kept.column(OC.COVERAGE).to_numpy(zero_copy_only=False), dtype=np.float64)
    dist = lambda v: {**{f"p{p}": round(float(np.percentile(v, p)), 4) for p in OC.PERCENTILES},  # noqa: E731
                      "mean": round(float(v.mean()), 4)}
    for src in sorted(set(sources)):
        sel = np.asarray([s == src for s in sources])
        f, c = f1[sel], cov[sel]
        read = ~np.isnan(c)
        entry = {"read": int(read.sum()), "not_read": int((~read).sum())}
        if read.any():
            entry["word_f1"] = dist(f[read & ~np.isnan(f)]) if (read & ~np.isnan(f)).any() else {}
            entry["char_coverage"] = dist(c[read])
            entry["below_low_coverage"] = int((c[read] < low).sum())
            entry["size_buckets"] = dict(sorted(Counter(size_bucket(*sizes[k], buckets)
                                                        for k in np.flatnonzero(sel & ~np.isnan(cov))).items()))
        per_source[src] = entry
    return per_source


# --- tables -----------------------------------------------------------------------------------------
def scores_table(rng: np.random.Generator, n: int, column: str, levels: int = 0, lo: float = 0.0,
                 hi: float = 1.0) -> pa.Table:
    v = rng.uniform(lo, hi, n).astype(np.float32).astype(np.float64)
    if levels:
        v = np.round(v * levels) / levels       # ties: repeated values
    v[rng.random(n) < 0.1] = np.nan
    return pa.table({"key": [f"k{i}" for i in range(n)], "source": rng.choice(SOURCES, n).tolist(),
                     column: pa.array(v.astype(np.float32), mask=np.isnan(v))})


def ocr_table(rng: np.random.Generator, n: int, lo: float = 0.0, hi: float = 1.0) -> pa.Table:
    f1, cov = (rng.uniform(lo, hi, n).astype(np.float32) for _ in range(2))
    unread = rng.random(n) < 0.2
    no_f1 = rng.random(n) < 0.1
    sides = rng.integers(100, 3000, (n, 2))
    images = [[{"path": "x", "width": int(w), "height": int(h)}] if rng.random() > 0.05 else [] for w, h in sides]
    return pa.table({"key": [f"k{i}" for i in range(n)], "source": rng.choice(SOURCES, n).tolist(), "images": images,
                     OC.F1: pa.array(f1, mask=unread | no_f1), OC.COVERAGE: pa.array(cov, mask=unread),
                     OC.AGREED_WORDS: pa.array(rng.integers(0, 9, n), pa.int32())})


def grounding_table(rng: np.random.Generator, n: int) -> pa.Table:
    codes = [None, "unpadded", "order", "unpadded,range", "range,range"]
    return pa.table({"key": [f"k{i}" for i in range(n)],
                     "grounding_problems": [codes[i] for i in rng.integers(0, len(codes), n)],
                     "grounding_negatives": pa.array(rng.integers(0, 3, n) * (rng.random(n) < 0.3), pa.int32())})


def via_partials(stage, table: pa.Table, cuts: list[int], data_cls=InlineData, **kw) -> dict:
    """The stage's summary from partials of the batches `cuts` makes, merged in the executors' tree."""
    edges = [0, *sorted(c % (table.num_rows + 1) for c in cuts), table.num_rows]
    batches = [table.slice(a, b - a) for a, b in zip(edges, edges[1:])]
    return data_cls(batches, **kw).aggregate(stage.summary_partial, stage.summarize, stage.summary_merge)


# --- equal to the row-per-sample summaries ----------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 400), cuts=st.lists(st.integers(0, 10_000), max_size=40),
       levels=st.sampled_from([0, 5, 100]))
def test_score_summaries_equal_the_row_per_sample_ones(seed, n, cuts, levels):
    rng = np.random.default_rng(seed)
    clip = make("clip_score", backend="label_text_similarity")
    table = scores_table(rng, n, "clip_score", levels)
    got = via_partials(clip, table, cuts)["clip_score"]
    assert got["per_source"] == old_scores(table, "clip_score", (5, 25, 50, 75, 95))
    overall = old_scores(table.set_column(1, "source", pa.array(["all"] * n, pa.string())), "clip_score",
                         (5, 25, 50, 75, 95))
    assert got["overall"] == overall.get("all", {"scored": 0, "unscored": 0})

    nsfw = make("nsfw_filter")
    table = scores_table(rng, n, "nsfw_score", levels)
    want = {s: {k: v for k, v in e.items() if k not in ("unscored", "mean")}
            for s, e in old_scores(table, "nsfw_score", (50, 90, 99)).items()}
    assert via_partials(nsfw, table, cuts)["nsfw_score"]["per_source"] == want

    mllm = make("mllm_score", backend="scripted")
    table = scores_table(rng, n, "mllm_score", levels)
    sources, vals = table.column("source").to_pylist(), table.column("mllm_score").to_numpy(zero_copy_only=False)
    want = {}
    for src in sorted(set(sources)):
        v = np.asarray([x for s, x in zip(sources, vals) if s == src and not np.isnan(x)], dtype=np.float64)
        if v.size:
            want[src] = {"scored": int(v.size), "mean": round(float(v.mean()), 3), "p50": float(np.percentile(v, 50))}
    assert via_partials(mllm, table, cuts)["by_source"] == want


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 300), cuts=st.lists(st.integers(0, 10_000), max_size=40))
def test_ocr_and_grounding_summaries_equal_the_row_per_sample_ones(seed, n, cuts):
    rng = np.random.default_rng(seed)
    ocr = make("ocr")
    table = ocr_table(rng, n)
    got = via_partials(ocr, table, cuts)["ocr"]
    assert got["per_source"] == old_ocr(table, ocr.config.low_coverage, ocr.config.size_buckets)
    assert got["engines"] == list(ocr.config.engines) and got["low_coverage"] == ocr.config.low_coverage

    table = grounding_table(rng, n)
    counts: Counter[str] = Counter()
    for v in table.column("grounding_problems").to_pylist():
        if v:
            counts.update(v.split(","))
    want = {"kept_with_problems": dict(sorted(counts.items()))} if counts else {}
    assert via_partials(make("grounding_check"), table, cuts) == want
    added = table.column("grounding_negatives").to_pylist()
    assert via_partials(make("grounding_negatives", vocabulary=["cat"]), table, cuts) == {
        "negative_turns_added": sum(added), "samples_with_negatives": sum(1 for v in added if v)}


def test_past_the_exact_limit_percentiles_are_within_the_stated_error(monkeypatch):
    """Rounded to MANTISSA_BITS bits past EXACT_LIMIT values: within 2**-(bits+1) of the value."""
    monkeypatch.setattr(K, "EXACT_LIMIT", 500)
    rng = np.random.default_rng(3)
    table = scores_table(rng, 5000, "clip_score", lo=-3.0, hi=40.0)
    clip = make("clip_score", backend="label_text_similarity")
    got = via_partials(clip, table, list(rng.integers(0, 5000, 60)))["clip_score"]["per_source"]
    ref = old_scores(table, "clip_score", (5, 25, 50, 75, 95))
    bound = 2.0 ** -(K.MANTISSA_BITS + 1)
    for src, entry in ref.items():
        assert got[src]["scored"] == entry["scored"] and got[src]["unscored"] == entry["unscored"]
        for name in ("p5", "p25", "p50", "p75", "p95", "mean"):
            assert abs(got[src][name] - entry[name]) <= bound * 40.0 + 1e-4, (src, name)
    # the same for any batching: whether a group is rounded depends on its total only
    again = via_partials(clip, table, list(rng.integers(0, 5000, 7)))["clip_score"]["per_source"]
    assert again == got


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=50))
def test_rounding_is_idempotent_and_bounded(values):
    v = np.asarray(values, dtype=np.float64)
    r = K.round_values(v)
    assert np.array_equal(K.round_values(r), r)
    assert np.all(np.abs(r - v) <= np.abs(v) * 2.0 ** -(K.MANTISSA_BITS + 1))


# --- the driver holds O(groups x bins), never O(rows) -------------------------------------------------------
class CappedDriver(InlineData):
    """GlobalData whose driver may receive at most `limit` rows of partials (like test_global_steps'
    BoundedDriver), after the executors' tree merge."""

    def __init__(self, tables, limit: int):
        super().__init__(tables)
        self.limit = limit

    def aggregate(self, partial, combine, merge=None):
        def capped(parts):
            assert parts.num_rows <= self.limit, f"the driver received {parts.num_rows} rows of partials"
            return combine(parts)
        return InlineData.aggregate(self, partial, capped, merge)


ROWS, LIMIT = 24_000, 6_000


@pytest.mark.parametrize("family", ["count_tokens", "grounding_check", "grounding_negatives", "clip_score",
                                    "nsfw_filter", "mllm_score", "ocr"])
def test_every_summary_family_runs_on_a_row_capped_driver(family, monkeypatch):
    """ROWS kept rows in 400-row batches; the driver fails past LIMIT rows of merged partials (scores
    concentrate in [0.6, 0.61): 82 bins a group once rounded; 60 batches, so the tree merges them). The default partial (every kept row)
    trips the same cap."""
    monkeypatch.setattr(K, "EXACT_LIMIT", 1000)
    rng = np.random.default_rng(5)
    stage, table = {
        "count_tokens": lambda: (make("count_tokens"), pa.table({"num_tokens": rng.integers(10, 300, ROWS),
                                                                 "text_tokens": rng.integers(0, 10, ROWS)})),
        "grounding_check": lambda: (make("grounding_check"), grounding_table(rng, ROWS)),
        "grounding_negatives": lambda: (make("grounding_negatives", vocabulary=["cat"]), grounding_table(rng, ROWS)),
        "clip_score": lambda: (make("clip_score", backend="label_text_similarity"),
                               scores_table(rng, ROWS, "clip_score", lo=0.6, hi=0.61)),
        "nsfw_filter": lambda: (make("nsfw_filter"), scores_table(rng, ROWS, "nsfw_score", lo=0.6, hi=0.61)),
        "mllm_score": lambda: (make("mllm_score", backend="scripted"), scores_table(rng, ROWS, "mllm_score", lo=0.6, hi=0.61)),
        "ocr": lambda: (make("ocr"), ocr_table(rng, ROWS, lo=0.6, hi=0.61)),
    }[family]()
    cuts = list(range(400, ROWS, 400))
    assert via_partials(stage, table, cuts, CappedDriver, limit=LIMIT)
    with pytest.raises(AssertionError, match="the driver received"):
        edges = [0, *cuts, ROWS]
        CappedDriver([table.slice(a, b - a) for a, b in zip(edges, edges[1:])], LIMIT).aggregate(
            lambda t: t, stage.summarize, None)


def test_the_inline_tree_hands_the_driver_at_most_fan_in_partials():
    seen = []
    parts = [pa.table({"v": [i]}) for i in range(300)]
    total = InlineData(parts).aggregate(lambda t: t, lambda t: (seen.append(t.num_rows), t)[1],
                                        lambda t: pa.table({"v": [sum(t.column("v").to_pylist())]}))
    assert len(seen) == 1 and seen[0] <= COMBINE_FAN_IN
    assert sum(total.column("v").to_pylist()) == sum(range(300))


def test_ray_merges_the_summary_partials_on_the_workers_in_a_tree(tmp_path):
    """20 files (20 blocks): the workers merge the partials down to at most COMBINE_FAN_IN, and the
    stage's summary on Ray equals the inline one, for kept rows selected by the runner's filter."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from curate.base import records as R
    from pipelines.engine.inline_executor import InlineExecutor
    from pipelines.engine.ray_data import RayData, RayExecutor
    rng = np.random.default_rng(9)
    files = []
    for i in range(20):
        t = scores_table(rng, 300, "clip_score", levels=50)
        t = t.append_column(R.STATUS, pa.array(rng.choice([R.KEPT, R.REJECTED], t.num_rows).tolist()))
        t = t.append_column(R.ORDINAL, pa.array(np.arange(i * 300, i * 300 + 300)))
        files.append(str(tmp_path / f"part-{i:03d}.parquet"))
        pq.write_table(t, files[-1])
    stage = make("clip_score", backend="label_text_similarity")
    cols, kept = ["source", "clip_score", "key", R.ORDINAL], pc.field(R.STATUS) == R.KEPT
    want = stage.summarize(InlineExecutor().summary_parts(stage, files, cols, kept))
    executor = RayExecutor(num_cpus=2)
    try:
        assert stage.summarize(executor.summary_parts(stage, files, cols, kept)) == want
        seen = []
        data = RayData(executor._read(files, ["clip_score"]))
        total = data.aggregate(lambda b: pa.table({"rows": [b.num_rows]}), lambda t: (seen.append(t.num_rows), t)[1],
                               lambda t: pa.table({"rows": [sum(t.column("rows").to_pylist())]}))
        assert seen[0] <= COMBINE_FAN_IN and sum(total.column("rows").to_pylist()) == 20 * 300
    finally:
        executor.close()
