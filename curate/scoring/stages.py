"""The ``clip_score`` stage: image-text relevance, kept by absolute threshold or top fraction per source.

LAION kept pairs whose CLIP cosine is >= 0.3; DataComp's CLIP-score baseline keeps the top 30% of
its pool; Open-Qwen2VL builds its caption data on both. This stage does either (or both: the
threshold first, per batch, then the top fraction of the survivors of each source).

How it runs — the stage contract for model stages:

* an *actor* stage: ``setup()`` picks the device (CUDA, Ascend NPU, else CPU) and loads the model
  once per actor; ``process_batch`` only reads, decodes and scores;
* images are read, decoded and resized inside the actor by a thread pool (one thread per core with
  an accelerator, a quarter of the cores on CPU) that runs ahead of the model: all images of a batch are queued at once and the model
  takes them in sub-batches of ``batch_size`` as they complete. JPEGs are decoded at the smallest
  DCT scale that still covers the model input. Texts are encoded once per unique text;
* the score (float32 cosine) is written to ``clip_score`` on every scored row — dropped rows keep
  it too, so rejects can be inspected — and ``summarize`` reports percentiles per source.

Which text and which images:

* the caption (``text``) when the sample has one; otherwise the first assistant answer of the
  conversation (``conversation_text: first_exchange`` prepends the first user turn), with
  ``<image>`` placeholders and special tokens (``<|box_start|>``...) removed;
* several images: the mean cosine over the images (``image_reduce: max`` keeps a sample whose text
  describes at least one of them, ``min`` demands that it describes all);
* a sample with no image, or no text, or outside ``categories``, is not scored: it passes with a
  null ``clip_score`` and is never rejected by this stage;
* an interleaved document: each image is compared with its neighbouring paragraph (the one before it,
  else the one after) and an image below ``threshold`` (or unreadable) is removed from the document
  with its reason (curate.documents.per_image); the document's ``clip_score`` reduces the scores of
  the images left, and only ``top_fraction`` (a selection the recipe asks for) can drop a document.

Images that cannot be fetched are quarantined (``image:unreadable:<code>``), images that do not
decode are rejected (``image:corrupt`` / ``image:too_large_to_decode``), by ``curate.media.decode``
like every model stage — the same reasons ``image_filter`` uses, for pipelines that run this stage
without it.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping, Sequence

import numpy as np
import pyarrow as pa

from curate.media import images as I
from curate.base import records as R
from curate.base.global_data import StepResult
from curate.base import summary_sketch as K
from curate.base import Drop, split_drops
from curate.media.decode import read_decoded
from curate.media.decode import read_or_drop
from curate.scoring.device import DEVICE_CHOICES
from curate.scoring.top_fraction import keep_top_fraction, top_fraction_step  # noqa: F401  (re-exported)
from curate.base import BatchResult, Resources, Stage, register
from curate.documents.per_image import apply_verdicts, document_rows, image_contexts, removal_stage

SCORE = "clip_score"
PERCENTILES = (5, 25, 50, 75, 95)
OVERALL = "\x00overall"   # the summary group over every source (no source name holds a NUL)


# --- which text a sample is judged by ----------------------------------------------------------
def _clean(text: str | None) -> str:
    """Whitespace-normalised text without <image> placeholders and grounding special tokens."""
    if not text:
        return ""
    from curate.filters.text_rules import strip_markup
    return " ".join(strip_markup(text).split())


def sample_text(text: str | None, conversations: Sequence[Mapping[str, Any]] | None,
                mode: str = "first_answer") -> str | None:
    """The text a sample's images are compared with (None: nothing to compare)."""
    if text and text.strip():
        return _clean(text)
    turns = list(conversations or [])
    answer_at = next((i for i, t in enumerate(turns) if t.get("role") == "assistant" and _clean(t.get("content"))), None)
    if answer_at is None:
        return None
    answer = _clean(turns[answer_at].get("content"))
    if mode == "first_exchange":
        question = next((_clean(t.get("content")) for t in turns[:answer_at] if t.get("role") == "user"), "")
        return f"{question} {answer}".strip()
    return answer


def reduce_scores(values: Sequence[float], how: str) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float({"mean": arr.mean, "max": arr.max, "min": arr.min}[how]())


def sub_batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges for the model: a short first one (a quarter batch) so the model starts
    after a few decodes instead of a whole batch of them, then full batches."""
    first = min(n, max(1, batch_size // 4))
    bounds = [(0, first)] if n else []
    bounds += [(s, min(n, s + batch_size)) for s in range(first, n, batch_size)]
    return bounds


def percentiles(values: np.ndarray) -> dict[str, float]:
    out = {f"p{p}": round(float(np.percentile(values, p)), 4) for p in PERCENTILES}
    out["mean"] = round(float(values.mean()), 4)
    return out


# --- the stage ----------------------------------------------------------------------------------
@register
class ClipScore(Stage):
    name: ClassVar[str] = "clip_score"
    description: ClassVar[str] = ("Image-text relevance (CLIP / SigLIP cosine, or the offline label_text_similarity "
                                  "scorer); keep by absolute threshold and/or top fraction per source.")
    requires: ClassVar[tuple[str, ...]] = ("images", "text", "conversations", "source", "category")
    adds: ClassVar[Mapping[str, pa.DataType]] = {SCORE: R.WELL_KNOWN_COLUMNS[SCORE]}
    resources: ClassVar[Resources] = Resources(cpus=1, gpus=0, batch_size=256, kind="actor", concurrency=1)
    global_columns: ClassVar[tuple[str, ...] | None] = ("source", SCORE)
    summary_columns: ClassVar[tuple[str, ...]] = ("source", SCORE)

    @dataclass
    class Config:
        backend: Literal["hf_clip", "hf_siglip", "open_clip", "label_text_similarity"] = field(
            default="hf_clip", metadata={"doc": "hf_clip / hf_siglip: transformers model directory; open_clip: "
                                                "model_name + checkpoint file; label_text_similarity: the offline "
                                                "EfficientNet-Lite0 labels + MiniLM scorer (not CLIP)."})
        model_path: str | None = field(default=None, metadata={
            "doc": "Local model directory (hf_*) or checkpoint file (open_clip). Nothing is downloaded."})
        model_name: str | None = field(default=None, metadata={"doc": "open_clip architecture, e.g. ViT-B-32."})
        threshold: float | None = field(default=None, metadata={
            "doc": "Reject scored samples whose cosine is below this (LAION: 0.3 with ViT-B/32)."})
        top_fraction: float | None = field(default=None, metadata={
            "doc": "Keep this fraction of the scored samples of each source, highest first (DataComp: 0.3)."})
        categories: list[str] | None = field(default=None, metadata={
            "doc": "Score only samples of these categories; the others pass unscored. None: all."})
        batch_size: int = field(default=64, metadata={"doc": "Images per model forward."})
        device: str = field(default="auto", metadata={"doc": "auto (CUDA, then Ascend NPU, then CPU), cuda, npu, cpu."})
        dtype: Literal["auto", "float32", "float16", "bfloat16"] = field(
            default="auto", metadata={"doc": "Model precision; auto: float16 on accelerators, float32 on CPU."})
        decode_threads: int | None = field(default=None, metadata={
            "doc": "Threads reading, decoding and resizing images; None: one per core (max 32) with an "
                   "accelerator, a quarter of the cores on CPU."})
        image_reduce: Literal["mean", "max", "min"] = field(
            default="mean", metadata={"doc": "How the scores of a sample's several images combine."})
        conversation_text: Literal["first_answer", "first_exchange"] = field(
            default="first_answer", metadata={"doc": "Text of conversation samples without a caption."})
        label_top_k: int = field(default=5, metadata={"doc": "label_text_similarity: ImageNet labels per image."})
        max_pixels: int = field(default=I.MAX_DECODE_PIXELS, metadata={"doc": "Refuse to decode larger images."})
        gpus_per_actor: float | None = field(default=None, metadata={
            "doc": "GPUs each actor asks Ray for; None: 1 when the driver sees CUDA, else 0."})
        actors: int | None = field(default=None, metadata={
            "doc": "Model actors; None: one per visible GPU, 1 on CPU (a CPU model already uses every core)."})
        cpu_threads: int | None = field(default=None, metadata={
            "doc": "torch threads of a CPU actor; None: all cores (Ray would otherwise pin it to 1)."})

    def __init__(self, config: Any = None, context: Any = None, **settings: Any):
        super().__init__(config, context, **settings)
        cfg = self.config
        if cfg.top_fraction is None:
            self.global_columns = None  # no whole-dataset step without top_fraction
        gpus = cfg.gpus_per_actor
        if gpus is None:
            gpus = 0.0
            if cfg.device.split(":")[0] in ("auto", "cuda"):
                from curate.scoring.device import cuda_device_count
                gpus = 1.0 if cuda_device_count() > 0 else 0.0
        if cfg.actors is not None:
            actors = cfg.actors
        elif gpus > 0:
            from curate.scoring.device import cuda_device_count
            actors = max(1, int(cuda_device_count() // gpus))
        else:
            actors = 1
        self.resources = Resources(cpus=1, gpus=gpus, batch_size=type(self).resources.batch_size, kind="actor",
                                   concurrency=actors)
        self.scorer: Any = None

    # --- configuration ------------------------------------------------------------------------
    def validate_config(self) -> None:
        c = self.config
        if c.backend in ("hf_clip", "hf_siglip", "open_clip") and not c.model_path:
            raise ValueError(f"model_path: required for backend {c.backend} (a local "
                             f"{'checkpoint file' if c.backend == 'open_clip' else 'model directory'})")
        if c.backend == "open_clip" and not c.model_name:
            raise ValueError("model_name: required for backend open_clip (e.g. ViT-B-32)")
        if c.backend == "label_text_similarity" and (c.model_path or c.model_name):
            raise ValueError("model_path: label_text_similarity uses the packaged models; leave model_path/model_name unset")
        if c.threshold is not None and not -1.0 <= float(c.threshold) <= 1.0:
            raise ValueError(f"threshold: a cosine, must be in [-1, 1], got {c.threshold}")
        if c.top_fraction is not None and not 0.0 < float(c.top_fraction) <= 1.0:
            raise ValueError(f"top_fraction: must be in (0, 1], got {c.top_fraction}")
        for name in ("batch_size", "max_pixels"):
            if int(getattr(c, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(c, name)}")
        if not 1 <= c.label_top_k <= 1000:
            raise ValueError(f"label_top_k: must be in 1..1000, got {c.label_top_k}")
        if c.device.split(":", 1)[0] not in DEVICE_CHOICES:
            raise ValueError(f"device: expected one of {DEVICE_CHOICES}, got {c.device!r}")
        if c.gpus_per_actor is not None and c.gpus_per_actor < 0:
            raise ValueError(f"gpus_per_actor: must be >= 0, got {c.gpus_per_actor}")
        for name in ("actors", "cpu_threads", "decode_threads"):
            value = getattr(c, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}: must be >= 1, got {value}")

    @property
    def decode_threads(self) -> int:
        """Configured, else: an accelerator needs every core decoding to keep up; on CPU the model
        itself uses every core and decoding is a few percent of its cost, so a quarter suffices
        (more threads only preempt torch's OpenMP workers)."""
        if self.config.decode_threads:
            return self.config.decode_threads
        cores = os.cpu_count() or 1
        on_cpu = self.scorer is None or str(getattr(self.scorer, "device", "cpu")).startswith("cpu")
        return max(1, cores // 4) if on_cpu else min(32, cores)

    @property
    def scorer_name(self) -> str:
        c = self.config
        if c.backend == "label_text_similarity":
            from curate.scoring.offline_scorer import LabelTextScorer
            return LabelTextScorer.name
        if c.backend == "open_clip":
            return f"open_clip:{c.model_name}:{c.model_path}"
        return f"{c.backend}:{c.model_path}"

    # --- worker lifecycle ---------------------------------------------------------------------
    def setup(self) -> None:
        from curate.scoring.device import pick_device, resolve_dtype
        device = pick_device(self.config.device)
        if device == "cpu":
            import torch
            torch.set_num_threads(self.config.cpu_threads or os.cpu_count() or 1)
        self.scorer = build_scorer(self.config, device, resolve_dtype(self.config.dtype, device))

    def process_batch(self, batch: pa.Table) -> BatchResult:
        c = self.config
        n = batch.num_rows
        refs = batch.column("images").to_pylist()
        texts_col = batch.column("text").to_pylist()
        convs = batch.column("conversations").to_pylist()
        cats = batch.column("category").to_pylist()
        documents = document_rows(batch)
        segments = batch.column("segments").to_pylist() if "segments" in batch.column_names else [None] * n
        wanted = set(c.categories) if c.categories is not None else None
        # (row, image index, reference, the text it is compared with) for every image that is scored
        items: list[tuple[int, int, Any, str]] = []
        for i in range(n):
            if not refs[i] or (wanted is not None and cats[i] not in wanted):
                continue
            if documents[i]:
                contexts = image_contexts(texts_col[i], segments[i], len(refs[i]))
            else:
                text = sample_text(texts_col[i], convs[i], c.conversation_text) or None
                contexts = [text] * len(refs[i])
            items += [(i, j, ref, _clean(t)) for j, (ref, t) in enumerate(zip(refs[i], contexts)) if t and _clean(t)]
        scores, notes, failed = self._score_items(items)
        values: list[float | None] = [None] * n
        drops: list[Drop | None] = [None] * n
        removals: list[list[tuple[int, Drop]]] = [[] for _ in range(n)]
        for row, j, _, _ in items:   # a sample fails with its first failing image, a document loses it
            if (row, j) in failed:
                if documents[row]:
                    removals[row].append((j, failed[row, j]))
                elif drops[row] is None:
                    drops[row] = failed[row, j]
            elif documents[row] and c.threshold is not None and scores[row, j] < c.threshold:
                removals[row].append((j, self._below(scores[row, j], notes.get((row, j)))))
        for row in sorted({row for row, _, _, _ in items}):
            removed = {j for j, _ in removals[row]}
            kept = [scores[row, j] for r, j, _, _ in items if r == row and (row, j) in scores and j not in removed]
            if drops[row] is not None or not kept:
                continue
            values[row] = float(np.float32(reduce_scores(kept, c.image_reduce)))
            if not documents[row] and c.threshold is not None and values[row] < c.threshold:
                note = next((notes[row, j] for r, j, _, _ in items if r == row and (row, j) in notes), None)
                drops[row] = self._below(values[row], note)
        col = pa.array(values, type=R.WELL_KNOWN_COLUMNS[SCORE])
        idx = batch.schema.get_field_index(SCORE)
        batch = batch.set_column(idx, SCORE, col) if idx >= 0 else batch.append_column(SCORE, col)
        return apply_verdicts(batch, drops, removals, removal_stage(self))

    def _below(self, value: float, note: str | None) -> Drop:
        why = f"; image looks like: {note}" if note else ""
        return Drop("clip:below_threshold", f"score {value:.4f} < {self.config.threshold:g}{why}")

    def _prepare(self, ref: Mapping[str, Any]) -> np.ndarray | Drop:
        """Read + decode + resize one image (runs in a decode thread)."""
        im = read_decoded(ref, self.config.max_pixels, self.scorer.transform)
        return im if isinstance(im, Drop) else self.scorer.prepare_image(im)

    def _score_items(self, items: list[tuple[int, int, Any, str]]
                     ) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], str], dict[tuple[int, int], Drop]]:
        """Cosine of each (row, image) with its text, a note per image when the scorer gives one, and the
        images that could not be read or decoded; decoding in the thread pool overlaps the model."""
        scores: dict[tuple[int, int], float] = {}
        notes: dict[tuple[int, int], str] = {}
        failed: dict[tuple[int, int], Drop] = {}
        if not items:
            return scores, notes, failed
        self.ensure_setup()
        bs = self.config.batch_size
        unique = sorted({text for _, _, _, text in items})
        text_index = {t: j for j, t in enumerate(unique)}
        with ThreadPoolExecutor(self.decode_threads) as pool:
            # every image of the batch is queued at once (FIFO): the model waits only for the first
            # sub-batch, after that decoding runs ahead of it
            futures = [pool.submit(self._prepare, ref) for _, _, ref, _ in items]
            text_emb = self.scorer.encode_texts(unique)          # overlaps the first decodes
            for start, stop in sub_batches(len(items), bs):
                chunk = items[start:stop]
                prepared = [f.result() for f in futures[start:stop]]
                ok = [(item, arr) for item, arr in zip(chunk, prepared) if not isinstance(arr, Drop)]
                for (row, j, _, _), arr in zip(chunk, prepared):
                    if isinstance(arr, Drop):
                        failed[row, j] = arr
                if not ok:
                    continue
                enc = self.scorer.encode_images([arr for _, arr in ok])
                sel = [text_index[text] for (_, _, _, text), _ in ok]
                cos = (enc.embeddings * text_emb[sel]).sum(-1).float().cpu().numpy()
                for k, ((row, j, _, _), _) in enumerate(ok):
                    scores[row, j] = float(cos[k])
                    if enc.notes:
                        notes[row, j] = enc.notes[k]
        return scores, notes, failed

    # --- whole-dataset step and report --------------------------------------------------------
    def global_step(self, data: Any) -> Any:
        """Keep the top `top_fraction` of the scored rows of each source (ties: lower _ordinal)."""
        fraction = float(self.config.top_fraction)

        def describe(score: float, cutoff: float, src: str, scored: int) -> str:
            return f"score {score:.4f} < cutoff {cutoff:.4f} of source {src} (top {fraction:g} of {scored})"

        decisions, summary = top_fraction_step(data, SCORE, fraction, "clip:below_top_fraction", describe)
        return StepResult(decisions, {"clip_score_top_fraction": {"fraction": fraction, "sources": summary}})

    def summary_partial(self, kept: pa.Table) -> pa.Table:
        """Per batch, the kept rows' scores per source, and over all sources (group OVERALL), as
        value histograms (summary_sketch)."""
        return pa.concat_tables([K.distribution(kept.column("source"), SCORE, kept.column(SCORE)),
                                 K.distribution([OVERALL] * kept.num_rows, SCORE, kept.column(SCORE))])

    def summary_merge(self, parts: pa.Table) -> pa.Table:
        return K.merge(parts)

    def summarize(self, kept: pa.Table) -> dict[str, Any]:
        """Score percentiles of the kept rows, per source and overall, for report.json: exact up to
        summary_sketch.EXACT_LIMIT scores a group, within 1.2e-4 relative beyond."""
        summary = K.Summary(K.as_partials(kept, self.summary_partial))

        def entry(group: str) -> dict[str, Any]:
            valid = summary.distribution(group, SCORE)
            out: dict[str, Any] = {"scored": valid.size, "unscored": summary.count(group, SCORE)}
            if valid.size:
                out.update({f"p{p}": round(valid.percentile(p), 4) for p in PERCENTILES})
                out["mean"] = round(valid.mean(), 4)
            return out

        per_source = {src: entry(src) for src in summary.groups(SCORE) if src != OVERALL}
        overall = entry(OVERALL)
        return {SCORE: {"scorer": self.scorer_name, "threshold": self.config.threshold,
                        "top_fraction": self.config.top_fraction, "per_source": per_source, "overall": overall}}


def build_scorer(config: Any, device: str, dtype: Any) -> Any:
    """The scorer a Config names, loaded on `device` (called once per worker from setup())."""
    if config.backend in ("hf_clip", "hf_siglip"):
        from curate.scoring.clip_hf import HFClipScorer
        return HFClipScorer(config.model_path, "clip" if config.backend == "hf_clip" else "siglip", device, dtype)
    if config.backend == "open_clip":
        from curate.scoring.clip_openclip import OpenClipScorer, available
        ok, why = available()
        if not ok:
            raise RuntimeError(f"backend open_clip: {why}")
        return OpenClipScorer(config.model_name, config.model_path, device, dtype)
    if config.backend == "label_text_similarity":
        from curate.scoring.offline_scorer import LabelTextScorer
        return LabelTextScorer(device, dtype, top_k=config.label_top_k)
    raise ValueError(f"backend: unknown {config.backend!r}")
