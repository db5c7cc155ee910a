"""decontaminate: training rows matching a reference corpus (an eval set as LLaVA JSONL) are removed,
by exact/near-duplicate question text and by exact/near-duplicate image; others pass."""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from skimage import data as skdata

from curate.base import records as R
from curate import base as S


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture()
def corpus(tmp_path):
    cat, coffee, rocket = (Image.fromarray(a) for a in (skdata.chelsea(), skdata.coffee(), skdata.rocket()))
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval/cat.jpg").write_bytes(jpeg(cat))
    (tmp_path / "eval/coffee.jpg").write_bytes(jpeg(coffee))
    evalset = [
        {"id": "q1", "image": "cat.jpg", "conversations": [
            {"from": "human", "value": "<image>\nHow many stripes can you count on the tabby cat's tail?"},
            {"from": "gpt", "value": "Seven."}]},
        {"id": "q2", "image": "coffee.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat pattern does the latte art in the cup form?"},
            {"from": "gpt", "value": "A leaf."}]},
    ]
    with open(tmp_path / "eval/eval.jsonl", "w") as fh:
        for rec in evalset:
            fh.write(json.dumps(rec) + "\n")
    train = tmp_path / "train"
    train.mkdir()
    files = {"cat_small.jpg": jpeg(cat.resize((300, 200)), 60), "rocket.jpg": jpeg(rocket),
             "coffee_same.jpg": jpeg(coffee)}
    refs = {}
    for name, data in files.items():
        (train / name).write_bytes(data)
        with Image.open(io.BytesIO(data)) as im:
            refs[name] = R.image_ref(str(train / name), width=im.width, height=im.height)

    def row(i, key, image, turns):
        conv = [{"role": "user" if j % 2 == 0 else "assistant", "content": t} for j, t in enumerate(turns)]
        return {"key": key, "source": "train", "category": "vqa", "images": [refs[image]], "conversations": conv,
                R.ORDINAL: i, R.STATUS: R.KEPT}
    table = R.rows_to_table([
        row(0, "t/cat-resized", "cat_small.jpg", ["What animal is this?", "A cat lying down."]),
        row(1, "t/question-edited", "rocket.jpg", ["Describe the sky.", "Clear and blue.",
                                                   "How many stripes can you count on the tabby cats tail ?", "Six."]),
        row(2, "t/clean", "rocket.jpg", ["What is standing on the launch pad in this photo?", "A rocket."]),
        row(3, "t/coffee-bytes", "coffee_same.jpg", ["Is the cup full?", "Yes."]),
        row(4, "t/short-answer-only", "rocket.jpg", ["Is it daytime?", "Seven."]),
    ])
    return tmp_path / "eval/eval.jsonl", table


def test_decontaminate_removes_matches_by_text_and_image(corpus):
    reference, table = corpus
    stage = S.build("decontaminate", {"reference_path": str(reference), "reference_format": "llava"})
    result = stage.run(table)
    dropped = {r["key"]: (r[R.REASON], r[R.DETAIL]) for r in result.dropped.to_pylist()}
    assert set(dropped) == {"t/cat-resized", "t/question-edited", "t/coffee-bytes"}
    assert dropped["t/cat-resized"][0] == "decontaminate:image" and "Hamming" in dropped["t/cat-resized"][1]
    assert dropped["t/coffee-bytes"] == ("decontaminate:image", "matches reference reference/q2 (same bytes)")
    assert dropped["t/question-edited"][0] == "decontaminate:text" and "reference/q1" in dropped["t/question-edited"][1]
    assert sorted(result.kept.column("key").to_pylist()) == ["t/clean", "t/short-answer-only"]
    assert result.report["decontaminate"]["reference_text_units"] == 2   # the one-word answers are too short


def test_text_only_matching_ignores_images_and_config_is_checked(corpus):
    reference, table = corpus
    result = S.build("decontaminate", {"reference_path": str(reference), "match": ["text"]}).run(table)
    assert result.dropped.column("key").to_pylist() == ["t/question-edited"]
    with pytest.raises(ValueError, match="reference_path"):
        S.build("decontaminate", {})
    with pytest.raises(ValueError, match="match"):
        S.build("decontaminate", {"reference_path": "x", "match": ["audio"]})


def test_decontaminate_reports_its_reference_on_ray_as_inline(corpus, tmp_path, monkeypatch):
    """setup() builds the reference index where the batches run: under Ray in the workers, whose stage
    objects the driver never sees. The reference numbers still reach report.json (through summarize,
    on the driver), the same as inline."""
    from pipelines.recipe import load
    from pipelines.runner import run
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    reference, table = corpus
    with open(tmp_path / "train/train.jsonl", "w") as fh:
        for r in table.to_pylist():
            turns = [{"from": "human" if t["role"] == "user" else "gpt", "value": t["content"]} for t in r["conversations"]]
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
            fh.write(json.dumps({"id": r["key"].split("/")[1], "image": r["images"][0]["uri"].rsplit("/", 1)[1],
                                 "conversations": turns}) + "\n")
    (tmp_path / "r.yaml").write_text(f"""\
name: decontaminate-ray
seed: 1
sources:
  - {{name: train, path: "{tmp_path}/train/train.jsonl", format: llava, category: vqa}}
stages:
  - {{name: decontaminate, settings: {{reference_path: "{reference}"}}}}
""")
    entries = {}
    for executor in ("inline", "ray"):
        report = run(load(tmp_path / "r.yaml"), out=tmp_path / executor, executor=executor, progress=False).report
        entries[executor] = next(e for e in report["stages"] if e["name"] == "decontaminate")
    assert entries["ray"]["decontaminate"] == {"reference_rows": 2, "reference_text_units": 2, "reference_images": 2}
    assert entries["ray"] == {**entries["inline"], "rejects": entries["ray"]["rejects"]}
    assert sum(entries["ray"]["rejected"].values()) == 3
