"""The ocr stage with both engines for real (RapidOCR's shipped ONNX models, Tesseract with the
PyPI eng.traineddata) on images rendered here; no engine is mocked."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.base import records as R
from curate.grounding import parse, validate, validate_file
from curate.ocr.engines import EngineResult, engine_factory
from curate.ocr.reading import shrink, size_bucket
from curate.base import build
from demo_data.text_images import DEMO_SPECS, EXPECTED_OCR, TextSpec, build_text_images, render, text_free

pytest.importorskip("rapidocr_onnxruntime")
pytest.importorskip("tesserocr")


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def make_table(tmp: Path, images: dict[str, bytes | None], category: str = "ocr"):
    rows = []
    for i, (key, data) in enumerate(images.items()):
        path = tmp / f"{key}.png"
        if data is not None:
            path.write_bytes(data)
        w, h = (100, 100) if key in ("corrupt", "missing") else Image.open(io.BytesIO(data)).size
        rows.append(R.Sample(key=f"src/{key}", source="src", category=category, text="gt",
                             images=[R.image_ref(str(path), width=w, height=h, format="PNG")], ordinal=i).to_row())
    return R.rows_to_table(rows)


@pytest.fixture(scope="module")
def stage():
    st = build("ocr", {"grounding_output": "conversation"})
    st.ensure_setup()
    return st


@pytest.fixture(scope="module")
def result(stage, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ocr")
    images = {"sign": _png(render(DEMO_SPECS["sign"])), "tilted": _png(render(DEMO_SPECS["tilted"])),
              "blobs": _png(text_free(7)), "corrupt": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "missing": None}
    table = make_table(tmp, images)
    return table, stage.run(table)


def rows_by_key(table):
    return {r["key"].split("/")[1]: r for r in table.to_pylist()}


def test_every_row_is_accounted_for_with_its_reason(result):
    table, res = result
    kept, dropped = rows_by_key(res.kept), rows_by_key(res.dropped)
    assert set(kept) == {"sign", "tilted"}
    assert dropped["blobs"]["_reason"] == "ocr:no_text" and dropped["blobs"]["_status"] == R.REJECTED
    assert dropped["corrupt"]["_reason"] == "image:corrupt"
    assert dropped["missing"]["_reason"] == "image:unreadable:missing_file"
    assert dropped["missing"]["_status"] == R.QUARANTINED
    assert res.kept.num_rows + res.dropped.num_rows == table.num_rows


def test_kept_rows_hold_the_intersection_metrics_and_grounding(result):
    kept = rows_by_key(result[1].kept)
    sign = kept["sign"]
    assert "OPEN" in sign["ocr_text"] and "coffee" in sign["ocr_text"]
    assert [e["engine"] for e in sign["ocr_engine_texts"]] == ["rapidocr", "tesseract"]
    assert all("coffee" in e["text"] for e in sign["ocr_engine_texts"])
    assert sign["ocr_word_f1"] >= 0.8 and sign["ocr_char_coverage"] >= 0.8
    assert sign["ocr_agreed_words"] >= 4
    for row in kept.values():
        width, height = row["images"][0]["width"], row["images"][0]["height"]
        assert validate(row["ocr_grounding"], width, height) == []
        labels = parse(row["ocr_grounding"])
        assert [lab.object for lab in labels] == [b["text"] for b in row["ocr_boxes"]]
        assert all(lab.shapes[0].kind == "quad" for lab in labels)
        assert row["conversations"][1]["content"] == row["ocr_grounding"]
        for box in row["ocr_boxes"]:
            xs, ys = box["quad"][0::2], box["quad"][1::2]
            assert 0 <= min(xs) and max(xs) <= width + 1 and 0 <= min(ys) and max(ys) <= height + 1


def test_tilted_line_gets_a_tilted_quad(result):
    tilted = rows_by_key(result[1].kept)["tilted"]
    quad = parse(tilted["ocr_grounding"])[0].shapes[0].points
    assert quad[0][1] > quad[1][1]          # text rotated counter-clockwise: the upper-right corner is higher


def test_rejects_carry_the_measured_values(stage, tmp_path):
    table = make_table(tmp_path, {"sign": _png(render(DEMO_SPECS["sign"]))})
    strict = build("ocr", {"min_agreed_words": 50})
    strict.engines = stage.engines
    strict._is_setup = True
    res = strict.run(table)
    row = res.dropped.to_pylist()[0]
    assert row["_reason"] == "ocr:too_few_agreed_words"
    assert "< 50" in row["_detail"] and "rapidocr" in row["_detail"] and "precision" in row["_detail"]
    assert row["ocr_word_f1"] is not None


def test_timeout_rejects_the_image(stage, tmp_path):
    table = make_table(tmp_path, {"sign": _png(render(DEMO_SPECS["sign"]))})
    hasty = build("ocr", {"timeout_s": 1e-6})
    hasty.engines = stage.engines
    hasty._is_setup = True
    row = hasty.run(table).dropped.to_pylist()[0]
    assert row["_reason"] == "ocr:timeout" and "rapidocr" in row["_detail"]


def test_tesseract_honours_its_deadline(stage):
    tess = stage.engines[1]
    big = render(TextSpec(tuple(f"line {i} of a long page of text" for i in range(60)), font_size=20))
    res = tess.read(big, timeout_s=0.001)
    assert isinstance(res, EngineResult) and res.timed_out and res.words == []


def test_large_images_are_read_shrunk_and_boxes_come_back_in_original_pixels(stage, tmp_path):
    big = render(TextSpec(("Large poster text",), font_size=120))
    assert max(big.size) > 1200
    table = make_table(tmp_path, {"poster": _png(big)})
    small_reader = build("ocr", {"max_side": 600})
    small_reader.engines = stage.engines
    small_reader._is_setup = True
    row = small_reader.run(table).kept.to_pylist()[0]
    xs = row["ocr_boxes"][0]["quad"][0::2]
    assert max(xs) > 900                     # original pixel space, not the 600-pixel reading
    assert size_bucket(*big.size, [512, 1024, 2048]) == "<=2048"
    assert max(shrink(big, 600)[0].size) == 600


def test_output_is_identical_across_batch_sizes(stage, tmp_path):
    specs = ["sign", "receipt", "invoice"]
    table = make_table(tmp_path, {k: _png(render(DEMO_SPECS[k])) for k in specs})
    one = stage.run(table, batch_size=1).concat().sort_by(R.ORDINAL)
    three = stage.run(table, batch_size=3).concat().sort_by(R.ORDINAL)
    assert one.equals(three)


def test_config_is_validated():
    with pytest.raises(ValueError, match="engines"):
        build("ocr", {"engines": ["rapidocr"]})
    with pytest.raises(ValueError, match="engines"):
        build("ocr", {"engines": ["rapidocr", "nope"]})
    with pytest.raises(ValueError, match="min_agreement"):
        build("ocr", {"min_agreement": 1.5})
    with pytest.raises(ValueError, match="engine_options"):
        build("ocr", {"engine_options": {"paddleocr": {}}})
    assert engine_factory("curate.ocr.tesseract:TesseractEngine").name == "tesseract"


def test_recipe_emits_grounding_samples_that_pass_validate_annotations(tmp_path, monkeypatch):
    import pipelines
    expected = build_text_images(tmp_path / "data" / "sample")
    monkeypatch.chdir(tmp_path)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "ocr.yaml"
    res = pipelines.run(str(recipe), out=str(tmp_path / "out"), executor="inline")
    kept = {r["key"] for r in res.kept().to_pylist()}
    assert kept == {f"ocr/{k}" for k, v in EXPECTED_OCR.items() if v is None}
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert {r["key"]: ("ocr", r["_reason"]) for r in rejects} == expected == {"ocr/blobs": ("ocr", "ocr:no_text")}
    ocr_dir = next((tmp_path / "out" / "stages").glob("*_ocr"))   # its rows: its own, or its chain owner's
    owner = json.loads((ocr_dir / "_COMPLETE.json").read_text()).get("fused_into") or ocr_dir.name
    manifests = sorted((tmp_path / "out" / "stages" / owner / "data").glob("*.parquet"))
    assert manifests and all(validate_file(m) == [] for m in manifests)
    ocr_report = next(s for s in res.report["stages"] if s["name"] == "ocr")
    per_source = ocr_report["ocr"]["per_source"]["ocr"]
    assert per_source["read"] == len(kept) and sum(per_source["size_buckets"].values()) == len(kept)
    assert per_source["char_coverage"]["p50"] > 0.8 and per_source["below_low_coverage"] == 0
    assert json.dumps(ocr_report)  # the coverage summary is plain JSON


def test_paddleocr_production_engine_reads_where_installed():
    """The production engine (the `ocr` extra). It downloads its models on first use, so it runs only
    where paddleocr and its model files are present."""
    pytest.importorskip("paddleocr", reason="paddleocr is the `ocr` extra; not installed on this machine")
    engine = engine_factory("paddleocr")()
    res = engine.read(render(DEMO_SPECS["sign"]), 60)
    assert "coffee" in res.text.lower()


def test_ray_actor_pool_gives_the_same_rows_as_inline(tmp_path):
    """The stage on Ray's actor pool (engines built once per actor in setup) writes what inline writes."""
    pytest.importorskip("ray")
    import pyarrow.compute as pc
    from pipelines.recipe import load
    from pipelines.runner import run
    build_text_images(tmp_path / "data" / "sample")
    # absolute source path instead of chdir: Ray's workers import this checkout from the driver's cwd
    text = (Path(__file__).resolve().parents[1] / "recipes" / "ocr.yaml").read_text()
    (tmp_path / "ocr.yaml").write_text(text.replace('"data/sample/', f'"{tmp_path}/data/sample/'))
    recipe = load(tmp_path / "ocr.yaml")
    tables = []
    for executor in ("inline", "ray"):
        res = run(recipe, out=tmp_path / executor, executor=executor, progress=False)
        t = res.kept()
        tables.append(t.take(pc.sort_indices(t, sort_keys=[(R.ORDINAL, "ascending")])))
    assert tables[0].num_rows == 5 and tables[0].equals(tables[1])
