"""Grounding samples for the demo corpus: valid ones built through the converters, and planted invalid
ones, each with a different problem, so the demo report shows ``grounding_check`` rejecting them.

Every record id says what it is: ``grounding-007-valid-counting`` or
``grounding-012-invalid-box_corners_out_of_order``; ``expected_reason(id)`` turns that into the reason
the stage must give (``grounding:box_corners_out_of_order``) or None for valid samples.
"""
from __future__ import annotations

import math
import random
from typing import Any, Callable, Mapping, Sequence

from curate.grounding.convert import (RandomLike, from_coco_bbox, from_json_boxes, from_qwen2vl, pick,
                                      refcoco_to_tasks)
from curate.grounding.grammar import REF_END, REF_START, Label, Shape, end_tag, format_label, format_labels, start_tag
from curate.grounding.negatives import make_negatives
from curate.grounding.normalize import pixels_to_rel, polygon_to_quad

DEMO_VOCABULARY = ("person", "dog", "cat", "car", "bicycle", "chair", "cup", "bottle", "bird", "umbrella")
COUNT_PROMPT = "How many {name} are there in the image? Point to them and output the total count."
DETECT_PROMPT = "Detect every object in the image and output its name and bounding box."
TEXT_PROMPT = "Where is the text \"{text}\"? Output its quadrilateral."

VALID_KINDS = ("grounding", "referring", "detection", "counting", "quad", "negative", "qwen2vl", "json_boxes")
# Each planted sample's first problem, i.e. the reason grounding_check gives it.
PLANTED_CODES = ("coordinate_out_of_range", "not_zero_padded", "unbalanced_tag", "whitespace_in_label",
                 "box_corners_out_of_order", "nested_tag", "mismatched_tag")


def expected_reason(record_id: str) -> str | None:
    """``grounding:<code>`` for a planted invalid record, None for a valid one."""
    if "-invalid-" in record_id:
        return "grounding:" + record_id.rsplit("-invalid-", 1)[1]
    return None


def _uniform(rng: RandomLike, a: float, b: float) -> float:
    return a + (b - a) * rng.random()


def _objects(info: Mapping[str, Any], rng: RandomLike) -> list[dict[str, Any]]:
    """The image's objects as ``{name, bbox: [x, y, w, h]}`` in pixels; synthesized when not given."""
    objs = [o for o in info.get("objects") or [] if o.get("name") and o.get("bbox")]
    if len(objs) >= 2:
        return objs
    w, h = float(info["width"]), float(info["height"])
    names = list(DEMO_VOCABULARY)
    while len(objs) < 3:
        name = names.pop(pick(rng, len(names)))
        bw, bh = _uniform(rng, 0.15, 0.4) * w, _uniform(rng, 0.15, 0.4) * h
        x, y = _uniform(rng, 0.12, 0.95) * (w - bw), _uniform(rng, 0.02, 0.95) * (h - bh)
        objs.append({"name": name, "bbox": [round(x, 1), round(y, 1), round(bw, 1), round(bh, 1)]})
    return objs


def _box(obj: Mapping[str, Any], info: Mapping[str, Any]) -> Shape:
    return from_coco_bbox(obj["bbox"], info["width"], info["height"])


def _pair(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": answer}]


# --- valid samples ------------------------------------------------------------------------------------

def _grounding(info, objs, rng):
    regions = [{"bbox": o["bbox"], "sentences": [f"the {o['name']}"]} for o in objs[:1]]
    task = refcoco_to_tasks(regions, rng, width=info["width"], height=info["height"], referring_ratio=0.0)[0]
    return task.turns("llava", image=True)


def _referring(info, objs, rng):
    regions = [{"bbox": o["bbox"], "sentences": [f"a {o['name']}"]} for o in objs[:1]]
    task = refcoco_to_tasks(regions, rng, width=info["width"], height=info["height"], referring_ratio=1.0)[0]
    return task.turns("llava", image=True)


def _detection(info, objs, rng):
    labels = [Label((_box(o, info),), o["name"]) for o in objs]
    return _pair(DETECT_PROMPT, format_labels(labels))


def _counting(info, objs, rng):
    o = objs[0]
    x, y, bw, bh = o["bbox"]
    # Two points inside the object's box (a pointing-and-counting answer, seed 001 B.3 prompt).
    pts = [pixels_to_rel(x + bw * f, y + bh * g, info["width"], info["height"]) for f, g in ((0.3, 0.4), (0.7, 0.6))]
    label = format_label([Shape.point(*p) for p in pts], o["name"])
    return _pair(COUNT_PROMPT.format(name=o["name"]), f"{label} There are 2 {o['name']}s.")


def _quad(info, objs, rng):
    w, h = float(info["width"]), float(info["height"])
    cx, cy = w * _uniform(rng, 0.4, 0.6), h * _uniform(rng, 0.4, 0.6)
    half_w, half_h, ang = w * 0.2, h * 0.06, math.radians(_uniform(rng, 12, 30))
    ca, sa = math.cos(ang), math.sin(ang)
    # A rotated text line as an annotator's polygon (6 points: corners plus two mid-edge points).
    local = [(-half_w, -half_h), (0, -half_h), (half_w, -half_h), (half_w, half_h), (0, half_h), (-half_w, half_h)]
    poly = [(cx + a * ca - b * sa, cy + a * sa + b * ca) for a, b in local]
    shape = polygon_to_quad(poly, w, h)
    return _pair(TEXT_PROMPT.format(text="OPEN"), format_label(shape, "OPEN"))


def _negative(info, objs, rng):
    task = make_negatives([o["name"] for o in objs], DEMO_VOCABULARY, rng)[0]
    return task.turns("llava", image=True)


def _qwen2vl(info, objs, rng):
    o = objs[0]
    x, y, bw, bh = o["bbox"]
    w, h = info["width"], info["height"]
    q = [int(x / w * 1000), int(y / h * 1000), int((x + bw) / w * 1000), int((y + bh) / h * 1000)]
    raw = f"{REF_START}{o['name']}{REF_END}<|box_start|>({q[0]},{q[1]}),({q[2]},{q[3]})<|box_end|>"
    return _pair(f"Locate the {o['name']}.", from_qwen2vl(raw))


def _json_boxes(info, objs, rng):
    items = [{"bbox_2d": [o["bbox"][0], o["bbox"][1], o["bbox"][0] + o["bbox"][2], o["bbox"][1] + o["bbox"][3]],
              "label": o["name"]} for o in objs]
    labels = from_json_boxes(items, width=info["width"], height=info["height"])
    return _pair("Output the bounding boxes of all objects.", format_labels(labels))


# --- planted problems ---------------------------------------------------------------------------------

def _planted(code: str) -> Callable[[Mapping[str, Any], list[dict[str, Any]], RandomLike], list[dict[str, str]]]:
    def build(info, objs, rng):
        o = objs[0]
        (x1, y1), (x2, y2) = _box(o, info).points
        # Strictly ordered corners inside [0, 999], so that each planted change is the only problem.
        x1, y1 = min(x1, 990), min(y1, 990)
        x2, y2 = max(x2, x1 + 5), max(y2, y1 + 5)
        name = o["name"]
        ref = f"{REF_START}{name}{REF_END}"
        good_box = format_label(Shape.box(x1, y1, x2, y2))
        if code == "coordinate_out_of_range":
            big = max(1000, int(info["width"]), int(info["height"])) + 1  # above 999 and outside the image
            answer = f"{ref}<|box_start|>({x1:03d},{y1:03d}),({big},{y2:03d})<|box_end|>"
        elif code == "not_zero_padded":
            answer = ref + format_label(Shape.box(min(7 + pick(rng, 60), x2), y1, x2, y2), pad=False)
        elif code == "unbalanced_tag":
            answer = (ref + good_box)[: -len(end_tag("box"))]
        elif code == "whitespace_in_label":
            answer = f"{ref} {good_box}"
        elif code == "box_corners_out_of_order":
            answer = ref + format_label(Shape.box(x2, y2, x1, y1), check=False)
        elif code == "nested_tag":
            answer = f"{REF_START}{name}{good_box}{REF_END}"
        elif code == "mismatched_tag":
            answer = f"{ref}{start_tag('box')}({x1:03d},{y1:03d}),({x2:03d},{y2:03d}){end_tag('quad')}"
        else:
            raise ValueError(code)
        return _pair(f"Please provide the bounding box coordinate of the region this sentence describes: "
                     f"the {name}", answer)
    return build


_VALID: dict[str, Callable] = {"grounding": _grounding, "referring": _referring, "detection": _detection,
                               "counting": _counting, "quad": _quad, "negative": _negative,
                               "qwen2vl": _qwen2vl, "json_boxes": _json_boxes}


def make_demo_records(image_infos: Sequence[Mapping[str, Any]], rng: RandomLike | int = 0
                      ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """LLaVA-style grounding records over the given images (``{path, width, height, objects?}``; objects
    are ``{name, bbox: [x, y, w, h]}`` pixels, synthesized when absent): one of each valid kind, then
    one per planted problem, cycling through the images. Returns the records and ``{id: reason}`` for
    the planted ones (the reason ``grounding_check`` must give). Deterministic for a seeded `rng`."""
    if not image_infos:
        raise ValueError("make_demo_records needs at least one image")
    gen: RandomLike = random.Random(rng) if isinstance(rng, int) else rng
    plan: list[tuple[str, Callable]] = [(f"valid-{k}", _VALID[k]) for k in VALID_KINDS]
    plan += [(f"invalid-{code}", _planted(code)) for code in PLANTED_CODES]
    records = []
    for i, (tag, build) in enumerate(plan):
        info = image_infos[i % len(image_infos)]
        objs = _objects(info, gen)
        records.append({"id": f"grounding-{i:03d}-{tag}", "image": info["path"], "width": int(info["width"]),
                        "height": int(info["height"]), "conversations": build(info, objs, gen)})
    expected = {r["id"]: reason for r in records if (reason := expected_reason(r["id"])) is not None}
    return records, expected
