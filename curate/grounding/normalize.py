"""Coordinates into the grammar's space: pixels or other scales -> integers in [0, 999]; polygons -> quads.

Mapping: a pixel coordinate ``x`` in [0, width] becomes ``round(x / width * 999)``, so the image's left
edge is 0 and its right edge 999 (the seed: "normalized to integers in [0, 999] based on the image
resolution"). Values slightly outside the image (COCO boxes often overhang by half a pixel) are
clamped; ``clamp=False`` raises instead.

Polygons become the minimum-area enclosing rectangle, computed in *pixel* space (a rectangle there is
what the annotator drew; anisotropic scaling to [0, 999] would change which rectangle is smallest) and
then mapped. The rectangle comes from the convex hull: a minimum-area enclosing rectangle has a side
collinear with a hull edge (Freeman & Shapira 1975), so trying every hull edge direction — vectorised
in numpy, the same answer rotating calipers give — finds it exactly, without OpenCV. When the result
is axis-aligned (after rounding) a box is returned: the seed prefers a box whenever one fits.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from curate.grounding.grammar import REL_MAX, Label, Shape, format_label
from curate.grounding.parse import scan


def to_rel(v: float, size: float, *, clamp: bool = True) -> int:
    """One pixel coordinate (0..size) -> integer in [0, 999]."""
    if not (size > 0) or not math.isfinite(size):
        raise ValueError(f"image size must be positive, got {size!r}")
    if not math.isfinite(v):
        raise ValueError(f"coordinate {v!r} is not finite")
    r = math.floor(v / size * REL_MAX + 0.5)
    if not 0 <= r <= REL_MAX:
        if not clamp:
            raise ValueError(f"coordinate {v} is outside the image (size {size})")
        r = min(max(r, 0), REL_MAX)
    return r


def pixels_to_rel(x: float, y: float, width: float, height: float, *, clamp: bool = True) -> tuple[int, int]:
    """Absolute pixel point -> relative (x, y) in [0, 999]."""
    return to_rel(x, width, clamp=clamp), to_rel(y, height, clamp=clamp)


def rel_to_pixels(x: float, y: float, width: float, height: float) -> tuple[float, float]:
    """Relative (x, y) in [0, 999] -> pixel position (inverse of pixels_to_rel up to rounding)."""
    return x / REL_MAX * width, y / REL_MAX * height


def rescale(v: float, source_max: float, *, clamp: bool = True) -> int:
    """A coordinate on another relative scale (e.g. Qwen2-VL's 0..1000, or 0..1) -> [0, 999]."""
    return to_rel(v, source_max, clamp=clamp)


def box_from_pixels(x1: float, y1: float, x2: float, y2: float, width: float, height: float) -> Shape:
    """Pixel corners (any order) -> a box with upper-left first."""
    ax, bx = sorted((x1, x2))
    ay, by = sorted((y1, y2))
    (rx1, ry1), (rx2, ry2) = pixels_to_rel(ax, ay, width, height), pixels_to_rel(bx, by, width, height)
    return Shape.box(rx1, ry1, rx2, ry2)


def point_from_pixels(x: float, y: float, width: float, height: float) -> Shape:
    return Shape.point(*pixels_to_rel(x, y, width, height))


# --- polygons -------------------------------------------------------------------------------------

def convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; counter-clockwise in math orientation, no repeated points."""
    pts = np.unique(np.asarray(points, dtype=np.float64).reshape(-1, 2), axis=0)  # sorted by x, then y
    if len(pts) <= 2:
        return pts

    def half(seq: np.ndarray) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for p in seq:
            while len(out) >= 2:
                o, a = out[-2], out[-1]
                if (a[0] - o[0]) * (p[1] - o[1]) - (a[1] - o[1]) * (p[0] - o[0]) > 0:
                    break
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(pts[::-1])
    hull = np.array(lower[:-1] + upper[:-1])
    return hull if len(hull) else pts[:1]


def min_area_rect(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Corners (4, 2) of the smallest-area rectangle containing all points (float, unordered rotation).

    Degenerate input (one point, collinear points) gives a zero-area rectangle."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        raise ValueError("a polygon needs at least one point")
    if not np.isfinite(pts).all():
        raise ValueError("polygon coordinates must be finite")
    hull = convex_hull(pts)
    if len(hull) == 1:
        return np.repeat(hull, 4, axis=0)
    edges = np.roll(hull, -1, axis=0) - hull
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    edges, lengths = edges[lengths > 0], lengths[lengths > 0]
    u = edges / lengths[:, None]                 # edge directions (k, 2)
    n = np.stack([-u[:, 1], u[:, 0]], axis=1)    # their normals
    pu, pn = hull @ u.T, hull @ n.T              # projections (h, k)
    area = (pu.max(0) - pu.min(0)) * (pn.max(0) - pn.min(0))
    i = int(np.argmin(area))
    a0, a1, b0, b1 = pu[:, i].min(), pu[:, i].max(), pn[:, i].min(), pn[:, i].max()
    return np.array([a * u[i] + b * n[i] for a, b in ((a0, b0), (a1, b0), (a1, b1), (a0, b1))])


def order_quad(corners: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Four corners clockwise on screen (image y points down), starting at the upper-left one
    (smallest x + y, then smallest y) — the order the seed prefers for quads."""
    c = np.asarray(corners, dtype=np.float64).reshape(4, 2)
    centre = c.mean(axis=0)
    ang = np.arctan2(c[:, 1] - centre[1], c[:, 0] - centre[0])  # increasing angle = clockwise on screen
    c = c[np.argsort(ang, kind="stable")]
    start = min(range(4), key=lambda k: (round(c[k, 0] + c[k, 1], 9), c[k, 1]))
    return np.roll(c, -start, axis=0)


def quad_or_box(points: Sequence[Sequence[int]]) -> Shape:
    """A quad from four integer corners, or a box when they are an axis-aligned rectangle."""
    pts = [(int(x), int(y)) for x, y in points]
    xs, ys = sorted({x for x, _ in pts}), sorted({y for _, y in pts})
    x0, x1, y0, y1 = xs[0], xs[-1], ys[0], ys[-1]
    if len(xs) <= 2 and len(ys) <= 2 and set(pts) == {(x0, y0), (x1, y0), (x1, y1), (x0, y1)}:
        return Shape.box(x0, y0, x1, y1)
    return Shape.quad(pts)


def polygon_to_quad(points: Sequence[Sequence[float]] | np.ndarray, width: float | None = None,
                    height: float | None = None) -> Shape:
    """Minimum-area quadrilateral around a polygon, as a quad (clockwise from upper-left) or a box.

    With `width`/`height` the points are pixels and are normalized after the rectangle is found;
    without them they are already relative (floats allowed) and are rounded. Corners of a rotated
    rectangle that fall outside the image are clamped to its edge."""
    rect = np.round(min_area_rect(points), 9)  # drop float noise from the projections before rounding
    if width is not None or height is not None:
        if width is None or height is None:
            raise ValueError("give both width and height, or neither")
        corners = [pixels_to_rel(x, y, width, height) for x, y in rect]
    else:
        corners = [(min(max(math.floor(x + 0.5), 0), REL_MAX), min(max(math.floor(y + 0.5), 0), REL_MAX))
                   for x, y in rect]
    # Ordered after rounding and clamping, so the written quad itself starts upper-left.
    return quad_or_box([(int(x), int(y)) for x, y in order_quad(corners)])


# --- whole texts ------------------------------------------------------------------------------------

def normalize_shape(shape: Shape, *, width: float | None = None, height: float | None = None,
                    source_max: float | None = None, prefer_box: bool = True) -> Shape:
    """One parsed shape -> canonical: values mapped to [0, 999], box corners ordered, axis-aligned quads
    as boxes. `width`/`height`: values are pixels; `source_max`: values are on 0..source_max."""
    def conv(x: int, y: int) -> tuple[int, int]:
        if width is not None and height is not None:
            return pixels_to_rel(x, y, width, height)
        if source_max is not None:
            return rescale(x, source_max), rescale(y, source_max)
        return min(max(x, 0), REL_MAX), min(max(y, 0), REL_MAX)

    pts = [conv(x, y) for x, y in shape.points]
    if shape.kind == "box":
        (x1, y1), (x2, y2) = pts
        return Shape.box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    if shape.kind == "quad" and prefer_box:
        return quad_or_box(pts)
    return Shape(shape.kind, tuple(pts))


def normalize_text(text: str, *, width: float | None = None, height: float | None = None,
                   source_max: float | None = None, prefer_box: bool = True) -> str:
    """Rewrite every readable label of `text` canonically: three-digit padding, no whitespace between
    tags, corners ordered, values mapped from pixels (`width`/`height`) or from another scale
    (`source_max`, e.g. 1000 for Qwen2-VL). Unreadable labels are left as they are (``validate``
    still reports them)."""
    if (width is None) != (height is None):
        raise ValueError("give both width and height, or neither")
    labels = scan(text, require_padding=False).labels
    if not labels:
        return text
    out, pos = [], 0
    for lab in labels:
        assert lab.span is not None
        start, end = lab.span
        shapes = tuple(normalize_shape(s, width=width, height=height, source_max=source_max,
                                       prefer_box=prefer_box) for s in lab.shapes)
        out.append(text[pos:start])
        out.append(format_label(Label(shapes, lab.object), check=False))
        pos = end
    out.append(text[pos:])
    return "".join(out)
