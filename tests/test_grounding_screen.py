"""The vectorised grounding screen clears only texts the scanner finds no problem in, and the stage
with it gives the verdicts, codes and details of the stage scanning every row."""
from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from curate.base import StageContext
from curate.base import records as R
from curate.grounding import stage as grounding_stage
from curate.grounding.parse import validate
from curate.grounding.screen import cleared_texts

coord = st.one_of(st.integers(0, 999).map(lambda v: f"{v:03d}"), st.sampled_from(["8", "1000", "-01", "0 1", "ab"]))
point = st.builds(lambda x, y: f"({x},{y})", coord, coord)
SHAPES = {"point": 1, "box": 2, "quad": 4}


@st.composite
def shape(draw):
    kind = draw(st.sampled_from(sorted(SHAPES)))
    count = SHAPES[kind] if draw(st.integers(0, 5)) else draw(st.integers(0, 5))
    sep = "," if draw(st.integers(0, 6)) else draw(st.sampled_from([", ", ";", ""]))
    end = kind if draw(st.integers(0, 8)) else draw(st.sampled_from(sorted(SHAPES)))
    return f"<|{kind}_start|>" + sep.join(draw(point) for _ in range(count)) + f"<|{end}_end|>"


name = st.one_of(st.sampled_from(["red car", "dog", "", " ", "\u3000", "猫", "a|b", "x\n"]), st.text(max_size=4))
ref = st.builds(lambda n: f"<|object_ref_start|>{n}<|object_ref_end|>", name)
plain = st.one_of(st.sampled_from(["The ", " and ", ", ", "", " ", "\n", "\t", "\u00a0", "\u2003", "|", "<|",
                                   "|>", "<|im_start|>", "<|box_start", "box_end|>", "<|foo_start|>", "<|quad|>",
                                   "```json\n{\"a\": 1}\n```", "```json\n{bad\n```", "<ref>"]),
                  st.text(max_size=5))
piece = st.one_of(plain, ref, shape(), shape(), ref)
texts = st.lists(piece, max_size=8).map("".join)


@settings(max_examples=600, deadline=None)
@given(texts, st.booleans())
def test_cleared_texts_have_no_problems(text, check_json):
    cleared = cleared_texts(pa.array([text], pa.string()), check_json)
    if cleared[0]:
        assert validate(text, check_json=check_json) == [], text
        assert validate(text, check_json=check_json, require_padding=False) == [], text


def test_the_screen_clears_the_common_labels():
    good = ["Where is the dog?", "<|object_ref_start|>dog<|object_ref_end|><|box_start|>(010,020),(300,400)<|box_end|>",
            "A <|object_ref_start|>cat<|object_ref_end|><|point_start|>(001,002)<|point_end|> and "
            "<|object_ref_start|>hat<|object_ref_end|><|quad_start|>(1,2)<|quad_end|>"]
    assert cleared_texts(pa.array(good), True).tolist() == [True, True, False]   # an unpadded quad: the scanner


@st.composite
def batches(draw):
    n = draw(st.integers(0, 12))
    turn = st.one_of(st.none(), st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                                       "content": st.one_of(st.none(), texts)}))
    return pa.table({
        "key": [f"k{i}" for i in range(n)],
        "category": draw(st.lists(st.sampled_from(["grounding", "caption"]), min_size=n, max_size=n)),
        "text": pa.array(draw(st.lists(st.one_of(st.none(), texts), min_size=n, max_size=n)), pa.string()),
        "conversations": pa.array(draw(st.lists(st.one_of(st.none(), st.lists(turn, max_size=3)), min_size=n,
                                                max_size=n)), pa.list_(R.TURN)),
        "images": pa.array([[] for _ in range(n)], pa.list_(R.IMAGE_REF)),
    })


SETTINGS = [{}, {"categories": ["grounding"]}, {"reject_on": ["nested_tag", "box_corners_out_of_order"]},
            {"check_json": False, "require_padding": False}]


@settings(max_examples=200, deadline=None)
@given(batches(), st.sampled_from(SETTINGS))
def test_stage_with_screen_equals_scanning_every_row(batch, config):
    stage = grounding_stage.GroundingCheck(context=StageContext(seed=1), **config)
    screened = stage.process_batch(batch)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grounding_stage, "cleared_rows", lambda b, check_json: __import__("numpy").zeros(b.num_rows, bool))
        every_row = stage.process_batch(batch)
    assert screened.kept.equals(every_row.kept)
    assert screened.dropped.equals(every_row.dropped)
