"""The stage contract: verdict forms, BadSample quarantine vs bugs that fail the run, and the accounting guard."""
from __future__ import annotations


import pyarrow as pa
import pytest

from curate.base import records as R
from curate.base import BadSample, BatchResult, Drop, Stage, StageContext, build, register, split_drops, unregister
from curate.base.inline import AccountingError, StageError, apply_batch, with_bookkeeping


def table(texts):
    rows = [{"key": f"s/{i}", "source": "s", "category": "caption", "text": t, R.ORDINAL: i, R.STATUS: R.KEPT}
            for i, t in enumerate(texts)]
    return R.rows_to_table(rows)


class LengthFilter(Stage):
    """A plugin-sized filter: one ``Drop`` or None per row, ``split_drops`` for the result."""
    name = "test_length"

    def verdict(self, t):
        if t == "boom":
            raise RuntimeError("model exploded")
        if t == "corrupt":
            raise BadSample("text:corrupt", "planted")
        if t == "unreachable":
            return Drop("text:unreachable", "planted", R.QUARANTINED)
        if len(t) < 3:
            return Drop("too_short", f"{len(t)} chars")
        if t == "no-detail":
            return Drop("test_length")
        return None

    def process_batch(self, batch):
        return split_drops(batch, [self.verdict(t) for t in batch.column("text").to_pylist()])


def test_drop_forms_and_bad_sample_quarantine():
    result = LengthFilter().run(table(["hello", "hi", "corrupt", "no-detail", "unreachable", "world"]), batch_size=6)
    assert sorted(result.kept.column("text").to_pylist()) == ["hello", "world"]
    dropped = {r["text"]: (r[R.STATUS], r[R.REASON], r[R.DETAIL]) for r in result.dropped.to_pylist()}
    assert dropped["hi"] == ("rejected", "too_short", "2 chars")
    assert dropped["no-detail"] == ("rejected", "test_length", None)
    assert dropped["unreachable"] == ("quarantined", "text:unreachable", "planted")
    assert dropped["corrupt"] == ("quarantined", "text:corrupt", "planted")


def test_split_drops_refuses_a_wrong_count_or_status():
    t = table(["a", "b"])
    with pytest.raises(ValueError, match="1 verdicts for 2 rows"):
        split_drops(t, [None])
    with pytest.raises(ValueError, match="unknown status"):
        split_drops(t, [None, Drop("x", status="kept")])


def test_a_bug_fails_the_run_naming_stage_and_row():
    with pytest.raises(StageError, match=r"test_length.*key 's/2'.*RuntimeError: model exploded"):
        LengthFilter().run(table(["hello", "hi", "boom", "world"]), batch_size=4)


def test_tolerated_errors_are_quarantined_as_errors():
    stage = LengthFilter(context=StageContext(max_error_fraction=0.5))
    result = stage.run(table(["hello", "boom", "world"]), batch_size=3)
    (row,) = result.dropped.to_pylist()
    assert (row[R.STATUS], row[R.REASON]) == ("quarantined", "error:RuntimeError")
    assert "model exploded" in row[R.DETAIL]


class MisspeltColumn(Stage):
    name = "test_misspelt"

    def process_batch(self, batch):
        batch.column("txet")  # a bug: KeyError on every batch
        return BatchResult.keep_all(batch)


def test_a_misspelt_column_fails_instead_of_quarantining_everything():
    with pytest.raises(StageError, match="test_misspelt"):
        MisspeltColumn().run(table(["a", "b", "c"]))


class LosesRows(Stage):
    name = "test_loses_rows"

    def process_batch(self, batch):
        return BatchResult.keep_all(batch.slice(1))


def test_a_stage_that_loses_rows_is_caught():
    with pytest.raises(AccountingError):
        from curate.base.inline import check_accounting
        t = table(["a", "b"])
        check_accounting("x", t, LosesRows().process_batch(t))
    # in the adapter, losing rows is a bug in the stage: the run fails
    with pytest.raises(AccountingError):
        apply_batch(LosesRows(), table(["a", "b"]))


class AddsScore(Stage):
    name = "test_adds_score"
    adds = {"clip_score": pa.float32()}
    global_columns = ("clip_score",)

    def process_batch(self, batch):
        scores = pa.array([float(len(t)) for t in batch.column("text").to_pylist()], type=pa.float32())
        return BatchResult.keep_all(batch.append_column("clip_score", scores))

    def decide(self, t):
        best = max(t.column("clip_score").to_pylist())
        keep = [s == best for s in t.column("clip_score").to_pylist()]
        return pa.table({R.ORDINAL: t.column(R.ORDINAL),
                         R.STATUS: [R.KEPT if k else R.REJECTED for k in keep],
                         R.REASON: [None if k else "not_best" for k in keep],
                         R.DETAIL: [None] * t.num_rows})


def test_global_step_sees_batch_columns_and_its_decisions_apply():
    result = AddsScore().run(table(["a", "abc", "ab"]), batch_size=1)
    assert result.kept.column("text").to_pylist() == ["abc"]
    assert result.kept.column("clip_score").to_pylist() == [3.0]
    assert sorted(result.dropped.column(R.REASON).to_pylist()) == ["not_best", "not_best"]


def test_notebook_tables_without_bookkeeping_columns_work():
    t = pa.table({"key": ["a", "b"], "source": ["s", "s"], "category": ["caption"] * 2, "text": ["hello", "x"]})
    t = with_bookkeeping(t)
    assert LengthFilter().run(t).kept.column("key").to_pylist() == ["a"]


def test_build_rejects_unknown_settings():
    with pytest.raises(ValueError, match="unknown setting"):
        build("mixture", {"ratios": {"a": 1.0}, "colour": "red"})
    with pytest.raises(KeyError, match="unknown stage"):
        build("no_such_stage")


def test_register_refuses_a_second_class_under_the_same_name():
    @register
    class A(Stage):
        name = "test_dup_name"

    try:
        with pytest.raises(ValueError, match="registered twice"):
            @register
            class B(Stage):
                name = "test_dup_name"
    finally:
        unregister("test_dup_name")


def test_one_bad_sample_for_readers_and_stages_and_its_status_is_kept():
    from curate.readers import sources
    from curate.media.video import video_ref_from_bytes
    assert sources.BadSample is BadSample
    with pytest.raises(BadSample) as err:               # media code raises the same class a stage may raise
        video_ref_from_bytes(b"not a video", "x.mp4", None, 0)
    assert err.value.status == R.QUARANTINED and err.value.reason.startswith("video:")

    class RejectsShort(Stage):
        name = "test_rejects_short"

        def process_batch(self, batch):
            if any(len(t) < 3 for t in batch.column("text").to_pylist()):
                raise BadSample("text:short", "planted", R.REJECTED)
            return BatchResult.keep_all(batch)

    result = RejectsShort().run(table(["hello", "hi", "world"]), batch_size=3)
    assert [(r["text"], r[R.STATUS], r[R.REASON]) for r in result.dropped.to_pylist()] == [("hi", R.REJECTED, "text:short")]
