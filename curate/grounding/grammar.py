"""The grounding label grammar of openPangu-VL (seed 001, appendix A) and its writer.

A label is an optional object reference followed by one or more shapes, with no whitespace between
the tags and none inside a shape::

    <|object_ref_start|>red car<|object_ref_end|><|box_start|>(012,340),(560,780)<|box_end|>

Shapes: point ``(x,y)``, box ``(x1,y1),(x2,y2)`` (upper-left, lower-right) and quad (four corners,
clockwise from the upper-left preferred). Coordinates are integers in [0, 999] relative to the image,
written with three zero-padded digits (the seed's ablation: digit-wise tokens learn better). Object
names are natural language in any script; they must not contain tags.

The reader lives in ``parse.py``; this module holds the vocabulary and ``format_label``, which only
writes valid labels (it raises on bad values rather than emit text that ``validate`` would reject).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

REL_MAX = 999  # coordinates are integers in [0, REL_MAX]

OBJECT_REF = "object_ref"
SHAPE_POINTS: dict[str, int] = {"point": 1, "box": 2, "quad": 4}
GRAMMAR_NAMES = (OBJECT_REF, *SHAPE_POINTS)

REF_START, REF_END = "<|object_ref_start|>", "<|object_ref_end|>"

ShapeKind = Literal["point", "box", "quad"]
Point = tuple[int, int]

# A name must not read as a tag: no "<|" or "|>", and no grammar tag name next to a "|".
_TAG_IN_NAME = re.compile(r"<\||\|>|(?:object_ref|point|box|quad)_(?:start|end)\|")


def start_tag(name: str) -> str:
    return f"<|{name}_start|>"


def end_tag(name: str) -> str:
    return f"<|{name}_end|>"


@dataclass(frozen=True)
class Shape:
    """A point, box or quad in relative coordinates (integers, [0, 999] when valid)."""
    kind: ShapeKind
    points: tuple[Point, ...]

    @staticmethod
    def point(x: int, y: int) -> "Shape":
        return Shape("point", ((x, y),))

    @staticmethod
    def box(x1: int, y1: int, x2: int, y2: int) -> "Shape":
        return Shape("box", ((x1, y1), (x2, y2)))

    @staticmethod
    def quad(points: Sequence[Sequence[int]]) -> "Shape":
        return Shape("quad", tuple((int(p[0]), int(p[1])) for p in points))

    def coords(self) -> list[int]:
        return [c for p in self.points for c in p]


@dataclass(frozen=True)
class Label:
    """An optional object name and its shapes. ``span`` is where parse found it (ignored by ==)."""
    shapes: tuple[Shape, ...]
    object: str | None = None
    span: tuple[int, int] | None = field(default=None, compare=False)


def format_coord(v: int, pad: bool = True) -> str:
    return f"{v:03d}" if pad else str(v)


def format_shape(shape: Shape, *, pad: bool = True, check: bool = True) -> str:
    """One shape tag. ``check`` refuses values the grammar does not allow; ``pad=False`` writes ``8``
    instead of ``008`` (only for foreign formats such as Qwen2-VL's)."""
    if check:
        _check_shape(shape)
    body = ",".join(f"({format_coord(x, pad)},{format_coord(y, pad)})" for x, y in shape.points)
    return f"{start_tag(shape.kind)}{body}{end_tag(shape.kind)}"


def format_label(label: Label | Shape | Iterable[Shape], object: str | None = None, *,
                 pad: bool = True, check: bool = True) -> str:
    """Write one label: ``format_label([Shape.box(10, 20, 300, 400)], "cat")``.

    Accepts a Label, a single Shape or a sequence of shapes (then ``object`` names them)."""
    if isinstance(label, Label):
        shapes, obj = label.shapes, label.object if object is None else object
    elif isinstance(label, Shape):
        shapes, obj = (label,), object
    else:
        shapes, obj = tuple(label), object
    if not shapes:
        raise ValueError("a label needs at least one shape")
    ref = ""
    if obj is not None:
        if check:
            check_object_name(obj)
        ref = f"{REF_START}{obj}{REF_END}"
    return ref + "".join(format_shape(s, pad=pad, check=check) for s in shapes)


def format_labels(labels: Iterable[Label], sep: str = ", ", *, pad: bool = True) -> str:
    """Several labels in running text, joined by ``sep`` (which must not be only whitespace: two
    labels separated by a space read as one label with whitespace in it)."""
    if sep and sep.isspace():
        raise ValueError("labels separated by whitespace only would read as one label; use e.g. ', '")
    return sep.join(format_label(lab, pad=pad) for lab in labels)


def check_object_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"object name must be non-empty text, got {name!r}")
    if _TAG_IN_NAME.search(name):
        raise ValueError(f"object name must not contain tags: {name!r}")


def _check_shape(shape: Shape) -> None:
    want = SHAPE_POINTS.get(shape.kind)
    if want is None:
        raise ValueError(f"unknown shape {shape.kind!r}; the grammar has {', '.join(SHAPE_POINTS)}")
    if len(shape.points) != want:
        raise ValueError(f"a {shape.kind} has {want} point(s), got {len(shape.points)}")
    for x, y in shape.points:
        for v in (x, y):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= REL_MAX:
                raise ValueError(f"coordinate {v!r} is not an integer in [0, {REL_MAX}]")
    if shape.kind == "box":
        (x1, y1), (x2, y2) = shape.points
        if x1 > x2 or y1 > y2:
            raise ValueError(f"box corners out of order: {shape.points}")
