"""The columns the ``ocr`` stage writes, and the per-source coverage report.

Metrics are float32 (their precision is far below a word in a thousand); the quads in ``ocr_boxes``
are original-image pixels, eight numbers clockwise from the upper-left; ``ocr_grounding`` holds the
same lines as grounding labels in the 0-999 space.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from curate.base import summary_sketch as K

from curate.base import Drop
from curate.ocr.lines import grounding_text
from curate.ocr.matching import Metrics
from curate.ocr.reading import Reading, size_bucket

TEXT, ENGINE_TEXTS, BOXES, GROUNDING = "ocr_text", "ocr_engine_texts", "ocr_boxes", "ocr_grounding"
PRECISION, RECALL, F1, COVERAGE, AGREED_WORDS = ("ocr_word_precision", "ocr_word_recall", "ocr_word_f1",
                                                 "ocr_char_coverage", "ocr_agreed_words")
# No timings here: outputs must be byte-identical across runs (timings are the bench's job).
ENGINE_TEXT = pa.struct([("engine", pa.string()), ("text", pa.string()), ("words", pa.int32())])
BOX = pa.struct([("text", pa.string()), ("quad", pa.list_(pa.float32()))])
ADDS: dict[str, pa.DataType] = {
    TEXT: pa.string(), ENGINE_TEXTS: pa.list_(ENGINE_TEXT), PRECISION: pa.float32(), RECALL: pa.float32(),
    F1: pa.float32(), COVERAGE: pa.float32(), AGREED_WORDS: pa.int32(), BOXES: pa.list_(BOX),
    GROUNDING: pa.string(),
}
PERCENTILES = (5, 25, 50, 75, 95)


def row_values(r: Reading) -> dict[str, Any]:
    m = r.metrics
    return {
        TEXT: "\n".join(line.text for line in r.lines),
        ENGINE_TEXTS: [{"engine": e.engine, "text": e.text, "words": len(e.words)}
                       for e in (r.first, r.second)],
        PRECISION: m.precision, RECALL: m.recall, F1: m.f1, COVERAGE: m.char_coverage,
        AGREED_WORDS: sum(line.words for line in r.lines),
        BOXES: [{"text": line.text, "quad": [round(v, 1) for p in line.quad for v in p]} for line in r.lines],
        GROUNDING: grounding_text(r.lines, *r.size),
    }


def put_columns(batch: pa.Table, values: Sequence[dict[str, Any]]) -> pa.Table:
    """Set every ADDS column from per-row dicts (missing keys: null)."""
    for name, typ in ADDS.items():
        arr = pa.array([v.get(name) for v in values], type=typ)
        i = batch.schema.get_field_index(name)
        batch = batch.set_column(i, name, arr) if i >= 0 else batch.append_column(name, arr)
    return batch


def put_conversations(batch: pa.Table, values: Sequence[dict[str, Any]], drops: Sequence[Drop | None],
                      prompt: str) -> pa.Table:
    """Replace the turns of kept, read samples with the OCR-with-grounding question and answer."""
    convs = batch.column("conversations").to_pylist()
    for i, (v, d) in enumerate(zip(values, drops)):
        if d is None and v.get(GROUNDING):
            convs[i] = [{"role": "user", "content": prompt}, {"role": "assistant", "content": v[GROUNDING]}]
    arr = pa.array(convs, type=batch.schema.field("conversations").type)
    return batch.set_column(batch.schema.get_field_index("conversations"), "conversations", arr)


def metrics_text(m: Metrics) -> str:
    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"
    return f"precision {f(m.precision)}, recall {f(m.recall)}, char coverage {f(m.char_coverage)}"


def _distribution(values: K.Distribution) -> dict[str, float]:
    out = {f"p{p}": round(values.percentile(p), 4) for p in PERCENTILES}
    out["mean"] = round(values.mean(), 4)
    return out


def coverage_partial(kept: pa.Table, low_coverage: float, buckets: Sequence[int] = ()) -> pa.Table:
    """One batch of kept rows as summary_sketch rows per source: the char-coverage and word-F1 value
    histograms (unread rows: a missing coverage), rows below ``low_coverage`` and read rows per image
    size bucket (exact counters)."""
    if not kept.num_rows:
        return K.empty()
    sources = np.asarray(kept.column("source").to_pylist(), dtype=object)
    f1 = np.asarray(kept.column(F1).to_numpy(zero_copy_only=False), dtype=np.float64)
    cov = np.asarray(kept.column(COVERAGE).to_numpy(zero_copy_only=False), dtype=np.float64)
    read = ~np.isnan(cov)
    sizes = [(refs[0]["width"] or 0, refs[0]["height"] or 0) if refs else (0, 0)
             for refs in kept.column("images").to_pylist()]
    bucket = [size_bucket(*sizes[k], buckets) for k in np.flatnonzero(read)]
    return pa.concat_tables([
        K.distribution(sources, COVERAGE, cov),
        K.distribution(sources[read], F1, f1[read]),
        K.counters(sources[read & (cov < low_coverage)], "below_low_coverage"),
        K.counters([f"{s}\x00{b}" for s, b in zip(sources[read], bucket)], "size_bucket")])


def coverage_summary(parts: pa.Table, low_coverage: float, engines: Sequence[str]) -> dict[str, Any]:
    """Per source: how many kept samples were read, the distribution of agreement (word F1) and of
    character coverage, how many fall below ``low_coverage`` (sources to supplement), and how many
    read images fall in each size bucket; from the merged ``coverage_partial`` rows (exact up to
    summary_sketch.EXACT_LIMIT read rows a source, percentiles and means within 1.2e-4 relative beyond)."""
    summary = K.Summary(parts)
    per_source: dict[str, Any] = {}
    buckets: dict[str, dict[str, int]] = {}
    for key in summary.groups("size_bucket"):
        src, label = key.split("\x00", 1)
        buckets.setdefault(src, {})[label] = summary.count(key, "size_bucket")
    for src in summary.groups(COVERAGE):
        cov = summary.distribution(src, COVERAGE)
        entry: dict[str, Any] = {"read": cov.size, "not_read": summary.count(src, COVERAGE)}
        if cov.size:
            f1 = summary.distribution(src, F1)
            entry["word_f1"] = _distribution(f1) if f1.size else {}
            entry["char_coverage"] = _distribution(cov)
            entry["below_low_coverage"] = summary.count(src, "below_low_coverage")
            entry["size_buckets"] = dict(sorted(buckets.get(src, {}).items()))
        per_source[src] = entry
    return {"engines": list(engines), "low_coverage": low_coverage, "per_source": per_source}
