"""The dedup stages on real code paths: planted near-duplicates (precision/recall >= 0.95),
determinism under batch size and row order, accounting, survivors, exact path, blank-image cap."""
from __future__ import annotations

import io
import json
import random

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curate.base import records as R
from curate import base as S
from demo_data import planted_duplicates as PL
def rows_table(rows: list[dict]) -> pa.Table:
    base = {"source": "s", "category": "caption", R.STATUS: R.KEPT}
    full = [{**base, R.ORDINAL: i, **r} for i, r in enumerate(rows)]
    return R.rows_to_table(full)


def groups_of(result) -> dict[str, tuple[str, str]]:
    """key -> (status, dup_group) for every row of a stage result."""
    out = {}
    for part in (result.kept, result.dropped):
        for r in part.select(["key", R.STATUS, "dup_group"]).to_pylist():
            out[r["key"]] = (r[R.STATUS], r["dup_group"])
    return out


@pytest.fixture(scope="module")
def planted_images(tmp_path_factory):
    rows = PL.planted_images()
    refs = PL.write_images(rows, tmp_path_factory.mktemp("planted"))
    return rows, rows_table([{"key": r.key, "images": [ref], "text": None} for r, ref in zip(rows, refs)])


@pytest.fixture(scope="module")
def planted_captions():
    rows = PL.planted_captions()
    return rows, rows_table([{"key": r.key, "text": r.text} for r in rows])


def test_text_dedup_planted_precision_and_recall(planted_captions):
    rows, table = planted_captions
    result = S.build("text_dedup").run(table)
    got = groups_of(result)
    precision, recall = PL.pair_scores([r.truth for r in rows], [got[r.key][1] for r in rows])
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    assert result.kept.num_rows + result.dropped.num_rows == table.num_rows


def test_image_dedup_planted_precision_and_recall(planted_images):
    rows, table = planted_images
    stage = S.build("image_dedup")
    result = stage.run(table, batch_size=50)
    got = groups_of(result)
    precision, recall = PL.pair_scores([r.truth for r in rows], [got[r.key][1] for r in rows])
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    # the survivor is the largest copy: the original or the 4%-crop never loses to the 60% resize
    kept = set(result.kept.column("key").to_pylist())
    assert not any(k.endswith("/resized_60") for k in kept)
    rep = result.report["dedup"]
    assert rep["groups"] == len({r.truth for r in rows if r.kind != "control"})
    assert rep["removed"] == result.dropped.num_rows


def test_groups_and_survivors_do_not_depend_on_batch_size_or_row_order(planted_captions):
    rows, table = planted_captions
    first = groups_of(S.build("text_dedup").run(table, batch_size=1000))
    order = list(range(table.num_rows))
    random.Random(3).shuffle(order)
    shuffled = table.take(pa.array(order))
    for batch_size in (7, 64):
        assert groups_of(S.build("text_dedup").run(shuffled, batch_size=batch_size)) == first


def test_image_groups_do_not_depend_on_batch_size(planted_images):
    _, table = planted_images
    subset = table.slice(0, 60)
    a = groups_of(S.build("image_dedup").run(subset, batch_size=60))
    b = groups_of(S.build("image_dedup").run(subset.take(pa.array(list(range(59, -1, -1)))), batch_size=9))
    assert a == b


def test_exact_dedup_hashes_normalised_text_and_image_bytes_in_order(tmp_path):
    def img(color):
        buf = io.BytesIO()
        Image.fromarray(np.full((20, 30, 3), color, np.uint8)).save(buf, format="PNG")
        p = tmp_path / f"{color}.png"
        p.write_bytes(buf.getvalue())
        return R.image_ref(str(p), width=30, height=20)
    a, b = img(10), img(200)
    table = rows_table([
        {"key": "s/1", "text": "A cat.", "images": [a, b]},
        {"key": "s/2", "text": "  a CAT. ", "images": [a, b]},       # same after NFKC/case/space
        {"key": "s/3", "text": "A cat.", "images": [b, a]},           # other image order: not a duplicate
        {"key": "s/4", "text": "A cat!", "images": [a, b]},           # punctuation counts for exact
        {"key": "s/5", "text": None, "images": []},                   # no content: never grouped
        {"key": "s/6", "text": None, "images": []},
    ])
    result = S.build("exact_dedup").run(table)
    dropped = result.dropped.to_pylist()
    assert [(r["key"], r[R.REASON]) for r in dropped] == [("s/2", "dedup:exact")]
    assert dropped[0][R.DETAIL].startswith("duplicate of s/1") and dropped[0]["dup_group_size"] == 2
    sizes = dict(zip(result.kept.column("key").to_pylist(), result.kept.column("dup_group_size").to_pylist()))
    assert sizes == {"s/1": 2, "s/3": 1, "s/4": 1, "s/5": 1, "s/6": 1}


def test_short_texts_take_the_exact_path():
    table = rows_table([{"key": "s/a", "text": "Cat!"}, {"key": "s/b", "text": "cat"}, {"key": "s/c", "text": "Cap"},
                        {"key": "s/d", "text": "A cat sitting on the mat"}])
    stage = S.build("text_dedup", {"ngram": 5})
    result = stage.run(table)
    assert result.dropped.column("key").to_pylist() == ["s/b"]      # "cat" == fuzzy("Cat!"); "cap" is not
    assert result.report["dedup"]["short_texts"] == 3


def test_survivor_by_quality_column_then_content_hash():
    rows = [{"key": f"s/{i}", "text": "The same caption about a red bicycle by the sea.", "clip_score": s}
            for i, s in enumerate([0.2, 0.9, 0.5, None])]
    table = rows_table(rows).append_column("clip_score", pa.array([r["clip_score"] for r in rows], pa.float32()))
    best = S.build("text_dedup", {"survivor_by": "clip_score"}).run(table)
    assert best.kept.column("key").to_pylist() == ["s/1"]
    worst = S.build("text_dedup", {"survivor_by": "clip_score", "prefer": "lowest"}).run(table)
    assert worst.kept.column("key").to_pylist() == ["s/0"]                # missing scores never win
    details = worst.dropped.column(R.DETAIL).to_pylist()
    assert all(d.startswith("duplicate of s/0") for d in details)
    with pytest.raises(ValueError, match="no such column"):
        S.build("text_dedup", {"survivor_by": "nope"}).run(table)


def test_blank_images_are_not_near_duplicates_and_the_big_bucket_is_cut(tmp_path):
    refs = []
    for i in range(40):     # 40 different near-flat images: their pHashes are noise and collide
        arr = np.full((64, 64, 3), 60 + i * 4, np.uint8)
        arr[i % 64, :, 0] += 1
        p = tmp_path / f"flat{i}.png"
        Image.fromarray(arr).save(p)
        refs.append(R.image_ref(str(p), width=64, height=64))
    table = rows_table([{"key": f"s/{i:02d}", "images": [r]} for i, r in enumerate(refs)])
    stage = S.build("image_dedup")
    result = stage.run(table)
    assert result.dropped.num_rows == 0 and result.report["dedup"]["flat_images"] == 40
    # with the flat guard off, the noise hashes meet in one bucket, which the cap cuts
    loose = S.build("image_dedup", {"flat_max_std": 0.0, "max_bucket_size": 5, "max_distance": 31,
                                    "bits_per_band": 4})
    assert loose.run(table).report["dedup"]["capped_buckets"] >= 1


def test_unreadable_images_are_dropped_with_a_reason(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9")
    table = rows_table([{"key": "s/missing", "images": [R.image_ref(str(tmp_path / "nope.jpg"))]},
                        {"key": "s/bad", "images": [R.image_ref(str(bad), width=10, height=10)]}])
    result = S.build("image_dedup").run(table)
    got = {r["key"]: (r[R.STATUS], r[R.REASON]) for r in result.dropped.to_pylist()}
    assert got == {"s/missing": ("quarantined", "image:unreadable:missing_file"), "s/bad": ("rejected", "image:corrupt")}


def test_out_of_scope_categories_pass_untouched():
    table = rows_table([{"key": "s/1", "text": "What is shown in this picture of the harbour?", "category": "vqa"},
                        {"key": "s/2", "text": "What is shown in this picture of the harbour?", "category": "vqa"}])
    result = S.build("text_dedup").run(table)
    assert result.kept.num_rows == 2
    assert S.build("text_dedup", {"categories": []}).run(table).kept.num_rows == 1


def test_dedup_recipe_puts_the_chelsea_pair_in_one_group_and_resumes(tmp_path):
    from pipelines.runner import run
    from demo_data.sample import build
    build(tmp_path / "data/sample")
    import os
    cwd = os.getcwd()
    recipe = os.path.join(cwd, "recipes/dedup.yaml")
    os.chdir(tmp_path)
    try:
        result = run(recipe, out=tmp_path / "out", executor="inline", progress=False)
        manifest = (tmp_path / "out/shards/manifest.json").read_bytes()
        run(recipe, out=tmp_path / "out", executor="inline", progress=False)
        again = json.loads((tmp_path / "out/run.json").read_text())
        import shutil
        for d in ("04_image_dedup", "05_text_dedup", "08_shards"):   # as if killed while deduplicating
            shutil.rmtree(tmp_path / "out/stages" / d)
        shutil.rmtree(tmp_path / "out/shards")
        third = run(recipe, out=tmp_path / "out", executor="inline", progress=False)
        third_run = json.loads((tmp_path / "out/run.json").read_text())
    finally:
        os.chdir(cwd)
    assert all(s["resumed"] for s in again["stages"])
    assert [s["resumed"] for s in third_run["stages"]][3:6] == [True, False, False]
    assert third.report["stages"][4]["dedup"] == result.report["stages"][4]["dedup"]
    assert (tmp_path / "out/shards/manifest.json").read_bytes() == manifest
    import pyarrow.parquet as pq
    rejects = pq.read_table(tmp_path / "out/rejects.parquet").to_pylist()
    exact = {r["key"]: r for r in rejects if r["stage"] == "exact_dedup"}
    assert exact["photos/cut-chelsea"][R.DETAIL].startswith("duplicate of photos/chelsea-100")
    stages = {s["name"]: s for s in result.report["stages"]}
    assert stages["exact_dedup"]["dedup"]["groups"] >= 1 and all(s["balanced"] for s in stages.values())
    final = set(result.kept(columns=["key"]).column("key").to_pylist())
    assert len({"photos/chelsea-100", "photos/cut-chelsea"} & final) <= 1
    assert "photos/cut-chelsea" not in final


def test_global_step_gives_the_same_decisions_for_any_batching_and_partitioning(planted_captions, monkeypatch):
    from curate.base.global_data import InlineData
    from curate.base.inline import with_bookkeeping
    from curate.dedup import base as DB
    _, table = planted_captions
    stage = S.build("text_dedup")
    inputs = stage.process_batch(with_bookkeeping(table)).kept
    inputs = inputs.select(["key", R.ORDINAL, *stage.global_columns])
    reports = []

    def decisions(chunk: int, rows_per_partition: int) -> dict:
        monkeypatch.setattr(DB, "ROWS_PER_PARTITION", rows_per_partition)
        chunks = [inputs.slice(i, chunk) for i in range(0, inputs.num_rows, chunk)]
        step = stage.global_step(InlineData(chunks))
        reports.append(step.report)
        got = step.decisions.gather().to_pylist()
        assert sorted(r[R.ORDINAL] for r in got) == list(range(inputs.num_rows))
        return {r[R.ORDINAL]: (r[R.STATUS], r["dup_group"], r["dup_group_size"], r[R.DETAIL]) for r in got}
    first = decisions(inputs.num_rows, 10**6)
    assert decisions(17, 13) == first and decisions(5, 100) == first
    assert reports[-1]["dedup"]["groups"] == 60


def test_exact_groups_are_never_cut_by_the_bucket_cap():
    table = rows_table([{"key": f"s/{i:04d}", "text": "The very same caption, copied many times over."}
                        for i in range(300)])
    stage = S.build("text_dedup", {"max_bucket_size": 10})
    result = stage.run(table, batch_size=64)
    assert result.kept.column("key").to_pylist() == ["s/0000"]          # equal quality and hash: smallest key
    assert result.kept.column("dup_group_size").to_pylist() == [300]
    assert result.report["dedup"]["group_sizes"] == {"300": 1}
    assert result.report["dedup"]["removed_by_source"] == {"s": 299}
