"""``OUT/report.html``: the run's report as one self-contained page people can look at.

report.json accounts for every sample but is hard to read; Data-Juicer's analyzer draws plots and
nothing here did. This page is built from report.json and the stage manifests after a run: the funnel
per stage with reasons, the mixture's target vs achieved shares per level, token/length histograms
per category, the pack fill distribution, per-step balance across ranks, the leftover, other stages'
numbers (dedup groups, clusters, OCR agreement ... as those stages report them) and a few downscaled
thumbnails of rejected samples per reason, so a user can judge a filter by eye.

Self-contained: inline CSS and SVG (``svg_plots``), thumbnails as base64 JPEG data URIs (at most
``THUMBS_PER_REASON`` per reason, ``THUMB_PX`` on the long side), no script or font from the network.
A small inline script only checks the page itself (every plot laid out, no error, no raw value such
as None/null/a JSON brace in the text, no empty table cell) and records the result on
``<body data-plots=... data-errors=... data-raw-text=... data-empty-cells=...>`` for the
headless-browser test.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.media import images as I
from curate.base import records as R
from curate.base.diskspace import writing
from pipelines.present import svg_plots as S
from pipelines.engine.fusion import stage_batches, stage_rows

THUMB_PX = 96
THUMBS_PER_REASON = 3
MAX_REASONS_WITH_THUMBS = 24
PLOT_ROWS = 200_000   # rows read per stage for plots: bounded driver memory at any dataset size
_ENTRY_KEYS = {"name", "in", "out", "repeated", "rejected", "quarantined", "seconds", "rejects", "balanced",
               "resumed", "mixture", "packing", "shards", "tokens"}

CSS = """
.mmc-report{font-family:system-ui,sans-serif;color:#222;max-width:1000px;margin:0 auto;padding:8px}
.mmc-report h1{font-size:20px}.mmc-report h2{font-size:16px;border-bottom:1px solid #ddd;margin-top:28px}
.mmc-report table{border-collapse:collapse;font-size:12px;margin:6px 0}
.mmc-report td,.mmc-report th{border:1px solid #ddd;padding:2px 6px;text-align:right}
.mmc-report td:first-child,.mmc-report th:first-child{text-align:left}
.mmc-report .bad{color:#c0392b;font-weight:bold}.mmc-report .muted{color:#777}
.mmc-report figure{display:inline-block;margin:4px;text-align:center;font-size:10px;width:110px;vertical-align:top}
.mmc-report figure img{max-width:96px;max-height:96px;border:1px solid #ccc}
.mmc-report .scroll{overflow-x:auto}
.mmc-report .noimg{display:inline-block;width:96px;height:40px;background:#eee;line-height:40px}
"""

CHECK_SCRIPT = """<script>
(function(){var errs=[];window.addEventListener('error',function(e){errs.push(String(e.message));});
window.addEventListener('load',function(){var p=document.querySelectorAll('svg.plot'),ok=0;
for(var i=0;i<p.length;i++){var b=p[i].getBoundingClientRect();if(b.width>0&&b.height>0&&p[i].childElementCount>1)ok++;}
var im=document.querySelectorAll('img'),bad=0;
for(var j=0;j<im.length;j++){if(!im[j].complete||im[j].naturalWidth===0)bad++;}
document.body.setAttribute('data-plots',p.length);document.body.setAttribute('data-plots-rendered',ok);
document.body.setAttribute('data-broken-images',bad);document.body.setAttribute('data-errors',errs.join('|'));
var c=document.body.cloneNode(true),s=c.querySelectorAll('script,style');for(var k=0;k<s.length;k++)s[k].remove();
var t=c.textContent,m=/\bNone\b|\bnull\b|\bNaN\b|\bundefined\b|[{}]/.exec(t);
document.body.setAttribute('data-raw-text',m?t.slice(Math.max(0,m.index-40),m.index+40):'');
var cells=document.querySelectorAll('td,th'),empty=0;for(var q=0;q<cells.length;q++)if(!cells[q].textContent.trim())empty++;
document.body.setAttribute('data-cells',cells.length);document.body.setAttribute('data-empty-cells',empty);});})();
</script>"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


MISSING = "—"   # a cell whose value the run did not produce (never an empty cell)


def _cell(v: Any) -> str:
    """A value as a person reads it: numbers with a sensible precision, lists joined, no None/null."""
    if v is None or v == "" or v == [] or v == {}:
        return MISSING
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, list):
        return ", ".join(_cell(x) for x in v[:12]) + (f" ... ({len(v)} in all)" if len(v) > 12 else "")
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_cell(x)}" for k, x in v.items())
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(_cell(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<div class=scroll><table><tr>{head}</tr>{body}</table></div>"


def _without_empty_columns(header: list[str], rows: list[list[Any]]) -> tuple[list[str], list[list[Any]]]:
    """Drop the columns no row has a value in (e.g. token shares of a run without token counts)."""
    keep = [i for i in range(len(header)) if any(r[i] is not None for r in rows)]
    return [header[i] for i in keep], [[r[i] for i in keep] for r in rows]


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested report numbers as (dotted name, scalar or list) rows; empty dicts and None are left out."""
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in _flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if value is None or value == {} or value == []:
        return []
    if isinstance(value, list) and any(isinstance(x, (dict, list)) for x in value):
        return [row for i, x in enumerate(value[:12]) for row in _flatten(x, f"{prefix}[{i}]")]
    return [(prefix, value)]


def _stage_label(stage_dir: Path | None) -> str:
    """'shards' for '06_shards': the stage's name, as the recipe spells it."""
    return stage_dir.name.split("_", 1)[-1] if stage_dir is not None else ""


def _timing_cell(t: dict[str, Any] | None) -> str:
    if t is None:
        return MISSING
    if t.get("resumed"):
        return "resumed"
    if t.get("seconds") is None and t.get("fused_into"):
        return f"fused into {t['fused_into'].split('_', 1)[-1]}"
    return f"{t['seconds']:,.1f}" if t.get("seconds") is not None else MISSING


def _stage_dirs(out: Path) -> list[Path]:
    return sorted(p for p in (out / "stages").glob("[0-9][0-9]_*") if p.is_dir() and not p.name.endswith(".tmp"))


def _read(stage_dir: Path, columns: list[str], kept: bool | None = True) -> pa.Table | None:
    """At most PLOT_ROWS of a stage's rows (the first ones, in _ordinal order): plots and thumbnails
    need a sample, and the driver must not hold every row of a large run."""
    return stage_rows(stage_dir, columns, kept, limit=PLOT_ROWS)


# --- sections ------------------------------------------------------------------------------------------
def funnel_section(entries: list[dict], timings: dict[str, dict]) -> str:
    rows = [(e["name"], e["in"], e["out"], e.get("repeated", 0)) for e in entries]
    reasons = []
    for e in entries:
        for status in ("rejected", "quarantined"):
            for reason, n in sorted(e.get(status, {}).items(), key=lambda kv: -kv[1]):
                reasons.append([e["name"], status, reason, n])
    table = _table(["stage", "in", "repeated", "out", "dropped", "balanced", "seconds"],
                   [[e["name"], e["in"], e.get("repeated", 0), e["out"],
                     sum(e.get("rejected", {}).values()) + sum(e.get("quarantined", {}).values()),
                     "yes" if e.get("balanced", True) else "NO", _timing_cell(timings.get(e["name"]))]
                    for e in entries])
    return ("<h2>Funnel</h2>" + S.funnel("funnel", "rows in -> kept per stage", rows) + table
            + "<h3>Reasons</h3>" + (_table(["stage", "status", "reason", "rows"], reasons) if reasons
                                    else "<p class=muted>nothing dropped</p>"))


def mixture_section(m: dict) -> str:
    parts = [f"<h2>Mixture</h2><p>by {_e(m['by'])}, unit {_e(m['unit'])}: target total {_e(m['total_target'])}, "
             f"achieved {_e(m['total_achieved'])}; largest |error| {_e(m['max_abs_error_pp'])} pp</p>"]
    if m.get("shortfall"):
        parts.append("<p class=bad>Short of their share within max_repeat: " + ", ".join(
            f"{_e(s['group'])} ({_e(s['achievable'])} of {_e(s['target'])})" for s in m["shortfall"]) + "</p>")
    for level in m["levels"]:
        groups = level["groups"]
        labels = [g["group"].split("/", 1)[-1] for g in groups]   # a leaf "category/source" shows its source
        series = {"target": [g["target"] for g in groups],
                  "achieved (samples)": [g["achieved_samples"] for g in groups]}
        if any(g["achieved_tokens"] is not None for g in groups):
            series["achieved (tokens)"] = [g["achieved_tokens"] for g in groups]
        parts.append(S.grouped_bars(f"mixture-{level['level']}", f"share by {level['level']}: target vs achieved",
                                    labels, series, percent=True))
        cols = ["group", "target", "achieved_samples", "achieved_tokens", "error_pp", "available_samples",
                "kept_samples", "repeated_samples", "available_tokens", "kept_tokens", "repeated_tokens"]
        parts.append(_table(*_without_empty_columns(cols, [[g.get(c) for c in cols] for g in groups])))
    return "".join(parts)


def tokens_section(dirs: list[Path]) -> str:
    src = next((d for d in reversed(dirs) if (t := _read(d, ["num_tokens"], True)) is not None
                and "num_tokens" in t.column_names), None)
    # The texts only when there are no token counts to plot (their lengths stand in for them).
    wanted = ["category", "num_tokens", "text_tokens"] if src is not None else ["category", "text"]
    table = _read(src or dirs[-1], wanted, True) if dirs else None
    if table is None or table.num_rows == 0:
        return ""
    cats = table.column("category").to_pylist()
    parts = [f"<h2>Lengths per category</h2><p class=muted>the rows kept after stage {_e(_stage_label(src or dirs[-1]))}"
             f"{f' (the first {PLOT_ROWS:,})' if table.num_rows >= PLOT_ROWS else ''}</p>"]
    columns = [c for c in ("num_tokens", "text_tokens") if c in table.column_names]
    for col in columns:
        vals = np.asarray(table.column(col).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.float64)
        groups = {c: vals[np.array(cats) == c] for c in sorted(set(cats))}
        title = {"num_tokens": "tokens per sample (text and images)", "text_tokens": "text tokens per sample"}[col]
        parts.append(S.histograms(f"hist-{col}", f"{title}, per category", groups, xlabel="tokens"))
    if not columns and "text" in table.column_names:
        chars = np.asarray(pc.utf8_length(pc.fill_null(table.column("text"), "")).to_numpy(zero_copy_only=False),
                           dtype=np.float64)
        groups = {c: chars[np.array(cats) == c] for c in sorted(set(cats))}
        parts.append(S.histograms("hist-chars", "text length (characters) per category", groups, xlabel="chars"))
    return "".join(parts)


def packing_section(entries: list[dict], dirs: list[Path]) -> str:
    entry = next((e for e in entries if "packing" in e), None)
    if entry is None:
        return ""
    pack_dir = next((d for d in dirs if d.name.endswith("_" + entry["name"])), None)
    p = entry["packing"]
    L = p.get("context_length") or p.get("capacity")
    parts = ["<h2>Packing</h2>", _table(["setting", "value"], [[k, v] for k, v in p.items()
                                                                 if v is not None and not isinstance(v, (dict, list))])]
    fills = _pack_fills(pack_dir, entry.get("out", 0), L) if pack_dir and L else None
    if fills is not None and fills.size:
        lo = min(float(fills.min()), 0.9)
        sampled = "" if entry.get("out", 0) <= PLOT_ROWS else " (a sample of whole packs)"
        parts.append(S.histograms("pack-fill", f"pack fill (tokens / {L}){sampled}", {"packs": fills}, bins=20,
                                  xlabel="fill", value_range=(lo, 1.0)))
    return "".join(parts)


def _pack_fills(pack_dir: Path, kept_rows: int, L: int) -> np.ndarray | None:
    """Fill of whole packs: every pack, or past PLOT_ROWS kept rows those whose id falls in a stride
    (a pack's rows are spread over the manifest, so a row sample would cut packs). Streamed by batch."""
    stride = max(1, -(-int(kept_rows) // PLOT_ROWS))
    ids, tokens = [], []
    for batch in stage_batches(pack_dir, ["pack_id", "num_tokens"]):
        pid = np.asarray(batch.column("pack_id").to_numpy(zero_copy_only=False), dtype=np.int64)
        mine = (pid % stride) == 0
        ids.append(pid[mine])
        tokens.append(np.asarray(batch.column("num_tokens").to_numpy(zero_copy_only=False), dtype=np.float64)[mine])
    if not ids:
        return None
    packs, inverse = np.unique(np.concatenate(ids), return_inverse=True)   # ids reach part << 32: no bincount on them
    return np.bincount(inverse, weights=np.concatenate(tokens), minlength=packs.size) / float(L)


def shards_section(entries: list[dict]) -> str:
    entry = next((e for e in entries if "shards" in e), None)
    if entry is None:
        return ""
    s = entry["shards"]
    parts = ["<h2>Shards and balance</h2>",
             _table(["rank", "packs", "samples", "fill"], [[r, a, b, c] for r, (a, b, c) in enumerate(
                 zip(s.get("packs_per_rank", []), s.get("samples_per_rank", []), s.get("fill_per_rank", [])))])]
    steps = s.get("per_step") or []
    if steps:
        att = np.array([st["attention_per_rank"] for st in steps], dtype=np.float64)
        parts.append(S.heatmap("balance-attention", "attention cost per global step and rank (x step mean)",
                               att, "step", "rank"))
        parts.append(S.grouped_bars("balance-ratio", "per-step max/mean cost across ranks",
                                    [f"step {st['step']}" for st in steps][:32],
                                    {"attention": [st["attention_max_over_mean"] for st in steps][:32],
                                     "vit": [st["vit_max_over_mean"] for st in steps][:32]}))
    bal = s.get("balance")
    if isinstance(bal, dict):
        parts.append("<h3>Balance summary</h3>" + balance_table(bal))
    left = {k: v for k, v in (s.get("leftover") or {}).items() if v is not None}
    if left:
        parts.append("<h3>Leftover</h3>" + _table(["leftover", "value"], [[k, v] for k, v in left.items()]))
    return "".join(parts)


BALANCE_NAMES = {"attention": "attention cost", "vit": "vision encoder cost", "vit_patches": "vision patches",
                 "vit_patches_sq": "vision patches squared", "tokens": "tokens"}


def balance_table(bal: dict[str, Any]) -> str:
    """The balance summary: one row per measure (the max/mean of each cost across ranks), one column
    per statistic over the steps; scalars (the number of steps) as a sentence above it."""
    measures = {k: v for k, v in bal.items() if isinstance(v, dict)}
    scalars = [f"{_e(k.replace('_', ' '))}: {_e(_cell(v))}" for k, v in bal.items() if not isinstance(v, dict)]
    stats = list(dict.fromkeys(stat for v in measures.values() for stat in v))
    note = ("<p class=muted>max/mean cost across ranks per global step (1.0: perfectly balanced); "
            + "; ".join(scalars) + "</p>")
    return note + (_table(["measure", *[st.replace("_", " ") for st in stats]],
                          [[BALANCE_NAMES.get(m, m.replace("_", " ")), *[v.get(st) for st in stats]]
                           for m, v in measures.items()]) if measures else "")


def other_section(entries: list[dict]) -> str:
    """Numbers of stages this page has no plot for yet (dedup groups, clusters, OCR agreement ...),
    nested values flattened to dotted names."""
    rows = [[e["name"], name, v] for e in entries for k, value in e.items() if k not in _ENTRY_KEYS
            for name, v in _flatten(value, k)]
    return "<h2>Other stage numbers</h2>" + _table(["stage", "number", "value"], rows) if rows else ""


def _thumb(ref: dict) -> str | None:
    """A small JPEG data URI of an image reference, or None when its bytes cannot be decoded."""
    try:
        im = I.decode(I.read_image_bytes(ref))
    except (I.UnreadableImage, OSError, ValueError):  # the very samples a filter rejected may be broken
        return None
    im.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=60)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def thumbnails_section(dirs: list[Path]) -> str:
    parts, shown = [], 0
    for d in dirs:
        t = _read(d, ["key", R.REASON, R.DETAIL, "images", R.ORDINAL], kept=False)
        if t is None or t.num_rows == 0 or "images" not in t.column_names:
            continue
        t = t.take(pc.sort_indices(t, sort_keys=[(R.ORDINAL, "ascending")]))
        by_reason: dict[str, list[dict]] = {}
        for row in t.to_pylist():
            if row["images"] and len(by_reason.setdefault(row[R.REASON], [])) < THUMBS_PER_REASON:
                by_reason[row[R.REASON]].append(row)
        for reason, rows in sorted(by_reason.items()):
            if shown >= MAX_REASONS_WITH_THUMBS:
                break
            shown += 1
            figs = []
            for row in rows:
                uri = _thumb(row["images"][0])
                img = f'<img src="{uri}" alt="{_e(row["key"])}">' if uri else '<span class=noimg>not decodable</span>'
                figs.append(f'<figure>{img}<figcaption>{_e(row["key"])}<br><span class=muted>'
                            f'{_e((row[R.DETAIL] or "")[:80])}</span></figcaption></figure>')
            parts.append(f"<h3>{_e(d.name.split('_', 1)[1])}: {_e(reason)}</h3>" + "".join(figs))
    return "<h2>Rejected samples (a few per reason)</h2>" + "".join(parts) if parts else ""


# --- page ------------------------------------------------------------------------------------------------
def render_fragment(out_dir: str | Path) -> str:
    """The report as an HTML fragment (a notebook renders this; the file wraps it in a page)."""
    out = Path(out_dir)
    report = json.loads((out / "report.json").read_text())
    entries = report["stages"]
    dirs = _stage_dirs(out)
    mixture = next((e["mixture"] for e in entries if "mixture" in e), None)
    run_info = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    timings = {t["name"]: t for t in run_info.get("stages", [])}
    used = list(dict.fromkeys(t["executor"] for t in timings.values() if t.get("executor"))) or \
        [e for e in [run_info.get("executor")] if e and e != "auto"]   # a run.json from before per-stage executors
    facts = [f"seed {_e(report.get('seed'))}", f"recipe hash {_e(str(report.get('recipe_hash'))[:12])}",
             f"{_e(report.get('final_samples'))} samples out"]
    if used:
        facts.insert(1, f"executor {_e(' + '.join(used))}"
                     + (f" ({_e(run_info['executor'])})" if run_info.get("executor") == "auto" else ""))
    ran = [t["seconds"] for t in timings.values() if t.get("seconds") is not None and not t.get("resumed")]
    if ran:
        facts.append(f"{sum(ran):,.1f} s of stage time")
    head = f"<h1>mmcurate report: {_e(report.get('recipe'))}</h1><p class=muted>{', '.join(facts)}</p>"
    sections = [head, funnel_section(entries, timings), mixture_section(mixture) if mixture else "",
                tokens_section(dirs), packing_section(entries, dirs), shards_section(entries),
                other_section(entries), thumbnails_section(dirs)]
    return f'<div class="mmc-report"><style>{CSS}</style>{"".join(sections)}</div>'


def render_page(out_dir: str | Path) -> str:
    body = render_fragment(out_dir)
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>mmcurate report</title>"
            f"<meta name=viewport content='width=device-width'></head><body>{CHECK_SCRIPT}{body}</body></html>")


def write_report_html(out_dir: str | Path) -> Path:
    """Write OUT/report.html next to report.json; returns its path."""
    path = Path(out_dir) / "report.html"
    tmp = path.with_suffix(".html.tmp")
    page = render_page(out_dir)
    with writing(path):
        try:
            tmp.write_text(page, encoding="utf-8")
        except OSError:
            tmp.unlink(missing_ok=True)   # a full disk leaves the last complete report.html, nothing half-written
            raise
    tmp.replace(path)
    return path
