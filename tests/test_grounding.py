"""The grounding grammar: format -> parse round trips, every problem class is caught, validate never raises."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate.grounding import (CODES, GroundingSyntaxError, Label, Shape, format_label, format_labels, parse, scan,
                              validate)
from curate.grounding.grammar import check_object_name

REF = "<|object_ref_start|>{}<|object_ref_end|>"
BOX = "<|box_start|>{}<|box_end|>"

# --- strategies -----------------------------------------------------------------------------------
coord = st.integers(0, 999)
point = st.tuples(coord, coord)


@st.composite
def boxes(draw):
    x1, x2 = sorted((draw(coord), draw(coord)))
    y1, y2 = sorted((draw(coord), draw(coord)))
    return Shape.box(x1, y1, x2, y2)


shapes = st.one_of(point.map(lambda p: Shape.point(*p)), boxes(),
                   st.lists(point, min_size=4, max_size=4).map(Shape.quad))


def _valid_name(s: str) -> bool:
    try:
        check_object_name(s)
        return True
    except ValueError:
        return False


names = st.text(min_size=1, max_size=20).filter(_valid_name)
labels = st.builds(lambda sh, n: Label(tuple(sh), n), st.lists(shapes, min_size=1, max_size=4),
                   st.none() | names)
# Running text between labels: no '|' (so no tags) and not whitespace only (that would join two labels).
filler = st.text(max_size=12).filter(lambda s: "|" not in s and "`" not in s)
separators = filler.filter(lambda s: s.strip() != "")


@st.composite
def texts_with_labels(draw):
    labs = draw(st.lists(labels, min_size=1, max_size=5))
    seps = [draw(separators) for _ in labs[1:]]
    pre, post = draw(filler), draw(filler)
    out = pre
    for i, lab in enumerate(labs):
        out += (seps[i - 1] if i else "") + format_label(lab)
    return out + post, labs


# --- round trips ----------------------------------------------------------------------------------

@given(texts_with_labels())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_format_then_parse_round_trips(case):
    text, labs = case
    parsed = parse(text)
    assert parsed == labs
    assert validate(text) == []
    for lab in parsed:  # spans point at exactly the written label
        assert text[lab.span[0]:lab.span[1]] == format_label(lab)


def test_format_label_writes_the_seed_grammar():
    text = format_label([Shape.box(8, 20, 300, 400), Shape.point(5, 999)], "red car")
    assert text == ("<|object_ref_start|>red car<|object_ref_end|><|box_start|>(008,020),(300,400)<|box_end|>"
                    "<|point_start|>(005,999)<|point_end|>")
    quad = format_label(Shape.quad([(0, 0), (10, 0), (10, 10), (0, 10)]))
    assert quad == "<|quad_start|>(000,000),(010,000),(010,010),(000,010)<|quad_end|>"


@pytest.mark.parametrize("bad", [Shape.box(10, 10, 5, 20), Shape.point(1000, 0), Shape.point(-1, 0),
                                 Shape("box", ((1, 1),)), Shape("polygon", ((1, 1),))])  # type: ignore[arg-type]
def test_format_label_refuses_invalid_shapes(bad):
    with pytest.raises(ValueError):
        format_label(bad)


@pytest.mark.parametrize("name", ["", "  ", "a<|b", "x|>", "xbox_end|"])
def test_format_label_refuses_names_that_read_as_tags(name):
    with pytest.raises(ValueError):
        format_label(Shape.point(1, 2), name)


def test_format_labels_refuses_whitespace_separator():
    with pytest.raises(ValueError):
        format_labels([Label((Shape.point(1, 2),))], sep=" ")


def test_names_in_any_script_and_running_text():
    text = ("左边是" + format_label(Shape.box(1, 2, 3, 4), "一只 猫") + "，右边是"
            + format_label(Shape.point(500, 501), "собака") + ".")
    labs = parse(text)
    assert [lab.object for lab in labs] == ["一只 猫", "собака"]
    assert validate(text) == []


def test_object_ref_without_shape_is_a_query_not_a_label():
    text = "Locate <|object_ref_start|>the dog<|object_ref_end|> in the image."
    assert parse(text) == [] and validate(text) == []


def test_chat_template_tags_are_ignored():
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>find it<|im_end|>"
    assert validate(text) == []


def test_parse_strict_raises_and_lenient_skips():
    good = format_label(Shape.point(1, 2), "a")
    text = good + ", <|box_start|>(001,002)<|box_end|>"
    with pytest.raises(GroundingSyntaxError) as err:
        parse(text)
    assert err.value.problems[0].code == "wrong_point_count"
    assert parse(text, strict=False) == [Label((Shape.point(1, 2),), "a")]


def test_parse_returns_values_as_written():
    # Reading is not judging: unpadded and out-of-range values parse; validate reports them.
    labs = parse("<|box_start|>(8,20),(1000,400)<|box_end|>")
    assert labs == [Label((Shape.box(8, 20, 1000, 400),))]


# --- every problem class ---------------------------------------------------------------------------

CASES = {
    "unbalanced_tag": ["<|box_start|>(010,020),(300,400)", "(010,020)<|point_end|>",
                       "<|object_ref_start|>cat"],
    "mismatched_tag": ["<|box_start|>(010,020),(300,400)<|quad_end|>",
                       "<|object_ref_start|>cat<|box_end|>"],
    "nested_tag": [REF.format("a" + BOX.format("(010,020),(300,400)")),
                   "<|box_start|>(010,020)<|point_start|>(001,002)<|point_end|>"],
    "malformed_tag": ["<box_start|>(010,020),(300,400)<|box_end|>", "<|box_start(010,020),(300,400)<|box_end|>",
                      "<|Box_start|>(010,020),(300,400)<|box_end|>"],
    "unknown_shape": ["<|polygon_start|>(001,002),(003,004),(005,006)<|polygon_end|>", "<|circle_end|>"],
    "empty_object_ref": [REF.format("") + "<|point_start|>(001,002)<|point_end|>",
                         REF.format("  ") + "<|point_start|>(001,002)<|point_end|>"],
    "whitespace_in_label": [BOX.format("(010, 020),(300,400)"), BOX.format(" (010,020),(300,400)"),
                            REF.format("cat") + " " + BOX.format("(010,020),(300,400)"),
                            BOX.format("(010,020),(300,400)") + "\n" + BOX.format("(011,020),(300,400)")],
    "missing_parentheses": [BOX.format("010,020,300,400"), BOX.format("(010,020),(300,400"),
                            "<|point_start|>010,020<|point_end|>"],
    "malformed_coordinates": [BOX.format("(010,020)(300,400)"), BOX.format("(010,020,030),(300,400)"),
                              BOX.format("((010,020)),(300,400)")],
    "wrong_point_count": [BOX.format("(010,020)"), "<|point_start|>(001,002),(003,004)<|point_end|>",
                          "<|quad_start|>(001,002),(003,004),(005,006)<|quad_end|>", BOX.format("")],
    "non_integer_coordinate": [BOX.format("(010.5,020),(300,400)"), BOX.format("(abc,020),(300,400)"),
                               BOX.format("(,020),(300,400)"), BOX.format("(+10,020),(300,400)"),
                               BOX.format("(０１０,020),(300,400)")],
    "negative_coordinate": [BOX.format("(-10,020),(300,400)"), "<|point_start|>(001,-001)<|point_end|>"],
    "coordinate_out_of_range": [BOX.format("(010,020),(1000,400)"), "<|point_start|>(001,99999)<|point_end|>"],
    "not_zero_padded": [BOX.format("(10,020),(300,400)"), "<|point_start|>(001,0002)<|point_end|>",
                        "<|point_start|>(1,2)<|point_end|>"],
    "box_corners_out_of_order": [BOX.format("(300,020),(010,400)"), BOX.format("(010,400),(300,020)")],
    "invalid_json": ["```json\n[{\"bbox_2d\": [1, 2, 3, 4]\n```"],
}


def test_cases_cover_every_code():
    assert set(CASES) | {"pixel_coordinates", "invalid_image_size", "not_text"} == set(CODES)


@pytest.mark.parametrize("code,text", [(c, t) for c, ts in CASES.items() for t in ts])
def test_each_problem_class_is_caught_first(code, text):
    problems = validate(text)
    assert problems, text
    assert problems[0].code == code, [str(p) for p in problems]
    assert all(p.message for p in problems)


def test_pixel_coordinates_need_the_image_size():
    text = BOX.format("(010,020),(1200,400)")
    assert validate(text)[0].code == "coordinate_out_of_range"
    assert validate(text, width=1920, height=1080)[0].code == "pixel_coordinates"
    assert validate(text, width=800, height=1080)[0].code == "coordinate_out_of_range"  # outside the image too
    assert [p.code for p in validate(BOX.format("(010,020),(300,400)"), 0, 10)] == ["invalid_image_size"]


def test_padding_can_be_optional():
    text = BOX.format("(10,20),(300,400)")
    assert validate(text, require_padding=False) == []
    assert validate(BOX.format("(10,20),(1000,400)"), require_padding=False)[0].code == "coordinate_out_of_range"


def test_json_blocks_and_non_text():
    assert validate('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]\n```') == []
    assert validate('```json\n[' * 5000 + "```")[0].code == "invalid_json"  # deep nesting: RecursionError caught
    assert validate("```json\n{bad\n```", check_json=False) == []
    assert validate(None)[0].code == "not_text"  # type: ignore[arg-type]


def test_text_without_tags_passes():
    for text in ["", "a plain caption", "bounding_box_start = 3  # code", "a | b || c", "x_end|y"]:
        assert validate(text) == [], text


def test_problems_are_in_text_order_and_labels_after_an_error_still_parse():
    text = (BOX.format("(010,020),(1000,400)") + " then " + REF.format("x") + BOX.format("(300,020),(010,400)")
            + " and " + format_label(Shape.point(1, 2), "ok"))
    problems = validate(text)
    assert [p.code for p in problems] == ["coordinate_out_of_range", "box_corners_out_of_order"]
    assert problems[0].offset < problems[1].offset
    assert Label((Shape.point(1, 2),), "ok") in parse(text, strict=False)


# --- validate never raises --------------------------------------------------------------------------

@given(st.text())
@settings(max_examples=400)
def test_validate_never_raises_on_any_text(text):
    problems = validate(text)
    assert all(p.code in CODES for p in problems)


TAG_ALPHABET = "<|>_(),0123456789-. \nabxoqudtrpnesj`"


@st.composite
def mutated_labels(draw):
    text, _ = draw(texts_with_labels())
    n = draw(st.integers(1, 3))
    for _ in range(n):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        ch = draw(st.sampled_from(TAG_ALPHABET) | st.characters())
        if op == "insert":
            text = text[:i] + ch + text[i:]
        elif op == "delete" and i < len(text):
            text = text[:i] + text[i + 1:]
        elif i < len(text):
            text = text[:i] + ch + text[i + 1:]
    return text


@given(mutated_labels(), st.sampled_from([None, (640, 480), (4000, 3000)]))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_validate_never_raises_on_mutated_labels_and_valid_means_canonical(text, size):
    w, h = size or (None, None)
    problems = validate(text, w, h)
    assert all(p.code in CODES and isinstance(p.offset, int) for p in problems)
    parse(text, strict=False)
    if not problems:
        # Whatever the mutation did, text judged valid re-reads and re-writes to exactly itself.
        for lab in parse(text):
            assert text[lab.span[0]:lab.span[1]] == format_label(lab)


def test_scan_labels_and_problems_together():
    text = REF.format("a") + BOX.format("(001,002),(003,004)") + ", " + BOX.format("(1,2),(3,4)")
    res = scan(text)
    assert len(res.labels) == 2 and {p.code for p in res.problems} == {"not_zero_padded"}
