"""Converters from common grounding sources into the grammar.

* COCO: ``bbox`` is ``[x, y, w, h]`` in pixels; ``segmentation`` polygons are flat ``[x1, y1, x2, y2, ...]``
  lists (an object may have several parts; RLE masks are not polygons and are refused).
* RefCOCO-style referring expressions: each region is randomly made a *referring* task (box in,
  caption out) or a *grounding* task (caption in, box out), as MindVL does with UMG-41M (seed 000,
  B.1.4). The grounding prompt is the one openPangu-VL evaluates with (seed 001, B.2).
* Qwen2-VL: the same tags with unpadded coordinates on a 0..1000 scale.
* JSON box lists (Qwen2.5-VL style ``[{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}]``, also
  ``point_2d``, ``bbox``/``box``/``point``, ``quad``/``polygon``).

Converters return shapes/labels (structure) or text (text -> text); ``format_label`` writes labels.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, Protocol, Sequence

from curate.grounding.grammar import Label, Shape, format_label
from curate.grounding.normalize import (box_from_pixels, normalize_text, pixels_to_rel, polygon_to_quad,
                                        rescale)

GROUNDING_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: {expression}"
REFERRING_PROMPT = "Please provide a short description for this region: {region}"


class RandomLike(Protocol):
    """``random.Random`` or ``numpy.random.Generator``: both have ``random() -> float in [0, 1)``."""

    def random(self) -> float: ...


def pick(rng: RandomLike, n: int) -> int:
    """Uniform index in range(n) from any RandomLike (keeps numpy and stdlib generators interchangeable)."""
    return min(int(rng.random() * n), n - 1)


@dataclass(frozen=True)
class GroundingTask:
    """One question/answer pair built from an annotation. ``kind``: grounding | referring | negative."""
    kind: str
    prompt: str
    answer: str

    def turns(self, style: Literal["record", "llava"] = "record", image: bool = False) -> list[dict[str, str]]:
        """The pair as conversation turns: record style ``{role, content}`` (mmcurate's schema) or LLaVA
        style ``{from, value}``. ``image`` prefixes the question with the ``<image>`` placeholder."""
        q = f"<image>\n{self.prompt}" if image else self.prompt
        if style == "llava":
            return [{"from": "human", "value": q}, {"from": "gpt", "value": self.answer}]
        return [{"role": "user", "content": q}, {"role": "assistant", "content": self.answer}]


# --- COCO -------------------------------------------------------------------------------------------

def from_coco_bbox(bbox: Sequence[float], width: float, height: float) -> Shape:
    """COCO ``[x, y, w, h]`` (pixels) -> box in [0, 999] with the upper-left corner first."""
    if len(bbox) != 4:
        raise ValueError(f"COCO bbox has 4 numbers [x, y, w, h], got {list(bbox)!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise ValueError(f"COCO bbox has negative size: {list(bbox)!r}")
    return box_from_pixels(x, y, x + w, y + h, width, height)


def from_coco_polygon(segmentation: Sequence[Sequence[float]] | Sequence[float], width: float,
                      height: float) -> Shape:
    """COCO polygon segmentation (one flat list or a list of parts) -> min-area quad, or a box when
    that quad is axis-aligned."""
    if isinstance(segmentation, Mapping):
        raise ValueError("RLE segmentation is a mask, not a polygon; convert the bbox instead")
    parts = segmentation if segmentation and isinstance(segmentation[0], (list, tuple)) else [segmentation]
    points: list[tuple[float, float]] = []
    for part in parts:
        flat = [float(v) for v in part]  # type: ignore[union-attr]
        if len(flat) % 2:
            raise ValueError("a COCO polygon is a flat list of x, y pairs (odd length given)")
        points += list(zip(flat[0::2], flat[1::2]))
    if not points:
        raise ValueError("empty polygon")
    return polygon_to_quad(points, width, height)


def coco_label(name: str | None, width: float, height: float, *, bbox: Sequence[float] | None = None,
               segmentation: Any = None, prefer: Literal["box", "quad"] = "box") -> Label:
    """One COCO annotation as a label: the bbox, or with ``prefer="quad"`` the polygon's quad."""
    if prefer == "quad" and segmentation and not isinstance(segmentation, Mapping):
        shape = from_coco_polygon(segmentation, width, height)
    elif bbox is not None:
        shape = from_coco_bbox(bbox, width, height)
    else:
        raise ValueError("annotation has neither a usable bbox nor a polygon")
    return Label((shape,), name)


# --- RefCOCO ----------------------------------------------------------------------------------------

def _expressions(region: Mapping[str, Any]) -> list[str]:
    raw = region.get("sentences") or region.get("expressions") or region.get("refs") or []
    if isinstance(raw, str):
        raw = [raw]
    out = []
    for s in raw:
        text = s.get("sent") or s.get("raw") if isinstance(s, Mapping) else s
        if isinstance(text, str) and text.strip():
            out.append(" ".join(text.split()))
    return out


def refcoco_to_tasks(regions: Iterable[Mapping[str, Any]], rng: RandomLike, *, width: float, height: float,
                     referring_ratio: float = 0.5, grounding_prompt: str = GROUNDING_PROMPT,
                     referring_prompt: str = REFERRING_PROMPT) -> list[GroundingTask]:
    """One task per region: with probability `referring_ratio` a referring task (box in the question,
    expression as answer), otherwise a grounding task (expression in, labelled box out).

    A region is ``{"bbox": [x, y, w, h] (pixels), "sentences": [...]}`` (RefCOCO refs joined with their
    instance; sentences as strings or ``{"sent": ...}``); one expression is drawn per region. Regions
    without an expression are skipped. Deterministic for a seeded `rng`."""
    if not 0.0 <= referring_ratio <= 1.0:
        raise ValueError(f"referring_ratio must be in [0, 1], got {referring_ratio}")
    tasks = []
    for region in regions:
        exprs = _expressions(region)
        if not exprs or region.get("bbox") is None:
            continue
        expr = exprs[pick(rng, len(exprs))]
        box = from_coco_bbox(region["bbox"], width, height)
        if rng.random() < referring_ratio:
            tasks.append(GroundingTask("referring", referring_prompt.format(region=format_label(box)), expr))
        else:
            tasks.append(GroundingTask("grounding", grounding_prompt.format(expression=expr),
                                       format_label(box, _safe_name(expr))))
    return tasks


def _safe_name(name: str) -> str:
    """Object names come from annotators: every tag needs a '|', so replacing it makes the name inert."""
    cleaned = " ".join(name.replace("|", " ").split())
    if not cleaned:
        raise ValueError(f"object name {name!r} is empty after cleaning")
    return cleaned


# --- Qwen2-VL ---------------------------------------------------------------------------------------

QWEN2VL_SCALE = 1000


def from_qwen2vl(text: str) -> str:
    """Qwen2-VL grounding text (same tags, ``(x1,y1),(x2,y2)`` on 0..1000, unpadded) -> this grammar:
    values rescaled to [0, 999], three-digit padding, corners ordered. Other text is kept."""
    return normalize_text(text, source_max=QWEN2VL_SCALE)


# --- JSON box lists ---------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_BOX_KEYS = ("bbox_2d", "bbox", "box")
_POINT_KEYS = ("point_2d", "point")
_POLY_KEYS = ("quad", "polygon")
_NAME_KEYS = ("label", "name", "category", "object")


def from_json_boxes(data: str | Sequence[Mapping[str, Any]] | Mapping[str, Any], *, width: float | None = None,
                    height: float | None = None, source_max: float | None = None,
                    box_format: Literal["xyxy", "xywh"] = "xyxy", group: bool = False) -> list[Label]:
    """A JSON list of objects -> labels. Coordinates are pixels when `width`/`height` are given, on
    0..`source_max` when that is given, else already in [0, 999]. `data` may be JSON text (optionally
    in a ```json fence), one object or a list. ``group`` merges objects with the same name into one
    label with several shapes (first-seen order)."""
    if isinstance(data, str):
        fenced = _FENCE.search(data)
        data = json.loads(fenced.group(1) if fenced else data)
    items = [data] if isinstance(data, Mapping) else list(data)  # type: ignore[arg-type]
    if (width is None) != (height is None):
        raise ValueError("give both width and height, or neither")

    def rel(x: float, y: float) -> tuple[int, int]:
        if width is not None and height is not None:
            return pixels_to_rel(x, y, width, height)
        if source_max is not None:
            return rescale(x, source_max), rescale(y, source_max)
        xi, yi = int(round(float(x))), int(round(float(y)))
        if not (0 <= xi <= 999 and 0 <= yi <= 999):
            raise ValueError(f"({x}, {y}) is outside [0, 999]; give width/height or source_max")
        return xi, yi

    labels: list[Label] = []
    by_name: dict[str, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"item {i} is not an object: {item!r}")
        name = next((str(item[k]) for k in _NAME_KEYS if item.get(k) is not None), None)
        shape = _json_shape(item, i, rel, box_format, width, height, source_max)
        name = _safe_name(name) if name is not None else None
        if group and name is not None and name in by_name:
            j = by_name[name]
            labels[j] = Label(labels[j].shapes + (shape,), name)
            continue
        if name is not None:
            by_name.setdefault(name, len(labels))
        labels.append(Label((shape,), name))
    return labels


def _json_shape(item: Mapping[str, Any], i: int, rel: Any, box_format: str, width: float | None,
                height: float | None, source_max: float | None) -> Shape:
    box = next((item[k] for k in _BOX_KEYS if item.get(k) is not None), None)
    if box is not None:
        if len(box) != 4:
            raise ValueError(f"item {i}: a box has 4 numbers, got {box!r}")
        x1, y1, a, b = (float(v) for v in box)
        x2, y2 = (x1 + a, y1 + b) if box_format == "xywh" else (a, b)
        (p1x, p1y), (p2x, p2y) = rel(min(x1, x2), min(y1, y2)), rel(max(x1, x2), max(y1, y2))
        return Shape.box(p1x, p1y, p2x, p2y)
    point = next((item[k] for k in _POINT_KEYS if item.get(k) is not None), None)
    if point is not None:
        if len(point) != 2:
            raise ValueError(f"item {i}: a point has 2 numbers, got {point!r}")
        return Shape.point(*rel(float(point[0]), float(point[1])))
    poly = next((item[k] for k in _POLY_KEYS if item.get(k) is not None), None)
    if poly is not None:
        pts = [(float(p[0]), float(p[1])) for p in poly] if poly and isinstance(poly[0], (list, tuple)) \
            else list(zip(map(float, poly[0::2]), map(float, poly[1::2])))
        if width is not None and height is not None:
            return polygon_to_quad(pts, width, height)
        if source_max is not None:
            pts = [(x / source_max * 999, y / source_max * 999) for x, y in pts]
        return polygon_to_quad(pts)
    raise ValueError(f"item {i} has no box ({'/'.join(_BOX_KEYS)}), point or polygon")
