"""The ``nsfw_filter`` stage: NudeNet's shipped detector on an actor pool, plus keyword rules.

Per sample, cheapest first: the URL keyword list (metadata ``url`` and remote image URIs), the caption
keyword list (caption and every conversation turn), then the classifier on every image (the sample's
score is the maximum over its images). Rejected rows carry the reason (``nsfw:url_keyword``,
``nsfw:caption_keyword``, ``nsfw:classifier``) and what was measured: the keyword and where it was
found, or the class, score and box. ``nsfw_score`` is written on every scored row (rule rejects are not
scored: the detector never runs on them).

An interleaved document is judged as a page and as images (curate.documents.per_image): a keyword in
its URL or its text rejects the document; each image is checked on its own (a keyword in its own URL,
the detector, a failed read or decode) and a failing image is removed from the document with that
reason; ``nsfw_score`` is the highest score among the images left.

Threshold default 0.5: NudeNet itself reports detections from 0.2 (its NMS input floor); 0.5 is the
point where the detector is more sure than not. No labelled NSFW calibration set can ship with this
project, so tune it on your data: the report gives the score percentiles of kept samples per source.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np
import pyarrow as pa

from curate.media import images as I
from curate.base import records as R
from curate.base import summary_sketch as K
from curate.base import Drop, split_drops
from curate.media.decode import read_decoded
from curate.media.decode import decode_or_drop, read_or_drop
from curate.safety.classifier import DEFAULT_UNSAFE, NudityDetector, known_classes, unsafe_score
from curate.safety.rules import KeywordRule, first_url_hit, load_keywords, sample_urls
from curate.base import BatchResult, Resources, Stage, register
from curate.documents.per_image import apply_verdicts, document_rows, removal_stage

SCORE = "nsfw_score"
PERCENTILES = (50, 90, 99)


@register
class NsfwFilter(Stage):
    name: ClassVar[str] = "nsfw_filter"
    description: ClassVar[str] = ("Reject unsafe images: NudeNet's offline detector (threshold) combined with "
                                  "URL and caption keyword lists given as files.")
    requires: ClassVar[tuple[str, ...]] = ("images", "text", "conversations", "meta", "category", "source")
    adds: ClassVar[Mapping[str, pa.DataType]] = {SCORE: pa.float32()}
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=64, kind="actor")
    summary_columns: ClassVar[tuple[str, ...]] = ("source", SCORE)

    @dataclass
    class Config:
        threshold: float = field(default=0.5, metadata={
            "doc": "Reject when the highest unsafe-class detection score reaches this."})
        unsafe_classes: list[str] = field(default_factory=lambda: list(DEFAULT_UNSAFE), metadata={
            "doc": "NudeNet classes that count as unsafe."})
        url_keywords_file: str | None = field(default=None, metadata={
            "doc": "Text file, one keyword a line: reject samples whose URL holds one (whole words)."})
        caption_keywords_file: str | None = field(default=None, metadata={
            "doc": "Text file, one keyword or phrase a line: reject samples whose text holds one."})
        classifier: bool = field(default=True, metadata={"doc": "Run the detector (false: keyword rules only)."})
        categories: list[str] | None = field(default=None, metadata={
            "doc": "Only samples of these categories are checked; None: all."})
        max_pixels: int = field(default=I.MAX_DECODE_PIXELS, metadata={"doc": "Refuse to decode larger images."})
        actors: int | None = field(default=None, metadata={"doc": "Detector actors; None: one per core."})

    def __init__(self, config: Any = None, context: Any = None, **settings: Any):
        super().__init__(config, context, **settings)
        self.resources = Resources(cpus=1, batch_size=type(self).resources.batch_size, kind="actor",
                                   concurrency=self.config.actors)
        self.url_rule = KeywordRule(tuple(load_keywords(self.config.url_keywords_file))
                                    if self.config.url_keywords_file else ())
        self.caption_rule = KeywordRule(tuple(load_keywords(self.config.caption_keywords_file))
                                        if self.config.caption_keywords_file else ())
        self.detector: NudityDetector | None = None

    def validate_config(self) -> None:
        c = self.config
        if not 0.0 < float(c.threshold) <= 1.0:
            raise ValueError(f"threshold: must be in (0, 1], got {c.threshold}")
        labels = known_classes()
        if unknown := set(c.unsafe_classes) - set(labels):
            raise ValueError(f"unsafe_classes: unknown {sorted(unknown)}; NudeNet has {sorted(labels)}")
        for name in ("url_keywords_file", "caption_keywords_file"):
            path = getattr(c, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name}: no such file {path!r}")

    def setup(self) -> None:
        if self.config.classifier:
            self.detector = NudityDetector(threads=1)

    def process_batch(self, batch: pa.Table) -> BatchResult:
        c = self.config
        cats = batch.column("category").to_pylist()
        metas = batch.column("meta").to_pylist()
        refs = batch.column("images").to_pylist()
        texts = R.text_of(batch)
        wanted = set(c.categories) if c.categories is not None else None
        documents = document_rows(batch)
        scores: list[float | None] = []
        drops: list[Drop | None] = []
        removals: list[list[tuple[int, Drop]]] = []
        for cat, meta, ref_list, text, is_doc in zip(cats, metas, refs, texts, documents):
            if wanted is not None and cat not in wanted:
                scores.append(None)
                drops.append(None)
                removals.append([])
                continue
            if is_doc:   # the page's URL and words judge the document; each image is judged alone
                drop = self._rules(meta, [], text)
                judged = [] if drop is not None else self._judge_document_images(ref_list or [])
                kept = [score for _, bad, score in judged if bad is None and score is not None]
                scores.append(float(np.float32(max(kept))) if kept else None)
                drops.append(drop)
                removals.append([(i, bad) for i, bad, _ in judged if bad is not None])
                continue
            drop = self._rules(meta, ref_list, text)
            score = None
            if drop is None and self.detector is not None and ref_list:
                score, drop = self._classify(ref_list)
            scores.append(score)
            drops.append(drop)
            removals.append([])
        col = pa.array(scores, type=pa.float32())
        i = batch.schema.get_field_index(SCORE)
        batch = batch.set_column(i, SCORE, col) if i >= 0 else batch.append_column(SCORE, col)
        return apply_verdicts(batch, drops, removals, removal_stage(self))

    def _judge_document_images(self, refs: list[Mapping[str, Any]]) -> list[tuple[int, Drop | None, float | None]]:
        """(index, why it leaves or None, its score) per image of a document: an image leaves for a
        keyword in its own URL, an unsafe detection, or bytes that do not read or decode."""
        out: list[tuple[int, Drop | None, float | None]] = []
        for i, ref in enumerate(refs):
            drop = self._rules(None, [ref], "")
            score = None
            if drop is None and self.detector is not None:
                score, drop = self._classify([ref])
            out.append((i, drop, score))
        return out

    def _rules(self, meta: str | None, refs: Any, text: str) -> Drop | None:
        hit = first_url_hit(self.url_rule, sample_urls(meta, refs))
        if hit:
            return Drop("nsfw:url_keyword", f"keyword {hit[0]!r} in url {hit[1][:300]}")
        word = self.caption_rule.find(text)
        if word:
            return Drop("nsfw:caption_keyword", f"keyword {word!r} in text")
        return None

    def _classify(self, refs: list[Mapping[str, Any]]) -> tuple[float | None, Drop | None]:
        """Max unsafe score over the images; the first image that fails to read or decode drops the row."""
        assert self.detector is not None
        best, best_det = 0.0, None
        for ref in refs:
            image = read_decoded(ref, self.config.max_pixels)
            if isinstance(image, Drop):
                return None, image
            score, det = unsafe_score(self.detector.detect(image), self.config.unsafe_classes)
            if det is not None and score > best:
                best, best_det = score, det
        best = float(np.float32(best))
        if best_det is not None and best >= self.config.threshold:
            return best, Drop("nsfw:classifier", f"{best_det.label} score {best:.3f} >= {self.config.threshold:g} "
                                                 f"at box x,y,w,h={list(best_det.box)}")
        return best, None

    def summary_partial(self, kept: pa.Table) -> pa.Table:
        """Per batch, the kept rows' scores per source as a value histogram (summary_sketch)."""
        return K.distribution(kept.column("source"), SCORE, kept.column(SCORE))

    def summary_merge(self, parts: pa.Table) -> pa.Table:
        return K.merge(parts)

    def summarize(self, kept: pa.Table) -> dict[str, Any]:
        """Percentiles of the kept samples' scores per source (to tune the threshold); exact up to
        summary_sketch.EXACT_LIMIT scores a source, within 1.2e-4 relative beyond."""
        out: dict[str, Any] = {}
        summary = K.Summary(K.as_partials(kept, self.summary_partial))
        for src in summary.groups(SCORE):
            v = summary.distribution(src, SCORE)
            out[src] = {"scored": v.size, **({f"p{p}": round(v.percentile(p), 4) for p in PERCENTILES}
                                             if v.size else {})}
        return {SCORE: {"threshold": self.config.threshold, "per_source": out}}
