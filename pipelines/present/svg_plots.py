"""Tiny inline-SVG plots for report.html: no JavaScript library, no CDN, nothing fetched.

Each function returns one ``<svg class="plot" data-plot=NAME>`` element sized in CSS pixels; the report's
self-check script counts these and measures their rendered boxes. Colours come from one fixed palette
so the same group has the same colour in every plot of a report.
"""
from __future__ import annotations

import html
from typing import Sequence

import numpy as np

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")
FONT = 'font-family="system-ui,sans-serif" font-size="11"'


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _svg(name: str, width: int, height: int, body: list[str], title: str) -> str:
    return (f'<svg class="plot" data-plot="{_esc(name)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" role="img">'
            f'<title>{_esc(title)}</title>{"".join(body)}</svg>')


def _fmt(v: float) -> str:
    if abs(v) >= 1e9:
        return f"{v / 1e9:.1f}G"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.1f}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.0f}k"
    return f"{v:.3g}" if not float(v).is_integer() else f"{int(v)}"


def grouped_bars(name: str, title: str, labels: Sequence[str], series: dict[str, Sequence[float | None]],
                 percent: bool = False, width: int = 640) -> str:
    """Horizontal bars: one row per label, one bar per series (e.g. target vs achieved share)."""
    names = list(series)
    row_h = 6 + 12 * len(names)
    left, right, top = 200, 70, 24
    height = top + row_h * len(labels) + 28
    vmax = max([v for s in series.values() for v in s if v is not None] + [1e-12])
    scale = (width - left - right) / vmax
    body = [f'<text x="4" y="14" {FONT} font-weight="bold">{_esc(title)}</text>']
    for i, label in enumerate(labels):
        y0 = top + i * row_h
        short = label if len(label) <= 30 else label[:14] + "…" + label[-15:]
        body.append(f'<text x="{left - 6}" y="{y0 + row_h / 2 + 4}" text-anchor="end" {FONT}>{_esc(short)}</text>')
        for j, n in enumerate(names):
            v = series[n][i]
            if v is None:
                continue
            w = max(v * scale, 0.5)
            y = y0 + 3 + 12 * j
            txt = f"{100 * v:.2f}%" if percent else _fmt(v)
            body.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="10" fill="{color(j)}">'
                        f'<title>{_esc(label)} {_esc(n)}: {txt}</title></rect>')
            body.append(f'<text x="{left + w + 3:.1f}" y="{y + 9}" {FONT}>{txt}</text>')
    for j, n in enumerate(names):
        x = left + 160 * j
        body.append(f'<rect x="{x}" y="{height - 16}" width="10" height="10" fill="{color(j)}"/>'
                    f'<text x="{x + 14}" y="{height - 7}" {FONT}>{_esc(n)}</text>')
    return _svg(name, width, height, body, title)


def histograms(name: str, title: str, groups: dict[str, np.ndarray], bins: int = 30, width: int = 640,
               xlabel: str = "", value_range: tuple[float, float] | None = None) -> str:
    """Small multiples: one histogram per group on a shared x range (default: 0 to the 99th percentile)."""
    values = [v for v in groups.values() if v.size]
    if not values:
        return _svg(name, width, 40, [f'<text x="4" y="20" {FONT}>{_esc(title)}: no data</text>'], title)
    allv = np.concatenate(values)
    if value_range is not None:
        lo, hi = value_range
    else:
        hi = float(np.percentile(allv, 99)) or float(allv.max()) or 1.0
        lo = float(min(allv.min(), 0))
    edges = np.linspace(lo, hi, bins + 1)
    panel_h, top, left = 54, 22, 120
    height = top + panel_h * len(groups) + 18
    pw = width - left - 10
    body = [f'<text x="4" y="14" {FONT} font-weight="bold">{_esc(title)}</text>']
    for i, (g, v) in enumerate(groups.items()):
        counts, _ = np.histogram(np.clip(v, lo, hi), bins=edges)
        y0 = top + i * panel_h
        cmax = counts.max() or 1
        body.append(f'<text x="{left - 6}" y="{y0 + panel_h / 2}" text-anchor="end" {FONT}>{_esc(g)}</text>'
                    f'<text x="{left - 6}" y="{y0 + panel_h / 2 + 12}" text-anchor="end" {FONT} fill="#666">'
                    f'n={v.size} p50={_fmt(float(np.median(v))) if v.size else 0}</text>')
        bw = pw / bins
        for k, c in enumerate(counts.tolist()):
            h = (panel_h - 8) * c / cmax
            body.append(f'<rect x="{left + k * bw:.1f}" y="{y0 + panel_h - 4 - h:.1f}" width="{max(bw - 1, 0.5):.1f}" '
                        f'height="{h:.1f}" fill="{color(i)}"><title>{_esc(g)} [{_fmt(edges[k])}, '
                        f'{_fmt(edges[k + 1])}): {c}</title></rect>')
    body.append(f'<text x="{left}" y="{height - 4}" {FONT} fill="#666">{_fmt(lo)}</text>'
                f'<text x="{width - 10}" y="{height - 4}" text-anchor="end" {FONT} fill="#666">'
                f'{_fmt(hi)} {_esc(xlabel)}{"" if value_range else " (values above p99 in the last bin)"}</text>')
    return _svg(name, width, height, body, title)


def heatmap(name: str, title: str, matrix: np.ndarray, row_label: str, col_label: str, width: int = 640) -> str:
    """Cells coloured by value / row mean (1.0 = perfectly balanced): rows = steps, columns = ranks."""
    rows, cols = matrix.shape
    cell_h = max(4, min(16, 360 // max(rows, 1)))
    left, top = 60, 24
    cell_w = min(60, (width - left - 80) / max(cols, 1))
    height = top + rows * cell_h + 30
    body = [f'<text x="4" y="14" {FONT} font-weight="bold">{_esc(title)}</text>']
    means = matrix.mean(axis=1, keepdims=True)
    rel = np.divide(matrix, means, out=np.ones_like(matrix, dtype=float), where=means > 0)
    for r in range(rows):
        for c in range(cols):
            d = float(min(abs(rel[r, c] - 1.0) / 0.25, 1.0))       # 25% off the mean = full colour
            fill = f"rgb({int(255 - 30 * d)},{int(255 - 200 * d)},{int(255 - 200 * d)})" if rel[r, c] > 1 else \
                f"rgb({int(255 - 200 * d)},{int(255 - 120 * d)},255)"
            body.append(f'<rect x="{left + c * cell_w:.1f}" y="{top + r * cell_h}" width="{cell_w - 1:.1f}" '
                        f'height="{cell_h - 1}" fill="{fill}"><title>{row_label} {r}, {col_label} {c}: '
                        f'{rel[r, c]:.3f} x mean</title></rect>')
    body.append(f'<text x="{left}" y="{height - 6}" {FONT} fill="#666">{rows} {row_label}s x {cols} {col_label}s; '
                f'white = mean, red = above, blue = below (full colour at 25%)</text>')
    return _svg(name, width, height, body, title)


def funnel(name: str, title: str, stages: Sequence[tuple[str, int, int, int]], width: int = 640) -> str:
    """Per stage a bar of rows in (plus repeats), split into kept (green) and dropped (red)."""
    row_h, left, top = 20, 130, 22
    height = top + row_h * len(stages) + 8
    vmax = max([s[1] + s[3] for s in stages] + [1])
    scale = (width - left - 190) / vmax
    body = [f'<text x="4" y="14" {FONT} font-weight="bold">{_esc(title)}</text>']
    for i, (stage, n_in, kept, repeated) in enumerate(stages):
        y = top + i * row_h
        dropped = n_in + repeated - kept
        body.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end" {FONT}>{_esc(stage)}</text>'
                    f'<rect x="{left}" y="{y + 2}" width="{kept * scale:.1f}" height="14" fill="#59a14f">'
                    f'<title>{_esc(stage)}: kept {kept}</title></rect>'
                    f'<rect x="{left + kept * scale:.1f}" y="{y + 2}" width="{dropped * scale:.1f}" height="14" '
                    f'fill="#e15759"><title>{_esc(stage)}: dropped {dropped}</title></rect>'
                    f'<text x="{left + (kept + dropped) * scale + 4:.1f}" y="{y + 13}" {FONT}>{kept} / {n_in}'
                    f'{f" (+{repeated} repeats)" if repeated else ""}</text>')
    return _svg(name, width, height, body, title)
