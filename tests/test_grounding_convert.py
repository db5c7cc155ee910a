"""Normalization, polygon -> quad, converters and negative samples: outputs land in [0, 999] with the
right geometry."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate.grounding import (GroundingTask, Label, Shape, absent_categories, box_from_pixels, coco_label,
                              format_label, from_coco_bbox, from_coco_polygon, from_json_boxes, from_qwen2vl,
                              make_negatives, min_area_rect, negatives_for_ratio, normalize_text, order_quad, parse,
                              pixels_to_rel, polygon_to_quad, refcoco_to_tasks, rel_to_pixels, validate)

sizes = st.integers(1, 5000)


def in_range(shape: Shape) -> bool:
    return all(0 <= c <= 999 and isinstance(c, int) for c in shape.coords())


# --- pixels -> [0, 999] ----------------------------------------------------------------------------

def test_pixels_to_rel_maps_edges_and_clamps():
    assert pixels_to_rel(0, 0, 640, 480) == (0, 0)
    assert pixels_to_rel(640, 480, 640, 480) == (999, 999)
    assert pixels_to_rel(320, 240, 640, 480) == (500, 500)  # 499.5 rounds half up
    assert pixels_to_rel(-0.5, 481, 640, 480) == (0, 999)
    with pytest.raises(ValueError):
        pixels_to_rel(700, 0, 640, 480, clamp=False)
    with pytest.raises(ValueError):
        pixels_to_rel(1, 1, 0, 480)


@given(st.floats(0, 1), st.floats(0, 1), sizes, sizes)
def test_pixels_to_rel_inverse_within_one_step(fx, fy, w, h):
    x, y = fx * w, fy * h
    rx, ry = pixels_to_rel(x, y, w, h)
    px, py = rel_to_pixels(rx, ry, w, h)
    assert 0 <= rx <= 999 and 0 <= ry <= 999
    assert abs(px - x) <= w / 999 / 2 + 1e-9 and abs(py - y) <= h / 999 / 2 + 1e-9


@st.composite
def coco_boxes(draw, w, h):
    x = draw(st.floats(0, w))
    y = draw(st.floats(0, h))
    return [x, y, draw(st.floats(0, w - x)), draw(st.floats(0, h - y))]


@given(st.data(), sizes, sizes)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_coco_bbox_inside_range_ordered_and_order_preserving(data, w, h):
    a = data.draw(coco_boxes(w, h))
    b = data.draw(coco_boxes(w, h))
    sa, sb = from_coco_bbox(a, w, h), from_coco_bbox(b, w, h)
    for s in (sa, sb):
        assert s.kind == "box" and in_range(s)
        (x1, y1), (x2, y2) = s.points
        assert x1 <= x2 and y1 <= y2
        assert validate(format_label(s)) == []
    # Relative positions survive: a box entirely left of another stays left of it (monotone rounding).
    if a[0] + a[2] <= b[0]:
        assert sa.points[1][0] <= sb.points[0][0]
    if a[1] + a[3] <= b[1]:
        assert sa.points[1][1] <= sb.points[0][1]


def test_coco_bbox_values_and_errors():
    assert from_coco_bbox([64, 48, 320, 240], 640, 480) == Shape.box(100, 100, 599, 599)
    with pytest.raises(ValueError):
        from_coco_bbox([1, 2, -3, 4], 640, 480)
    with pytest.raises(ValueError):
        from_coco_bbox([1, 2, 3], 640, 480)
    assert box_from_pixels(300, 200, 100, 50, 640, 480).points[0] < box_from_pixels(300, 200, 100, 50, 640, 480).points[1]


# --- polygons -> quads -------------------------------------------------------------------------------

def brute_min_area(pts: np.ndarray, steps: int = 2000) -> float:
    best = math.inf
    for t in np.linspace(0, math.pi / 2, steps, endpoint=False):
        c, s = math.cos(t), math.sin(t)
        u = pts @ np.array([c, s])
        v = pts @ np.array([-s, c])
        best = min(best, (u.max() - u.min()) * (v.max() - v.min()))
    return best


polygons = st.lists(st.tuples(st.floats(0, 1000), st.floats(0, 1000)), min_size=3, max_size=12)


@given(polygons)
@settings(max_examples=60, deadline=None)
def test_min_area_rect_contains_points_and_is_minimal(poly):
    pts = np.array(poly)
    rect = min_area_rect(pts)
    e0, e1 = rect[1] - rect[0], rect[3] - rect[0]
    area = np.linalg.norm(e0) * np.linalg.norm(e1)
    diam = float(np.ptp(pts, axis=0).max()) + 1e-9
    assert abs(float(e0 @ e1)) <= 1e-6 * (diam ** 2 + 1)  # a rectangle
    assert np.allclose(rect[2], rect[1] + e1, atol=1e-6 * (diam + 1))
    # Every point inside (projections onto the rectangle's sides within [0, 1]).
    for v in (e0, e1):
        n2 = float(v @ v)
        if n2 > 1e-12:
            t = (pts - rect[0]) @ v / n2
            assert t.min() >= -1e-7 and t.max() <= 1 + 1e-7
    brute = brute_min_area(pts)
    step = math.pi / 2 / 2000
    assert area <= brute + 1e-6 * diam ** 2                 # at least as small as any sampled rotation
    assert brute <= area + diam ** 2 * step + 1e-6          # and the sampled search gets close to it


@given(st.floats(0, 1000), st.floats(0, 1000), st.floats(1, 300), st.floats(1, 300), st.floats(0, math.pi),
       st.integers(100, 4000), st.integers(100, 4000))
@settings(max_examples=80, deadline=None)
def test_polygon_to_quad_inside_range_and_clockwise(cx, cy, a, b, ang, w, h):
    c, s = math.cos(ang), math.sin(ang)
    corners = [(cx + x * c - y * s, cy + x * s + y * c) for x, y in ((-a, -b), (a, -b), (a, b), (-a, b))]
    shape = polygon_to_quad(corners, w, h)
    assert in_range(shape)
    assert validate(format_label(shape)) == []
    if shape.kind == "quad":
        p = np.array(shape.points, dtype=float)
        signed = sum(p[i, 0] * p[(i + 1) % 4, 1] - p[(i + 1) % 4, 0] * p[i, 1] for i in range(4))
        assert signed >= 0  # clockwise on screen (y down) or degenerate after rounding
        assert min(range(4), key=lambda k: (p[k].sum(), p[k, 1])) == 0  # starts at the upper-left corner


def test_polygon_to_quad_prefers_box_when_axis_aligned():
    poly = [(10, 10), (50, 10), (60, 10), (60, 40), (10, 40), (30, 25)]
    assert polygon_to_quad(poly, 100, 100) == Shape.box(100, 100, 599, 400)
    assert polygon_to_quad([(0, 0), (10, 0), (10, 5), (0, 5)]) == Shape.box(0, 0, 10, 5)
    diamond = polygon_to_quad([(100, 0), (200, 100), (100, 200), (0, 100)], 200, 200)
    assert diamond == Shape.quad([(500, 0), (999, 500), (500, 999), (0, 500)])


def test_polygon_to_quad_degenerate_inputs():
    assert polygon_to_quad([(5, 5)]) == Shape.box(5, 5, 5, 5)
    assert polygon_to_quad([(5, 5), (5, 5), (20, 5)]) == Shape.box(5, 5, 20, 5)
    with pytest.raises(ValueError):
        min_area_rect([])
    with pytest.raises(ValueError):
        min_area_rect([(0, float("nan"))])


def test_order_quad_is_clockwise_from_upper_left():
    got = order_quad([(10, 10), (0, 10), (0, 0), (10, 0)])
    assert got.tolist() == [[0, 0], [10, 0], [10, 10], [0, 10]]


def test_coco_polygon_parts_and_rle():
    seg = [[10, 10, 50, 10, 50, 30], [10, 30, 20, 20]]
    assert from_coco_polygon(seg, 100, 100) == Shape.box(100, 100, 500, 300)
    with pytest.raises(ValueError):
        from_coco_polygon({"counts": "abc", "size": [1, 1]}, 100, 100)  # type: ignore[arg-type]
    lab = coco_label("cat", 100, 100, bbox=[10, 10, 40, 20], segmentation=seg, prefer="quad")
    assert lab == Label((Shape.box(100, 100, 500, 300),), "cat")


# --- whole-text normalization and Qwen2-VL -------------------------------------------------------------

def test_normalize_text_repairs_readable_labels_only():
    text = ("a <|object_ref_start|>cat<|object_ref_end|> <|box_start|>(64,48),(320,240)<|box_end|> and "
            "<|quad_start|>(0,0),(64,0),(64,48),(0,48)<|quad_end|> broken <|box_start|>(1,2)<|box_end|>")
    out = normalize_text(text, width=640, height=480)
    assert out.startswith("a <|object_ref_start|>cat<|object_ref_end|><|box_start|>(100,100),(500,500)<|box_end|>")
    assert "<|box_start|>(000,000),(100,100)<|box_end|>" in out  # axis-aligned quad became a box
    assert out.endswith("broken <|box_start|>(1,2)<|box_end|>")  # unreadable: left for validate to report
    assert validate(out[:out.index(" broken")]) == []
    assert {p.code for p in validate(out)} == {"not_zero_padded", "wrong_point_count"}


@given(st.lists(st.tuples(*[st.integers(0, 1000)] * 4), min_size=1, max_size=4))
def test_from_qwen2vl_rescales_pads_and_orders(boxes):
    text = ", ".join(f"<|object_ref_start|>o{i}<|object_ref_end|><|box_start|>({a},{b}),({c},{d})<|box_end|>"
                     for i, (a, b, c, d) in enumerate(boxes))
    out = from_qwen2vl(text)
    assert validate(out) == []
    for lab, (a, b, c, d) in zip(parse(out), boxes):
        (x1, y1), (x2, y2) = lab.shapes[0].points
        assert (x1, x2) == tuple(sorted(round(v * 999 / 1000 + 1e-9) for v in (a, c)))
        assert (y1, y2) == tuple(sorted(round(v * 999 / 1000 + 1e-9) for v in (b, d)))


# --- JSON box lists -----------------------------------------------------------------------------------

def test_from_json_boxes_formats_and_scales():
    text = '```json\n[{"bbox_2d": [64, 48, 320, 240], "label": "cat"}, {"point_2d": [320, 240], "label": "dog"},' \
           ' {"bbox_2d": [0, 0, 64, 48], "label": "cat"}]\n```'
    labs = from_json_boxes(text, width=640, height=480)
    assert labs == [Label((Shape.box(100, 100, 500, 500),), "cat"), Label((Shape.point(500, 500),), "dog"),
                    Label((Shape.box(0, 0, 100, 100),), "cat")]
    grouped = from_json_boxes(text, width=640, height=480, group=True)
    assert [len(lab.shapes) for lab in grouped] == [2, 1]
    assert from_json_boxes([{"bbox": [0, 0, 500, 1000]}], source_max=1000) == [Label((Shape.box(0, 0, 500, 999),))]
    assert from_json_boxes({"box": [10, 10, 5, 5], "name": "x"}, box_format="xywh") == [
        Label((Shape.box(10, 10, 15, 15),), "x")]
    quad = from_json_boxes([{"polygon": [[100, 0], [200, 100], [100, 200], [0, 100]]}], width=200, height=200)
    assert quad[0].shapes[0].kind == "quad"
    with pytest.raises(ValueError):
        from_json_boxes([{"bbox_2d": [0, 0, 2000, 10]}])  # out of [0, 999] with no scale given
    with pytest.raises(ValueError):
        from_json_boxes([{"label": "no shape"}])
    # Names that would read as tags are made inert.
    assert from_json_boxes([{"point": [1, 2], "label": "a<|box_end|>"}])[0].object == "a< box_end >"


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)), min_size=1,
                max_size=5), sizes, sizes)
def test_json_boxes_always_valid(boxes, w, h):
    items = [{"bbox_2d": [a * w, b * h, c * w, d * h], "label": f"obj {i}"} for i, (a, b, c, d) in enumerate(boxes)]
    labs = from_json_boxes(items, width=w, height=h)
    assert all(in_range(s) for lab in labs for s in lab.shapes)
    assert validate(", ".join(format_label(lab) for lab in labs)) == []


# --- RefCOCO ------------------------------------------------------------------------------------------

REGIONS = [{"bbox": [10, 20, 100, 50], "sentences": [{"sent": "man on the left"}, {"sent": "guy in red"}]},
           {"bbox": [200, 100, 50, 50], "sentences": ["the dog"]},
           {"bbox": [0, 0, 10, 10], "sentences": []}]


def test_refcoco_tasks_are_deterministic_and_valid():
    a = refcoco_to_tasks(REGIONS * 20, random.Random(3), width=640, height=480)
    b = refcoco_to_tasks(REGIONS * 20, random.Random(3), width=640, height=480)
    assert a == b and len(a) == 40  # the region without an expression is skipped
    kinds = {t.kind for t in a}
    assert kinds == {"referring", "grounding"}
    for t in a:
        assert validate(t.prompt) == [] and validate(t.answer) == []
        if t.kind == "grounding":
            (lab,) = parse(t.answer)
            assert lab.object in t.prompt and lab.object in {"man on the left", "guy in red", "the dog"}
        else:
            assert len(parse(t.prompt)) == 1 and not parse(t.answer)


def test_refcoco_ratio_extremes_and_numpy_rng():
    box = from_coco_bbox(REGIONS[1]["bbox"], 640, 480)
    (ref,) = refcoco_to_tasks(REGIONS[1:2], np.random.default_rng(0), width=640, height=480, referring_ratio=1.0)
    assert ref.kind == "referring" and format_label(box) in ref.prompt and ref.answer == "the dog"
    (gr,) = refcoco_to_tasks(REGIONS[1:2], random.Random(0), width=640, height=480, referring_ratio=0.0)
    assert gr.answer == format_label(box, "the dog")
    assert gr.turns("llava", image=True)[0] == {"from": "human", "value": "<image>\n" + gr.prompt}
    assert gr.turns()[1] == {"role": "assistant", "content": gr.answer}
    with pytest.raises(ValueError):
        refcoco_to_tasks(REGIONS, random.Random(0), width=1, height=1, referring_ratio=2)


# --- negatives ----------------------------------------------------------------------------------------

VOCAB = ["person", "dog", "cat", "Traffic Light", "car", "dog"]


def test_absent_categories_excludes_present_and_mentioned():
    assert absent_categories(["DOG"], VOCAB) == ["person", "cat", "Traffic Light", "car"]
    # Named in the text counts as present; whole words only: "catalog" is not "cat".
    assert absent_categories([], VOCAB, text="A traffic light and a catalog") == ["person", "dog", "cat", "car"]


def test_make_negatives_draws_absent_categories_deterministically():
    a = make_negatives(["person"], VOCAB, random.Random(1), count=3)
    assert a == make_negatives(["person"], VOCAB, random.Random(1), count=3)
    assert len(a) == 3 and len({t.prompt for t in a}) == 3
    assert all(isinstance(t, GroundingTask) and t.kind == "negative" and "no such object" in t.answer for t in a)
    assert not any("person" in t.prompt for t in a)
    assert len(make_negatives(VOCAB, VOCAB, random.Random(1), count=3)) == 0


def test_negatives_for_ratio_mean():
    rng = random.Random(0)
    draws = [negatives_for_ratio(0.3, rng) for _ in range(4000)]
    assert set(draws) == {0, 1} and abs(sum(draws) / len(draws) - 0.3) < 0.03
    assert {negatives_for_ratio(2.0, rng) for _ in range(50)} == {2}
    with pytest.raises(ValueError):
        negatives_for_ratio(-1, rng)


VALUE_CODES = {"not_zero_padded", "coordinate_out_of_range", "negative_coordinate", "box_corners_out_of_order",
               "whitespace_in_label"}


@given(st.lists(st.tuples(st.sampled_from(["point", "box", "quad"]),
                          st.lists(st.integers(-50, 1200), min_size=8, max_size=8), st.booleans(), st.booleans()),
                min_size=1, max_size=4))
@settings(max_examples=150)
def test_normalize_text_repairs_every_value_problem(specs):
    # Labels with unpadded, negative, too-large values, swapped corners and stray whitespace...
    parts = []
    for kind, vals, pad, space in specs:
        n = {"point": 1, "box": 2, "quad": 4}[kind]
        fmt = (lambda v: f"{v:03d}") if pad else str
        body = ",".join(f"({fmt(vals[2 * i])},{fmt(vals[2 * i + 1])})" for i in range(n))
        parts.append(f"<|object_ref_start|>o<|object_ref_end|>{' ' if space else ''}<|{kind}_start|>{body}<|{kind}_end|>")
    text = "; ".join(parts)
    assert {p.code for p in validate(text)} <= VALUE_CODES
    # ...all come out valid, one label per input label, in [0, 999].
    out = normalize_text(text)
    assert validate(out) == []
    assert len(parse(out)) == len(specs)
