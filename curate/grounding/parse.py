"""Reading and checking grounding labels: one regex tokenizer pass plus a small state machine.

``scan`` walks the special tags of a text once, in order, and yields both the labels it could read and
every problem it met, so ``parse`` and ``validate`` share one code path and cannot disagree. Text
without a ``|`` has no tags and costs one substring test — most samples of a mixed corpus.

What the scanner decides (and why):

* A label is a run of tags with nothing between them: an optional object reference, then shapes. An
  object reference starts a new label; a shape right after a closed tag continues the current one.
* Whitespace-only text between a closing tag and a following shape tag is ``whitespace_in_label``:
  the seed forbids whitespace between consecutive tags, and such a gap is almost always a label that
  was meant to be one. (Separate labels are separated by words or punctuation, e.g. ``", "``.)
* An object reference with no shape after it is not a label and not a problem: prompts name objects
  that way ("Locate <|object_ref_start|>the dog<|object_ref_end|>").
* Chat-template tags such as ``<|im_start|>`` and ``<|vision_start|>`` or ``<|image_pad|>`` are not
  grounding tags and are ignored; any other ``<|X_start|>`` is an ``unknown_shape``.
* A tag that opens inside another is ``nested_tag`` and the outer one is abandoned, so one mistake
  does not hide the labels after it; a wrong closing tag is ``mismatched_tag``.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field

from curate.grounding.grammar import OBJECT_REF, REL_MAX, SHAPE_POINTS, Label, Shape
from curate.grounding.problems import STRUCTURAL_CODES, GroundingSyntaxError, Problem

_NAMES = "object_ref|point|box|quad"
TOKEN_RE = re.compile(
    r"<\|([A-Za-z0-9_]+)\|>"                              # 1: any well-formed special tag
    rf"|(<\|(?:{_NAMES})_(?:start|end)\|?>?"             # 2: a grounding tag with broken delimiters
    rf"|<?(?:{_NAMES})_(?:start|end)\|>?)"
)
JSON_FENCE_RE = re.compile(r"```json[ \t]*\n?(.*?)```", re.DOTALL)

# Special tags of chat templates (Qwen2-VL family) that may appear in text and are not grounding tags.
IGNORED_TAG_BASES = frozenset({"im", "vision"})
_GRAMMAR_BASES = frozenset({OBJECT_REF, *SHAPE_POINTS})

_COORD = "([0-9]{3}),([0-9]{3})"
_FAST = {kind: re.compile(",".join([rf"\({_COORD}\)"] * n)) for kind, n in SHAPE_POINTS.items()}
_PAIR_LIST_RE = re.compile(r"\([^()]*\)(?:,\([^()]*\))*")
_PAIR_RE = re.compile(r"\(([^()]*)\)")
_INT_RE = re.compile(r"-?[0-9]+")
_WS_RE = re.compile(r"\s")


@dataclass
class ScanResult:
    labels: list[Label]
    problems: list[Problem]


@dataclass
class _Building:
    start: int
    last_end: int
    object: str | None = None
    shapes: list[Shape] = field(default_factory=list)
    ok: bool = True


@functools.lru_cache(maxsize=4096)  # tag names repeat: a dict lookup per tag after the first
def _classify(name: str) -> tuple[str, bool] | str | None:
    """(base, is_start) for grammar or unknown-shape tags, "malformed" for a near-miss, None to ignore."""
    if name.endswith("_start"):
        base, is_start = name[:-6], True
    elif name.endswith("_end"):
        base, is_start = name[:-4], False
    else:
        base, is_start = None, False
    if base in SHAPE_POINTS or base == OBJECT_REF:
        return base, is_start
    low = name.lower()
    if any(low == f"{n}_start" or low == f"{n}_end" or low.startswith(f"{n}_") for n in
           (OBJECT_REF, *SHAPE_POINTS)):
        return "malformed"
    if base is not None and base and base.lower() not in IGNORED_TAG_BASES:
        return base, is_start
    return None


def scan(text: str, *, require_padding: bool = True, width: int | None = None,
         height: int | None = None) -> ScanResult:
    """Read every label of `text` and collect every problem (see the module docstring for the rules).

    `width`/`height` (pixels) only refine the code of coordinates above 999: ``pixel_coordinates``
    when the value fits the image (an absolute label that was never normalized), else
    ``coordinate_out_of_range``."""
    labels: list[Label] = []
    problems: list[Problem] = []
    if "|" not in text:
        return ScanResult(labels, problems)
    cur: _Building | None = None
    open_tag: tuple[str, int, int] | None = None  # (base, tag start, content start)

    def finish() -> None:
        nonlocal cur
        if cur is not None and cur.shapes and cur.ok:
            labels.append(Label(tuple(cur.shapes), cur.object, span=(cur.start, cur.last_end)))
        cur = None

    def broke(code: str, message: str, offset: int) -> None:
        problems.append(Problem(code, message, offset))
        if cur is not None:
            cur.ok = False

    for m in TOKEN_RE.finditer(text):
        name = m.group(1)
        tag_start, tag_end = m.span()
        if name is None:
            broke("malformed_tag", f"{m.group(0)!r} is not a well-formed tag", tag_start)
            continue
        cls = _classify(name)
        if cls is None:
            continue
        if cls == "malformed":
            broke("malformed_tag", f"{m.group(0)!r} is not a grounding tag", tag_start)
            continue
        base, is_start = cls
        known = base in _GRAMMAR_BASES
        if open_tag is not None:
            obase, ostart, cstart = open_tag
            if not is_start and base == obase:
                open_tag = None
                content = text[cstart:tag_start]
                assert cur is not None
                cur.last_end = tag_end
                if obase == OBJECT_REF:
                    if not content.strip():
                        broke("empty_object_ref", "object reference has no name", ostart)
                    cur.object = content
                elif obase in SHAPE_POINTS:
                    shape = _read_shape(obase, content, cstart, problems, require_padding, width, height)
                    if shape is None:
                        cur.ok = False
                    else:
                        cur.shapes.append(shape)
                continue
            open_tag = None
            if is_start:
                broke("nested_tag", f"<|{base}_start|> opens inside <|{obase}_start|> (opened at {ostart})",
                      tag_start)
                finish()
            else:
                broke("mismatched_tag", f"{m.group(0)} closes <|{obase}_start|> opened at {ostart}", tag_start)
                finish()
                continue
        # No tag is open here.
        if not is_start:
            code = "unbalanced_tag" if known else "unknown_shape"
            broke(code, f"{m.group(0)} without a matching start tag", tag_start)
            finish()
            continue
        if cur is not None and base != OBJECT_REF and cur.last_end <= tag_start:
            gap = text[cur.last_end:tag_start]
            if gap and gap.isspace():
                # Reported, but the label stays readable: normalize_text rewrites it without the gap.
                problems.append(Problem("whitespace_in_label",
                                        f"whitespace between consecutive tags of one label: {gap!r}", cur.last_end))
            elif gap:
                finish()
        else:
            finish()
        if cur is None:
            cur = _Building(start=tag_start, last_end=tag_end)
        if not known:
            broke("unknown_shape", f"{m.group(0)}: the grammar has point, box and quad", tag_start)
        open_tag = (base, tag_start, tag_end)
    if open_tag is not None:
        broke("unbalanced_tag", f"<|{open_tag[0]}_start|> is never closed", open_tag[1])
    finish()
    problems.sort(key=lambda p: p.offset)
    return ScanResult(labels, problems)


def _read_shape(kind: str, content: str, offset: int, problems: list[Problem], require_padding: bool,
                width: int | None, height: int | None) -> Shape | None:
    """The shape inside one tag pair, or None when it cannot be read; appends its problems."""
    want = SHAPE_POINTS[kind]
    fast = _FAST[kind].fullmatch(content)
    if fast is not None:
        vals = [int(g) for g in fast.groups()]
        shape = Shape(kind, tuple(zip(vals[0::2], vals[1::2])))  # type: ignore[arg-type]
        _check_box_order(shape, offset, problems)
        return shape
    ws = _WS_RE.search(content)
    if ws is not None:
        problems.append(Problem("whitespace_in_label", f"whitespace inside a {kind} tag", offset + ws.start()))
        content = "".join(content.split())
    if not content:
        problems.append(Problem("wrong_point_count", f"empty {kind}: a {kind} has {want} point(s)", offset))
        return None
    if not _PAIR_LIST_RE.fullmatch(content):
        if (content[0] != "(" or content[-1] != ")" or content.count("(") != content.count(")")):
            problems.append(Problem("missing_parentheses", f"{content[:40]!r}: each point is written (x,y)",
                                    offset))
        else:
            problems.append(Problem("malformed_coordinates",
                                    f"{content[:40]!r}: points are (x,y) separated by ','", offset))
        return None
    pairs = _PAIR_RE.findall(content)
    points: list[tuple[int, int]] = []
    ok = True
    for inner in pairs:
        parts = inner.split(",")
        if len(parts) != 2:
            problems.append(Problem("malformed_coordinates", f"({inner[:30]}) is not an (x,y) pair", offset))
            ok = False
            continue
        pt = []
        for axis, s in enumerate(parts):
            if not _INT_RE.fullmatch(s):
                problems.append(Problem("non_integer_coordinate", f"{s[:20]!r} is not an integer", offset))
                ok = False
                continue
            v = int(s)
            pt.append(v)
            if v < 0:
                problems.append(Problem("negative_coordinate", f"{s} is below 0", offset))
            elif v > REL_MAX:
                size = width if axis == 0 else height
                if size is not None and v <= size:
                    problems.append(Problem("pixel_coordinates", f"{s} is above {REL_MAX} but inside the "
                                            f"{'width' if axis == 0 else 'height'} {size}: not normalized", offset))
                else:
                    problems.append(Problem("coordinate_out_of_range", f"{s} is above {REL_MAX}", offset))
            elif require_padding and len(s) != 3:
                problems.append(Problem("not_zero_padded", f"{s!r} is not written with three digits", offset))
        if len(pt) == 2:
            points.append((pt[0], pt[1]))
    if len(pairs) != want:
        problems.append(Problem("wrong_point_count", f"a {kind} has {want} point(s), got {len(pairs)}", offset))
        return None
    if not ok:
        return None
    shape = Shape(kind, tuple(points))  # type: ignore[arg-type]
    _check_box_order(shape, offset, problems)
    return shape


def _check_box_order(shape: Shape, offset: int, problems: list[Problem]) -> None:
    if shape.kind == "box":
        (x1, y1), (x2, y2) = shape.points
        if x1 > x2 or y1 > y2:
            problems.append(Problem("box_corners_out_of_order",
                                    f"({x1},{y1}),({x2},{y2}): the first corner must be upper-left", offset))


def parse(text: str, *, strict: bool = True) -> list[Label]:
    """The labels in `text`, in order, each with its ``span``.

    ``strict`` raises GroundingSyntaxError when some label cannot be read (unbalanced, nested or
    unknown tags, malformed coordinates...). Values are returned as written: a coordinate of 1000 or an
    unpadded ``8`` parses — ``validate`` is the checker. ``strict=False`` skips unreadable labels."""
    result = scan(text, require_padding=False)
    if strict:
        bad = [p for p in result.problems if p.code in STRUCTURAL_CODES]
        if bad:
            raise GroundingSyntaxError(bad)
    return result.labels


def validate(text: object, width: int | None = None, height: int | None = None, *,
             require_padding: bool = True, check_json: bool = True) -> list[Problem]:
    """Every problem of `text` in text order; empty when valid. Never raises.

    Coordinates are relative, so "inside the image" means inside [0, 999] whatever the image size.
    `width`/`height` (pixels) add one thing: a coordinate above 999 that fits the image is reported as
    ``pixel_coordinates`` (an unnormalized label) instead of ``coordinate_out_of_range``.
    ``check_json`` also parses each ```json fenced block (the seed's "structured outputs parseable")."""
    if not isinstance(text, str):
        return [Problem("not_text", f"expected text, got {type(text).__name__}")]
    problems: list[Problem] = []
    w, h = width, height
    if w is not None or h is not None:
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h)):
            problems.append(Problem("invalid_image_size", f"width={w!r} height={h!r}: need positive integers"))
            w = h = None
    problems += scan(text, require_padding=require_padding, width=w, height=h).problems
    if check_json and "```json" in text:
        for m in JSON_FENCE_RE.finditer(text):
            try:
                json.loads(m.group(1))
            except (ValueError, RecursionError) as exc:
                problems.append(Problem("invalid_json", f"```json block does not parse: {exc}"[:200], m.start()))
        problems.sort(key=lambda p: p.offset)
    return problems


def has_grounding(text: str | None) -> bool:
    """Cheap test: does the text contain any grounding tag at all?"""
    return bool(text) and "|" in text and any(f"<|{n}_" in text for n in ("object_ref", *SHAPE_POINTS))
