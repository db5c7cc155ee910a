"""The ``recaption`` stage: a new caption from a VLM for samples whose image-text relevance is low.

MindVL recaptions pairs whose relevance is too low instead of dropping them. Here a sample is
recaptioned when its ``relevance_column`` (``clip_score`` from ``clip_score``, or ``mllm_score``
from ``mllm_score``) is below ``threshold``; its ``text`` becomes the generated caption, the old
one is kept in ``caption_original``, and ``caption_provenance`` (JSON) records the model, backend,
prompt and prompt version, the relevance that triggered it, and — with ``rescore`` — the
MLM-Filter score of the new caption (``rescore_metric``, digit-constrained) next to the old one.

Samples with a null relevance (not scored), without a caption (conversations) or image, or outside
``categories`` pass untouched. A generation that comes back empty keeps the original caption and
says so in the provenance (``status: empty_generation``) — it is never a silent no-op. Image
failures are the same named drops as in ``mllm_score``.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping

import pyarrow as pa

from curate.base import records as R
from curate.base import Drop, split_drops
from curate.mllm import prompts as P
from curate.mllm.backend_base import DecodeSpec, GenerationRequest
from curate.mllm.inputs import load_images
from curate.mllm.parsing import MAX_SCORE_TOKENS, parse_score
from curate.mllm.score_stage import set_column
from curate.mllm.stage_common import EngineSettings, engine_resources, start_engine, validate_engine_settings
from curate.base import BatchResult, Resources, Stage, register

ORIGINAL = "caption_original"
PROVENANCE = "caption_provenance"


def needs_recaption(relevance: float | None, text: str | None, has_image: bool, threshold: float) -> bool:
    return (has_image and bool(text and text.strip()) and relevance is not None
            and not math.isnan(relevance) and relevance < threshold)


def clean_caption(text: str) -> str:
    """The generated caption on one line, without surrounding whitespace or quotes."""
    return " ".join(text.split()).strip().strip('"').strip()


@register
class Recaption(Stage):
    name: ClassVar[str] = "recaption"
    description: ClassVar[str] = ("Replace the caption of low-relevance samples (clip_score or mllm_score below a "
                                  "threshold) with a VLM caption; keep the original and the provenance.")
    requires: ClassVar[tuple[str, ...]] = ("images", "text", "category")
    adds: ClassVar[Mapping[str, pa.DataType]] = {ORIGINAL: pa.string(), PROVENANCE: pa.string()}
    resources: ClassVar[Resources] = Resources(cpus=1, gpus=0, batch_size=64, kind="actor", concurrency=1)

    @dataclass
    class Config(EngineSettings):
        relevance_column: Literal["clip_score", "mllm_score"] = field(default="mllm_score", metadata={
            "doc": "Which earlier score decides: clip_score (cosine) or mllm_score (0-100)."})
        threshold: float = field(default=50.0, metadata={
            "doc": "Recaption samples whose relevance is below this (a cosine for clip_score, 0-100 for mllm_score)."})
        prompt: str = field(default=P.RECAPTION_PROMPT, metadata={"doc": "Instruction after the image."})
        prompt_version: str | None = field(default=None, metadata={
            "doc": "Recorded in the provenance; None: the built-in version for the default prompt, else a hash."})
        max_new_tokens: int = field(default=64, metadata={"doc": "Length limit of a new caption, in tokens."})
        rescore: bool = field(default=False, metadata={"doc": "Score the new caption with rescore_metric too."})
        rescore_metric: Literal["itm", "odf", "ctq", "su"] = field(default="itm", metadata={
            "doc": "MLM-Filter metric for rescore (its provenance records old and new)."})

    def __init__(self, config: Any = None, context: Any = None, **settings: Any):
        super().__init__(config, context, **settings)
        self.resources = engine_resources(self.config, type(self).resources.batch_size)
        self.engine: Any = None

    def validate_config(self) -> None:
        c = self.config
        validate_engine_settings(c)
        if c.relevance_column == "mllm_score" and not 0 <= c.threshold <= 100:
            raise ValueError(f"threshold: mllm_score is 0-100, got {c.threshold}")
        if c.relevance_column == "clip_score" and not -1 <= c.threshold <= 1:
            raise ValueError(f"threshold: clip_score is a cosine in [-1, 1], got {c.threshold}")
        if not c.prompt.strip():
            raise ValueError("prompt: must not be empty")
        if c.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be >= 1, got {c.max_new_tokens}")

    @property
    def version(self) -> str:
        c = self.config
        if c.prompt_version:
            return c.prompt_version
        if c.prompt == P.RECAPTION_PROMPT:
            return P.RECAPTION_PROMPT_VERSION
        return "custom-" + hashlib.sha256(c.prompt.encode()).hexdigest()[:12]

    def setup(self) -> None:
        self.engine = start_engine(self.config, self.context.seed)

    def process_batch(self, batch: pa.Table) -> BatchResult:
        c = self.config
        n = batch.num_rows
        texts = batch.column("text").to_pylist()
        refs = batch.column("images").to_pylist()
        cats = batch.column("category").to_pylist()
        if c.relevance_column not in batch.column_names:   # a recipe error, not bad data: fail the run
            raise ValueError(f"recaption: column {c.relevance_column!r} is not in the data; run "
                             f"{c.relevance_column} before recaption")
        relevance = batch.column(c.relevance_column).to_pylist()
        wanted = set(c.categories) if c.categories is not None else None
        rows = [i for i in range(n) if (wanted is None or cats[i] in wanted)
                and needs_recaption(relevance[i], texts[i], bool(refs[i]), c.threshold)]
        images = load_images([refs[i][0] for i in rows], c.decode_threads, c.max_pixels, c.max_image_side,
                             self.engine.input_pixels)
        drops: list[Drop | None] = [None] * n
        todo = []
        for i, im in zip(rows, images):
            if isinstance(im, Drop):
                drops[i] = im
            else:
                todo.append((i, im))
        prompt = P.render_chat(c.prompt, self.engine.family)
        gens = self.engine.generate([GenerationRequest(im, prompt) for _, im in todo],
                                    DecodeSpec(c.max_new_tokens)) if todo else []
        new_texts = list(texts)
        originals: list[str | None] = [None] * n
        provenance: list[str | None] = [None] * n
        done = []
        for (i, im), gen in zip(todo, gens):
            if gen.error is not None:
                drops[i] = Drop(gen.error, gen.detail, R.QUARANTINED)
                continue
            record = self._provenance(relevance[i])
            caption = clean_caption(gen.text)
            if caption:
                originals[i], new_texts[i] = texts[i], caption
                done.append((i, im))
            else:
                record["status"] = "empty_generation"
            provenance[i] = record
        if c.rescore and done:
            self._rescore(done, texts, new_texts, provenance)
        out = set_column(batch, "text", pa.array(new_texts, type=pa.string()))
        out = set_column(out, ORIGINAL, pa.array(originals, type=pa.string()))
        out = set_column(out, PROVENANCE, pa.array([None if p is None else json.dumps(p, sort_keys=True)
                                                    for p in provenance], type=pa.string()))
        return split_drops(out, drops)

    def _provenance(self, relevance: float) -> dict[str, Any]:
        c = self.config
        return {"status": "recaptioned", "model": c.model or self.engine.model_id, "backend": c.backend,
                "prompt": c.prompt, "prompt_version": self.version, "relevance_column": c.relevance_column,
                "relevance": round(float(relevance), 6), "threshold": c.threshold}

    def _rescore(self, done: list[tuple[int, Any]], old: list[str | None], new: list[str | None],
                 provenance: list[dict[str, Any] | None]) -> None:
        """MLM-Filter score (digit-constrained) of the old and the new caption, recorded side by side."""
        metric = self.config.rescore_metric
        reqs = [GenerationRequest(im, P.render_chat(P.metric_instruction(metric, caption), self.engine.family,
                                                    P.ASSISTANT_PREFIX))
                for i, im in done for caption in (old[i], new[i])]
        gens = self.engine.generate(reqs, DecodeSpec(MAX_SCORE_TOKENS, score_digits=True))
        for j, (i, _) in enumerate(done):
            before, after = (parse_score(g.text) if g.error is None else None for g in gens[2 * j:2 * j + 2])
            provenance[i]["rescore"] = {
                "metric": metric, "prompt_version": P.PROMPT_VERSION,
                "original": before.value if before else None, "new": after.value if after else None}
