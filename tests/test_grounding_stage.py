"""The grounding stages on real tables, the annotations-file check, and the demo records."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.base import records as R
from curate.grounding import Shape, format_file_problems, format_label, parse, validate, validate_file
from demo_data.grounding import PLANTED_CODES, VALID_KINDS, expected_reason, make_demo_records
from curate.grounding.stage import GroundingCheck, GroundingNegatives
from curate.base import build

GOOD = format_label(Shape.box(10, 20, 300, 400), "cat")
ROLE = {"human": "user", "gpt": "assistant", "system": "system"}


def table_of(samples: list[dict]) -> pa.Table:
    rows = []
    for i, s in enumerate(samples):
        rows.append(R.Sample(key=s.get("key", f"k{i}"), source="t", category=s.get("category", "grounding"),
                             images=s.get("images", []), text=s.get("text"), conversations=s.get("conversations"),
                             meta=s.get("meta"), ordinal=i).to_row())
    return R.rows_to_table(rows)


def conv(*answers: str, question: str = "<image>\nWhere is the cat?") -> list[dict]:
    out = []
    for a in answers:
        out += [{"role": "user", "content": question}, {"role": "assistant", "content": a}]
    return out


def run(stage, table):
    res = stage.run(table)
    assert res.dropped.filter(pa.compute.equal(res.dropped.column(R.STATUS), R.QUARANTINED)).num_rows == 0
    return res


def by_key(t: pa.Table, col: str) -> dict:
    return dict(zip(t.column("key").to_pylist(), t.column(col).to_pylist()))


# --- grounding_check ----------------------------------------------------------------------------------

def test_grounding_check_rejects_with_first_code_and_lists_all():
    table = table_of([
        {"key": "good", "conversations": conv(GOOD)},
        {"key": "plain", "category": "caption", "text": "a cat on a mat"},
        {"key": "range", "conversations": conv("<|box_start|>(010,020),(1000,400)<|box_end|>, "
                                               "<|box_start|>(300,020),(010,400)<|box_end|>")},
        {"key": "caption_bad", "category": "caption", "text": "<|point_start|>(1,2)<|point_end|>"},
        {"key": "second_turn", "conversations": conv(GOOD, "<|box_start|>(010,020),(300,400)")},
    ])
    res = run(GroundingCheck(), table)
    assert sorted(res.kept.column("key").to_pylist()) == ["good", "plain"]
    reasons = by_key(res.dropped, R.REASON)
    assert reasons == {"range": "grounding:coordinate_out_of_range", "caption_bad": "grounding:not_zero_padded",
                       "second_turn": "grounding:unbalanced_tag"}
    details = by_key(res.dropped, R.DETAIL)
    assert "conversations[1]: coordinate_out_of_range" in details["range"]
    assert "box_corners_out_of_order" in details["range"]
    assert "conversations[3]: unbalanced_tag" in details["second_turn"]
    assert by_key(res.dropped, "grounding_problems")["range"] == "coordinate_out_of_range,box_corners_out_of_order"
    assert by_key(res.kept, "grounding_problems") == {"good": None, "plain": None}
    # Kept rows are untouched.
    assert res.kept.sort_by("key").column("conversations").to_pylist()[0] == conv(GOOD)


def test_grounding_check_categories_reject_on_and_padding():
    unpadded = conv("<|box_start|>(10,20),(300,400)<|box_end|>")
    table = table_of([{"key": "a", "conversations": unpadded},
                      {"key": "b", "category": "caption", "conversations": conv("<|box_start|>(1,2)")},
                      {"key": "c", "conversations": conv("<|box_start|>(300,20),(10,400)<|box_end|>")}])
    res = run(GroundingCheck(categories=["grounding"], reject_on=["box_corners_out_of_order"]), table)
    assert sorted(res.kept.column("key").to_pylist()) == ["a", "b"]   # b: category not checked
    assert by_key(res.kept, "grounding_problems") == {"a": "not_zero_padded", "b": None}
    assert by_key(res.dropped, R.REASON) == {"c": "grounding:box_corners_out_of_order"}
    stage = GroundingCheck(reject_on=["box_corners_out_of_order"])
    assert stage.summarize(res.kept) == {"kept_with_problems": {"not_zero_padded": 1}}
    relaxed = run(GroundingCheck(require_padding=False), table_of([{"key": "a", "conversations": unpadded}]))
    assert relaxed.kept.num_rows == 1


def test_grounding_check_uses_the_image_size_for_pixel_coordinates():
    img = [R.image_ref("x.jpg", width=1920, height=1080)]
    table = table_of([{"key": "px", "images": img, "conversations": conv("<|box_start|>(100,200),(1500,900)<|box_end|>")}])
    assert by_key(run(GroundingCheck(), table).dropped, R.REASON) == {"px": "grounding:pixel_coordinates"}


def test_grounding_check_config_errors_and_registry():
    with pytest.raises(ValueError, match="reject_on"):
        GroundingCheck(reject_on=["not_a_code"])
    with pytest.raises(ValueError, match="reject_on"):
        GroundingCheck(reject_on="some")
    with pytest.raises(ValueError, match="categories"):
        GroundingCheck(categories="grounding")
    stage = build("grounding_check", {"reject_on": ["unbalanced_tag"], "categories": None})
    assert isinstance(stage, GroundingCheck)
    schema = GroundingCheck.settings_schema()
    assert set(schema["properties"]) == {"categories", "require_padding", "reject_on", "check_json"}


def test_stage_module_imports_without_torch():
    code = "import sys, curate.grounding.stage, curate.grounding; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- demo records through the stage ---------------------------------------------------------------------

def demo_table():
    infos = [{"path": "images/a.jpg", "width": 512, "height": 512}, {"path": "images/b.jpg", "width": 640, "height": 427}]
    records, expected = make_demo_records(infos, np.random.default_rng(0))
    samples = [{"key": r["id"], "images": [R.image_ref(r["image"], width=r["width"], height=r["height"])],
                "conversations": [{"role": ROLE[t["from"]], "content": t["value"]} for t in r["conversations"]]}
               for r in records]
    return records, expected, table_of(samples)


def test_demo_records_valid_and_planted_are_told_apart_by_the_stage():
    records, expected, table = demo_table()
    assert len(records) == len(VALID_KINDS) + len(PLANTED_CODES)
    assert records == demo_table()[0]  # deterministic
    res = run(GroundingCheck(), table)
    got = by_key(res.dropped, R.REASON)
    assert got == expected == {r["id"]: expected_reason(r["id"]) for r in records if "-invalid-" in r["id"]}
    assert set(got.values()) == {f"grounding:{c}" for c in PLANTED_CODES}
    kept = res.kept.column("key").to_pylist()
    assert sorted(kept) == sorted(r["id"] for r in records if "-valid-" in r["id"])
    # The valid ones carry real labels of each kind.
    shapes = {s.kind for t in res.kept.column("conversations").to_pylist() for turn in t
              for lab in parse(turn["content"]) for s in lab.shapes}
    assert shapes == {"point", "box", "quad"}


# --- grounding_negatives ---------------------------------------------------------------------------------

VOCAB = ["person", "dog", "cat", "car", "chair", "cup"]


def test_grounding_negatives_appends_valid_turns_deterministically():
    samples = [{"key": f"s{i}", "conversations": conv(GOOD), "meta": {"categories": ["cat"]}} for i in range(40)]
    samples += [{"key": "no_meta", "conversations": conv(GOOD)},
                {"key": "caption", "category": "caption", "conversations": conv(GOOD), "meta": {"categories": []}}]
    table = table_of(samples)
    stage = GroundingNegatives(vocabulary=VOCAB, ratio=1.5)
    res = run(stage, table)
    assert res.dropped.num_rows == 0 and res.kept.num_rows == len(samples)
    again = run(GroundingNegatives(vocabulary=VOCAB, ratio=1.5), table)
    assert again.kept.column("conversations").to_pylist() == res.kept.column("conversations").to_pylist()
    n = by_key(res.kept, "grounding_negatives")
    convs = by_key(res.kept, "conversations")
    assert n["no_meta"] == 0 and n["caption"] == 0 and convs["no_meta"] == conv(GOOD)
    counts = [n[f"s{i}"] for i in range(40)]
    assert set(counts) == {1, 2} and 1.2 < sum(counts) / 40 < 1.8
    for i in range(40):
        turns = convs[f"s{i}"]
        assert len(turns) == 2 + 2 * n[f"s{i}"] and turns[:2] == conv(GOOD)
        for q, a in zip(turns[2::2], turns[3::2]):
            assert q["role"] == "user" and a["role"] == "assistant" and "no such object" in a["content"]
            assert "every cat " not in q["content"] and validate(q["content"]) == []
    assert stage.summarize(res.kept) == {"negative_turns_added": sum(counts), "samples_with_negatives": 40}
    other_seed = GroundingNegatives(vocabulary=VOCAB, ratio=1.5,
                                    context=type(stage.context)(seed=7)).run(table).kept
    assert other_seed.column("conversations").to_pylist() != res.kept.column("conversations").to_pylist()


def test_grounding_negatives_config_errors():
    with pytest.raises(ValueError, match="vocabulary"):
        GroundingNegatives()
    with pytest.raises(ValueError, match="ratio"):
        GroundingNegatives(vocabulary=VOCAB, ratio=-0.5)
    with pytest.raises(ValueError, match="name"):
        GroundingNegatives(vocabulary=VOCAB, prompt="Is there one?")


# --- validate_file -----------------------------------------------------------------------------------------

def test_validate_file_jsonl_locations(tmp_path):
    path = tmp_path / "ann.jsonl"
    lines = [
        {"id": "ok", "conversations": [{"from": "human", "value": "<image>\nfind"}, {"from": "gpt", "value": GOOD}]},
        {"id": "px", "width": 1920, "height": 1080,
         "conversations": [{"from": "gpt", "value": "<|box_start|>(100,200),(1500,900)<|box_end|>"}]},
        "not json",
        {"text": "<|point_start|>(1,2)<|point_end|>"},
        {"messages": [{"role": "assistant", "content": [{"type": "text", "text": "<|box_start|>(001,002)<|box_end|>"}]}]},
        {"id": "nothing"},
        [1, 2],
    ]
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n\n")
    problems = validate_file(path)
    got = [(p.line, p.field, p.code) for p in problems]
    assert got == [(2, "conversations[0].value", "pixel_coordinates"), (3, "", "invalid_json_line"),
                   (4, "text", "not_zero_padded"), (4, "text", "not_zero_padded"),
                   (5, "messages[0].content[0].text", "wrong_point_count"), (6, "", "no_text_fields"),
                   (7, "", "not_an_object")]
    assert str(problems[0]).startswith(f"{path}:2: conversations[0].value @13: pixel_coordinates: ")
    summary = format_file_problems(problems, limit=2)
    assert "... and 5 more" in summary and "not_zero_padded=2" in summary
    assert format_file_problems([]) == "no problems"


def test_validate_file_parquet_and_json(tmp_path):
    table = table_of([{"key": "a", "conversations": conv(GOOD)},
                      {"key": "b", "images": [R.image_ref("x.jpg", width=2000, height=2000)],
                       "conversations": conv("<|point_start|>(1500,010)<|point_end|>")}])
    pq.write_table(table, tmp_path / "m.parquet")
    problems = validate_file(tmp_path / "m.parquet")
    assert [(p.row, p.field, p.code) for p in problems] == [(1, "conversations[1].content", "pixel_coordinates")]
    assert str(problems[0]).startswith(f"{tmp_path / 'm.parquet'}[row 1]: ")
    (tmp_path / "a.json").write_text(json.dumps([{"text": GOOD}, {"text": "<|box_end|>"}]))
    assert [(p.row, p.code) for p in validate_file(tmp_path / "a.json")] == [(1, "unbalanced_tag")]
    with pytest.raises(ValueError):
        validate_file(tmp_path / "a.csv")


def test_validate_file_on_demo_records(tmp_path):
    records, expected, _ = demo_table()
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    problems = validate_file(path)
    first = {}
    for p in problems:
        first.setdefault(records[p.line - 1]["id"], "grounding:" + p.code)
    assert first == expected
