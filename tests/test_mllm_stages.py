"""mllm_score and recaption on real code paths: the tiny random Qwen2-VL (transformers) and the
scripted engine. Tests named *_code_path prove the code path (prompting, batching, constrained
decoding, parsing, thresholds, accounting, provenance) — the tiny model's scores mean nothing."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import corpus  # noqa: E402

import curate  # noqa: E402
from curate.base import records as R  # noqa: E402
from curate.base import build  # noqa: E402
from curate.mllm.parsing import is_complete_score  # noqa: E402
from demo_data.tiny_mllm import build_tiny_qwen2vl  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_qwen2vl(tmp_path_factory.mktemp("models") / "tiny-qwen2vl"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> pa.Table:
    root = corpus.caption_corpus(tmp_path_factory.mktemp("corpus"), n_files=2, per_file=3)
    return curate.read_source(str(root / "*.tar"), format="webdataset", source="photos").kept


def file_ref(path: Path, w: int, h: int) -> dict:
    return {"uri": str(path), "member": None, "offset": -1, "size": -1, "width": w, "height": h, "format": "JPEG"}


def with_bad_images(table: pa.Table, tmp: Path) -> pa.Table:
    """Rows 0-3 get: corrupt bytes, a missing file, a 600x2 strip (aspect 300), a good JPEG."""
    (tmp / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp / "strip.jpg").write_bytes(corpus.jpeg(600, 2))
    (tmp / "good.jpg").write_bytes(corpus.jpeg(120, 90))
    refs = table.column("images").to_pylist()
    refs[0] = [file_ref(tmp / "corrupt.jpg", 10, 10)]
    refs[1] = [file_ref(tmp / "missing.jpg", 10, 10)]
    refs[2] = [file_ref(tmp / "strip.jpg", 600, 2)]
    refs[3] = [file_ref(tmp / "good.jpg", 120, 90)]
    return table.set_column(table.schema.get_field_index("images"), "images",
                            pa.array(refs, type=table.schema.field("images").type))


def reasons(res) -> dict[str, str]:
    return dict(zip(res.dropped.column("key").to_pylist(), res.dropped.column(R.REASON).to_pylist()))


# --- transformers, tiny Qwen2-VL ----------------------------------------------------------------------
def test_tiny_model_build_is_deterministic_and_offline(tiny_model, tmp_path):
    from demo_data.tiny_mllm import SAMPLE_MODEL_SUBDIR, build_sample_model
    again = build_sample_model(tmp_path / "sample")
    assert again == tmp_path / "sample" / SAMPLE_MODEL_SUBDIR
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "tokenizer.json"):
        assert (again / name).read_bytes() == (Path(tiny_model) / name).read_bytes(), name
    assert json.loads((again / "config.json").read_text())["model_type"] == "qwen2_vl"



def test_score_stage_four_metrics_end_to_end_code_path(tiny_model, photos):
    stage = build("mllm_score", {"backend": "transformers", "model": tiny_model, "device": "cpu",
                                 "metrics": ["itm", "odf", "ctq", "su"], "primary_metric": "su"})
    photos = photos.slice(0, 4)
    res = stage.run(photos)
    assert res.kept.num_rows + res.dropped.num_rows == photos.num_rows
    assert res.dropped.num_rows == 0                   # no threshold: digits decoding always parses
    for row in res.kept.select(["mllm_score", "mllm_scores", "mllm_provenance"]).to_pylist():
        scores = row["mllm_scores"]
        assert all(is_complete_score(str(scores[m])) for m in ("itm", "odf", "ctq", "su"))
        assert scores["custom"] is None and row["mllm_score"] == scores["su"]
        prov = json.loads(row["mllm_provenance"])
        assert prov["model"] == tiny_model and prov["prompt_versions"]["su"] == "mlm-filter-v2/2024"
    assert len(set(res.kept.column("mllm_score").to_pylist())) > 1   # answers depend on the input


def test_threshold_rejects_below_and_keeps_at_threshold_code_path(tiny_model, photos):
    base = build("mllm_score", {"backend": "transformers", "model": tiny_model, "device": "cpu"}).run(photos)
    scores = sorted(base.kept.column("mllm_score").to_pylist())
    cut = scores[len(scores) // 2]
    res = build("mllm_score", {"backend": "transformers", "model": tiny_model, "device": "cpu",
                               "thresholds": {"su": cut}}).run(photos)
    assert sorted(res.kept.column("mllm_score").to_pylist()) == [s for s in scores if s >= cut]
    assert set(res.dropped.column(R.REASON).to_pylist()) <= {"mllm:su_below_threshold"}
    assert all(d.startswith("su ") and f"< {cut:g}" in d for d in res.dropped.column(R.DETAIL).to_pylist())


def test_bad_images_are_isolated_per_sample_code_path(tiny_model, photos, tmp_path):
    table = with_bad_images(photos, tmp_path)
    keys = table.column("key").to_pylist()
    res = build("mllm_score", {"backend": "transformers", "model": tiny_model, "device": "cpu"}).run(table)
    got = reasons(res)
    assert got[keys[0]] == "image:corrupt"
    assert got[keys[1]] == "image:unreadable:missing_file"
    assert got[keys[2]] == "image:unsupported_by_model"
    status = dict(zip(res.dropped.column("key").to_pylist(), res.dropped.column(R.STATUS).to_pylist()))
    assert status[keys[1]] == R.QUARANTINED and status[keys[0]] == R.REJECTED
    assert res.kept.num_rows == table.num_rows - 3 and keys[3] in res.kept.column("key").to_pylist()


def test_scores_do_not_depend_on_engine_batch_size_code_path(tiny_model, photos):
    runs = [build("mllm_score", {"backend": "transformers", "model": tiny_model, "device": "cpu",
                                 "batch_size": bs}).run(photos, batch_size=stage_bs)
            for bs, stage_bs in ((1, 4), (8, 64))]
    a, b = (r.kept.sort_by("_ordinal").select(["key", "mllm_scores"]).to_pylist() for r in runs)
    assert a == b


def test_digit_grammar_holds_in_real_generate_code_path(tiny_model):
    """Greedy generate under the grammar on the real model: every answer is "0".."100"."""
    from PIL import Image
    from curate.mllm import prompts as P
    from curate.mllm.backend_base import DecodeSpec, GenerationRequest
    from curate.mllm.backend_hf import TransformersBackend
    engine = TransformersBackend(tiny_model, device="cpu", batch_size=4)
    engine.load()
    reqs = [GenerationRequest(Image.new("RGB", (60 + 7 * i, 50), (i * 20, 90, 200 - i * 9)),
                              P.render_chat(P.metric_instruction("itm", f"caption {i}"), "qwen2_vl", " "))
            for i in range(6)]
    free = engine.generate(reqs, DecodeSpec(3))
    constrained = engine.generate(reqs, DecodeSpec(3, score_digits=True))
    assert all(is_complete_score(g.text) for g in constrained)
    assert not all(is_complete_score(g.text) for g in free)      # the random model writes words unconstrained


def test_llava_style_model_scores_end_to_end_code_path(tmp_path, photos):
    from demo_data.tiny_mllm import build_tiny_llava
    model = str(build_tiny_llava(tmp_path / "tiny-llava"))
    stage = build("mllm_score", {"backend": "transformers", "model": model, "device": "cpu", "metrics": ["itm"]})
    res = stage.run(photos.slice(0, 3))
    assert stage.engine.family == "llava" and res.kept.num_rows == 3
    assert all(is_complete_score(str(int(v))) for v in res.kept.column("mllm_score").to_pylist())


def test_digit_grammar_processor_allows_100_and_nothing_else():
    import torch
    from curate.mllm.backend_hf import DigitGrammar
    digit_ids = {100 + d: str(d) for d in range(10)}
    grammar = DigitGrammar(prompt_len=1, digit_ids=digit_ids, stop_ids=[7])
    scores = torch.zeros(3, 120)
    ids = torch.tensor([[5, 101, 100], [5, 101, 100], [5, 102, 103]])    # "10", "10", "23"
    out = grammar(ids[:, :3], scores.clone())
    allowed = [sorted(torch.nonzero(row > float("-inf")).flatten().tolist()) for row in out]
    assert allowed[0] == [7, 100] and allowed[2] == [7]


# --- scripted engine: parsing, accounting, top fraction, batching -------------------------------------
def scripted(**settings):
    return {"backend": "scripted", **settings}


def test_unparseable_answers_are_rejected_with_reason_and_raw_text(photos):
    texts = photos.column("text").to_pylist()
    answers = {texts[0]: "eighty", texts[1]: "100\nfits well", texts[2]: "84", texts[3]: "", texts[4]: "250"}
    res = build("mllm_score", scripted(scripted={"answers": answers, "default": "90"},
                                       thresholds={"su": 85})).run(photos)
    keys = photos.column("key").to_pylist()
    got = reasons(res)
    assert got[keys[0]] == "mllm:unparseable:su:no_integer"
    assert got[keys[2]] == "mllm:su_below_threshold"
    assert got[keys[3]] == "mllm:unparseable:su:empty"
    assert got[keys[4]] == "mllm:unparseable:su:out_of_range"
    detail = dict(zip(res.dropped.column("key").to_pylist(), res.dropped.column(R.DETAIL).to_pylist()))
    assert "'eighty'" in detail[keys[0]]
    kept = dict(zip(res.kept.column("key").to_pylist(), res.kept.column("mllm_score").to_pylist()))
    assert kept[keys[1]] == 100.0                       # "100" is 100, not "10"


def test_engine_refusal_quarantines_only_that_sample(photos, tmp_path):
    table = with_bad_images(photos, tmp_path)
    res = build("mllm_score", scripted(scripted={"refuse_sizes": [120], "default": "90"})).run(table)
    key3 = table.column("key").to_pylist()[3]
    dropped = {k: (s, r) for k, s, r in zip(*(res.dropped.column(c).to_pylist() for c in ("key", R.STATUS, R.REASON)))}
    assert dropped[key3] == (R.QUARANTINED, "engine:rejected_input")
    assert res.kept.num_rows == table.num_rows - 4


def test_all_metric_prompts_of_a_batch_go_to_the_engine_in_one_call_image_major(photos):
    stage = build("mllm_score", scripted(metrics=["itm", "su"]))
    stage.ensure_setup()
    stage.run(photos, batch_size=5)
    assert stage.engine.calls == [10, 2]                 # 6 rows: batches of 5 and 1 rows x 2 metrics
    reqs = stage.requests_for(object(), "a cat")
    assert [r.prompt.count("Text Caption: a cat") for r in reqs] == [1, 1] and "image text matching" in reqs[0].prompt


def test_top_fraction_per_source_and_determinism_across_batch_sizes(photos):
    n = photos.num_rows
    photos = photos.set_column(photos.schema.get_field_index("source"), "source",
                               pa.array(["a"] * (n // 2) + ["b"] * (n - n // 2), pa.string()))
    runs = [build("mllm_score", scripted(top_fraction=0.5)).run(photos, batch_size=bs) for bs in (1, 4, 64)]
    tables = [pa.concat_tables([r.kept, r.dropped]).sort_by("_ordinal") for r in runs]
    assert tables[0].equals(tables[1]) and tables[1].equals(tables[2])
    res = runs[0]
    assert res.kept.column("source").to_pylist().count("a") == 2 and res.kept.num_rows == 4
    assert set(res.dropped.column(R.REASON).to_pylist()) == {"mllm:top_fraction"}
    for src in ("a", "b"):
        kept = [r["mllm_score"] for r in res.kept.to_pylist() if r["source"] == src]
        dropped = [r["mllm_score"] for r in res.dropped.to_pylist() if r["source"] == src]
        assert len(kept) == 2 and min(kept) >= max(dropped)


def test_samples_without_image_or_text_pass_unscored(photos):
    table = photos.set_column(photos.schema.get_field_index("text"), "text",
                              pa.array([None] + photos.column("text").to_pylist()[1:], pa.string()))
    res = build("mllm_score", scripted(thresholds={"su": 99})).run(table)
    kept = res.kept.to_pylist()
    assert [r["mllm_score"] for r in kept] == [None] and kept[0]["key"] == photos.column("key")[0].as_py()


@pytest.mark.parametrize("settings, message", [
    ({"backend": "transformers"}, "model: required"),
    ({"backend": "scripted", "metrics": ["xyz"]}, "metrics: unknown"),
    ({"backend": "scripted", "metrics": ["custom"]}, "custom_prompt"),
    ({"backend": "scripted", "thresholds": {"itm": 50}}, "thresholds: metric 'itm'"),
    ({"backend": "scripted", "max_new_tokens": 2}, "needs >= 3"),
    ({"backend": "scripted", "top_fraction": 0}, "top_fraction"),
])
def test_bad_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        build("mllm_score", settings)


# --- recaption ------------------------------------------------------------------------------------------
def test_recaption_low_relevance_keeps_original_with_provenance_code_path(tiny_model, photos):
    scored = build("mllm_score", scripted()).run(photos).kept          # score = caption length
    lengths = scored.column("mllm_score").to_pylist()
    threshold = sorted(lengths)[len(lengths) // 2]
    res = build("recaption", {"backend": "transformers", "model": tiny_model, "device": "cpu",
                              "threshold": threshold, "max_new_tokens": 8, "rescore": True}).run(scored)
    assert res.dropped.num_rows == 0
    for before, row in zip(scored.to_pylist(), res.kept.sort_by("_ordinal").to_pylist()):
        if before["mllm_score"] >= threshold:
            assert row["text"] == before["text"] and row["caption_provenance"] is None
            continue
        prov = json.loads(row["caption_provenance"])
        assert prov["model"] == tiny_model and prov["prompt_version"] == "mmcurate-recaption-v1"
        assert prov["relevance"] == before["mllm_score"] and prov["relevance_column"] == "mllm_score"
        if prov["status"] == "recaptioned":
            assert row["caption_original"] == before["text"] and row["text"] != before["text"]
            assert is_complete_score(str(prov["rescore"]["new"])) and prov["rescore"]["metric"] == "itm"


def test_recaption_by_clip_score_and_empty_generation_is_recorded(photos):
    n = photos.num_rows
    table = photos.append_column("clip_score", pa.array([0.1] * (n // 2) + [None] * (n - n // 2), pa.float32()))
    res = build("recaption", scripted(relevance_column="clip_score", threshold=0.2,
                                      scripted={"default": "  "})).run(table)
    rows = res.kept.sort_by("_ordinal").to_pylist()
    assert [json.loads(r["caption_provenance"])["status"] for r in rows[: n // 2]] == ["empty_generation"] * (n // 2)
    assert all(r["caption_provenance"] is None for r in rows[n // 2:])
    assert [r["text"] for r in rows] == photos.column("text").to_pylist()


def test_recaption_without_its_relevance_column_is_a_recipe_error(photos):
    with pytest.raises(ValueError, match="run clip_score before recaption"):
        build("recaption", scripted(relevance_column="clip_score", threshold=0.2)).process_batch(photos)
