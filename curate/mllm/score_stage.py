"""The ``mllm_score`` stage: MLM-Filter's 0-100 scores from a VLM, kept by threshold or top fraction.

Open-Qwen2VL kept DataComp pairs whose semantic-understanding (SU) score is >= 85; MLM-Filter's
best CLIP-comparable run kept ITM >= 66 and ODF >= 20. This stage writes every requested metric
to ``mllm_scores`` (a struct: itm, odf, ctq, su, custom), the ``primary_metric`` to ``mllm_score``
(what ``top_fraction`` ranks and what ``recaption`` can read), and the model / prompt version /
decoding to ``mllm_provenance``; then rejects by ``thresholds`` (per metric, score >= threshold
kept) and keeps the ``top_fraction`` of each source (a whole-dataset step).

All metric prompts of all samples of a batch go to the engine in one call, image-major, so that
an engine with prefix caching encodes each image once. Decoding is greedy; ``decoding: digits``
(the default) constrains the answer to an integer 0..100 (nothing truncates "100"), ``free``
parses the first line as MLM-Filter did. Every answer that does not parse is rejected with
``mllm:unparseable:<metric>:<why>`` and the raw text as detail.

Samples without an image or text, or outside ``categories``, pass unscored (null scores).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping

import pyarrow as pa

from curate.base import records as R
from curate.base.global_data import StepResult
from curate.base import summary_sketch as K
from curate.base import Drop, split_drops
from curate.mllm import prompts as P
from curate.mllm.backend_base import DecodeSpec, Generation, GenerationRequest
from curate.mllm.inputs import load_images, texts_to_judge
from curate.mllm.parsing import MAX_SCORE_TOKENS, parse_score
from curate.mllm.stage_common import EngineSettings, engine_resources, start_engine, validate_engine_settings
from curate.base import BatchResult, Resources, Stage, register

SCORE = "mllm_score"
SCORES = "mllm_scores"
PROVENANCE = "mllm_provenance"
METRIC_NAMES = (*P.METRICS, P.CUSTOM)
SCORES_TYPE = pa.struct([(m, pa.int16()) for m in METRIC_NAMES])


def set_column(table: pa.Table, name: str, array: pa.Array) -> pa.Table:
    idx = table.schema.get_field_index(name)
    return table.set_column(idx, name, array) if idx >= 0 else table.append_column(name, array)


def threshold_drop(scores: Mapping[str, int], thresholds: Mapping[str, float]) -> Drop | None:
    """The first metric (in METRIC_NAMES order) whose score is below its threshold, as a rejection."""
    for metric in METRIC_NAMES:
        if metric in thresholds and metric in scores and scores[metric] < thresholds[metric]:
            return Drop(f"mllm:{metric}_below_threshold", f"{metric} {scores[metric]} < {thresholds[metric]:g}")
    return None


def read_answers(answers: list[Generation], metrics: list[str]) -> dict[str, int] | Drop:
    """Scores of one sample from its generations (in metric order), or the Drop for the first failure."""
    scores: dict[str, int] = {}
    for metric, gen in zip(metrics, answers):
        if gen.error is not None:
            return Drop(gen.error, gen.detail, R.QUARANTINED)
        parsed = parse_score(gen.text)
        if parsed.value is None:
            return Drop(f"mllm:unparseable:{metric}:{parsed.reason}", f"answer {parsed.raw[:200]!r}")
        scores[metric] = parsed.value
    return scores


@register
class MllmScore(Stage):
    name: ClassVar[str] = "mllm_score"
    description: ClassVar[str] = ("MLM-Filter-style 0-100 scores from a VLM (itm/odf/ctq/su or a custom prompt) on "
                                  "transformers or vLLM; keep by threshold per metric and/or top fraction per source.")
    requires: ClassVar[tuple[str, ...]] = ("images", "text", "conversations", "source", "category")
    adds: ClassVar[Mapping[str, pa.DataType]] = {SCORE: pa.float32(), SCORES: SCORES_TYPE, PROVENANCE: pa.string()}
    resources: ClassVar[Resources] = Resources(cpus=1, gpus=0, batch_size=64, kind="actor", concurrency=1)
    global_columns: ClassVar[tuple[str, ...] | None] = ("source", SCORE)
    summary_columns: ClassVar[tuple[str, ...]] = ("source", SCORE)

    @dataclass
    class Config(EngineSettings):
        metrics: list[str] = field(default_factory=lambda: ["su"], metadata={
            "doc": "Metrics to score: itm, odf, ctq, su (MLM-Filter's prompts) and/or custom (custom_prompt)."})
        custom_prompt: str | None = field(default=None, metadata={
            "doc": "Instruction for metric custom; {caption} is replaced by the caption. Must ask for 0-100."})
        primary_metric: str | None = field(default=None, metadata={
            "doc": "Metric written to mllm_score and ranked by top_fraction; None: the first of metrics."})
        thresholds: dict[str, float] | None = field(default=None, metadata={
            "doc": "Keep scored samples whose metric score is >= this, e.g. {su: 85} (Open-Qwen2VL)."})
        top_fraction: float | None = field(default=None, metadata={
            "doc": "Keep this fraction of the scored samples of each source by the primary metric, highest first."})
        decoding: Literal["digits", "free"] = field(default="digits", metadata={
            "doc": "digits: decoding constrained to an integer 0..100; free: greedy text, first line parsed."})
        max_new_tokens: int = field(default=MAX_SCORE_TOKENS, metadata={
            "doc": "New tokens per answer (digits needs 3 for '100'; MLM-Filter used 2, which truncates)."})

    def __init__(self, config: Any = None, context: Any = None, **settings: Any):
        super().__init__(config, context, **settings)
        if self.config.top_fraction is None:
            self.global_columns = None
        self.resources = engine_resources(self.config, type(self).resources.batch_size)
        self.engine: Any = None

    def validate_config(self) -> None:
        c = self.config
        validate_engine_settings(c)
        if not c.metrics or len(set(c.metrics)) != len(c.metrics):
            raise ValueError(f"metrics: a non-empty list without repeats, got {c.metrics!r}")
        bad = [m for m in c.metrics if m not in METRIC_NAMES]
        if bad:
            raise ValueError(f"metrics: unknown {bad}; expected some of {list(METRIC_NAMES)}")
        if (P.CUSTOM in c.metrics) != bool(c.custom_prompt):
            raise ValueError("custom_prompt: required exactly when metrics contains custom")
        if c.primary_metric is not None and c.primary_metric not in c.metrics:
            raise ValueError(f"primary_metric: {c.primary_metric!r} is not in metrics {c.metrics}")
        for metric, value in (c.thresholds or {}).items():
            if metric not in c.metrics:
                raise ValueError(f"thresholds: metric {metric!r} is not in metrics {c.metrics}")
            if not 0 <= float(value) <= 100:
                raise ValueError(f"thresholds: {metric} must be in [0, 100], got {value}")
        if c.top_fraction is not None and not 0.0 < float(c.top_fraction) <= 1.0:
            raise ValueError(f"top_fraction: must be in (0, 1], got {c.top_fraction}")
        if c.decoding == "digits" and c.max_new_tokens < MAX_SCORE_TOKENS:
            raise ValueError(f"max_new_tokens: digits decoding needs >= {MAX_SCORE_TOKENS} (for '100')")
        if c.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be >= 1, got {c.max_new_tokens}")

    @property
    def primary(self) -> str:
        return self.config.primary_metric or self.config.metrics[0]

    def provenance(self) -> str:
        c = self.config
        versions = {m: P.prompt_version(m, c.custom_prompt) for m in c.metrics}
        return json.dumps({"model": c.model or getattr(self.engine, "model_id", c.backend), "backend": c.backend,
                           "prompt_versions": versions, "decoding": c.decoding, "primary": self.primary},
                          sort_keys=True)

    def setup(self) -> None:
        self.engine = start_engine(self.config, self.context.seed)

    # --- per batch --------------------------------------------------------------------------------
    def requests_for(self, image: Any, caption: str) -> list[GenerationRequest]:
        """One request per metric for one sample, the image first (shared prefix across metrics)."""
        c = self.config
        return [GenerationRequest(image, P.render_chat(P.metric_instruction(m, caption, c.custom_prompt),
                                                       self.engine.family, P.ASSISTANT_PREFIX))
                for m in c.metrics]

    def process_batch(self, batch: pa.Table) -> BatchResult:
        c = self.config
        n = batch.num_rows
        texts = texts_to_judge(batch, c.categories, c.conversation_text)
        rows = [i for i in range(n) if texts[i]]
        refs = batch.column("images").to_pylist()
        images = load_images([refs[i][0] for i in rows], c.decode_threads, c.max_pixels, c.max_image_side,
                             self.engine.input_pixels)
        drops: list[Drop | None] = [None] * n
        requests: list[GenerationRequest] = []
        asked: list[int] = []
        for i, im in zip(rows, images):
            if isinstance(im, Drop):
                drops[i] = im
                continue
            requests += self.requests_for(im, texts[i])
            asked.append(i)
        k = len(c.metrics)
        spec = DecodeSpec(c.max_new_tokens, score_digits=c.decoding == "digits")
        answers = self.engine.generate(requests, spec) if requests else []
        scores: list[dict[str, int] | None] = [None] * n
        for j, i in enumerate(asked):
            got = read_answers(answers[j * k:(j + 1) * k], c.metrics)
            if isinstance(got, Drop):
                drops[i] = got
                continue
            scores[i] = got
            drops[i] = threshold_drop(got, c.thresholds or {})
        return split_drops(self._with_columns(batch, scores), drops)

    def _with_columns(self, batch: pa.Table, scores: list[dict[str, int] | None]) -> pa.Table:
        primary = self.primary
        main = pa.array([None if s is None else float(s[primary]) for s in scores], type=pa.float32())
        struct = pa.array([None if s is None else {m: s.get(m) for m in METRIC_NAMES} for s in scores],
                          type=SCORES_TYPE)
        prov = self.provenance()
        provs = pa.array([None if s is None else prov for s in scores], type=pa.string())
        batch = set_column(batch, SCORE, main)
        batch = set_column(batch, SCORES, struct)
        return set_column(batch, PROVENANCE, provs)

    # --- whole dataset ------------------------------------------------------------------------------
    def global_step(self, data: Any) -> Any:
        """Keep the top ``top_fraction`` of the scored rows of each source (ties: lower _ordinal)."""
        from curate.scoring.top_fraction import top_fraction_step
        primary = self.primary

        def describe(score: float, cutoff: float, src: str, scored: int) -> str:
            return f"{primary} {score:g} < cutoff {cutoff:g} of source {src}"

        decisions, summary = top_fraction_step(data, SCORE, float(self.config.top_fraction), "mllm:top_fraction",
                                               describe)
        return StepResult(decisions, {"top_fraction": {s: {"cutoff": v["cutoff"], "kept": v["kept"]}
                                                       for s, v in summary.items()}})

    def summary_partial(self, kept: pa.Table) -> pa.Table:
        """Per batch, the kept rows' scores per source as a value histogram (summary_sketch)."""
        return K.distribution(kept.column("source"), SCORE, kept.column(SCORE))

    def summary_merge(self, parts: pa.Table) -> pa.Table:
        return K.merge(parts)

    def summarize(self, kept: pa.Table) -> dict[str, Any]:
        """Mean and median score per source: exact up to summary_sketch.EXACT_LIMIT scores a source,
        within 1.2e-4 relative beyond."""
        out: dict[str, Any] = {}
        summary = K.Summary(K.as_partials(kept, self.summary_partial))
        for src in summary.groups(SCORE):
            v = summary.distribution(src, SCORE)
            if v.size:
                out[src] = {"scored": v.size, "mean": round(v.mean(), 3), "p50": v.percentile(50)}
        return {"by_source": out}
