"""``document_filter``: the rules that judge an interleaved document as a whole.

Per-image rules (``image_filter``, ``nsfw_filter``, ``repeated_images``...) take single images out of a
document; what is left is judged here, and only here is a document rejected for what its images and
text add up to. The rules, in the order they run (the first that fails names the reason):

=============================  ==========================================================  ===========
reason                         rule                                                        default
=============================  ==========================================================  ===========
``document:no_text``           the joined text is empty or whitespace (``require_text``)   on
``document:too_few_images``    fewer images than ``min_images``                            off (0)
``document:too_many_images``   more images than ``max_images``                             off (0)
``document:images_per_word``   images / max(words, 1) outside [``min_images_per_word``,   off (0)
                               ``max_images_per_word``] (NeMo Curator's image-to-text ratio)
``text:*``                     the text rules of ``text_filter`` on the joined text        off
                               (``text_rules``; the preset and overrides are text_filter's)
=============================  ==========================================================  ===========

Images are the ones still in the document (``images``), after the per-image rules upstream. Words are
counted as the text rules count them (``curate.filters.text_rules``: a CJK character is a word, so a
Chinese page is not taken for an image gallery), on the joined text. The ratio bounds are inclusive
and compared exactly (``Fraction``, the limit taken as the decimal the recipe wrote): 3 images over 10
words is at ``max_images_per_word: 0.3`` and stays.

The text rules are text_filter's own functions (``batch_verdicts``: the vectorised screen, then the
caption rules on what it cannot clear), run on the joined paragraphs, so a document is judged by the
rules a caption is (duplicate lines are repeated paragraphs). Their preset's ``max_chars`` (50,000 in
``default``) applies to the whole document: set it higher (or 0) for long documents.

Rows that are not documents (``segments`` null: captions, conversations) pass unchanged.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from fractions import Fraction
from typing import ClassVar, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import BatchResult, Resources, Stage, register
from curate.base import Drop, split_drops
from curate.filters.presets import TEXT_PRESETS, TextThresholds, preset_settings, thresholds_of
from curate.filters.text_rules import batch_verdicts, tokenize, words_of


@dataclass(frozen=True)
class DocumentLimits:
    """The document rules' limits; 0 turns a count or ratio rule off."""
    require_text: bool = True
    min_images: int = 0
    max_images: int = 0
    min_images_per_word: float = 0.0
    max_images_per_word: float = 0.0

    @property
    def ratio_on(self) -> bool:
        return bool(self.min_images_per_word) or bool(self.max_images_per_word)


def word_count(text: str | None) -> int:
    """Words as the text rules count them (CJK characters one each)."""
    return len(words_of(tokenize(text or "")))


def as_written(limit: float) -> Fraction:
    """A limit as the decimal the recipe wrote: the shortest decimal that reads back as this float (so
    0.3 is 3/10, not the binary float just below it, and 3 images over 10 words is at the limit)."""
    return Fraction(repr(float(limit)))


def ratio_drop(images: int, words: int, limits: DocumentLimits) -> Drop | None:
    """The images-per-word rule, exactly: images / max(words, 1) against inclusive bounds."""
    per = max(words, 1)
    ratio = Fraction(images, per)
    if limits.min_images_per_word and ratio < as_written(limits.min_images_per_word):
        return Drop("document:images_per_word", f"{images} images / {words} words = {images / per:.4g} "
                                                f"< {limits.min_images_per_word:g}")
    if limits.max_images_per_word and ratio > as_written(limits.max_images_per_word):
        return Drop("document:images_per_word", f"{images} images / {words} words = {images / per:.4g} "
                                                f"> {limits.max_images_per_word:g}")
    return None


def judge_document(text: str | None, images: int, limits: DocumentLimits) -> Drop | None:
    """Every document rule but the text rules, in order; None when the document stays."""
    if limits.require_text and (text is None or not text.strip()):
        return Drop("document:no_text", "no text left in the document")
    if limits.min_images and images < limits.min_images:
        return Drop("document:too_few_images", f"{images} images < {limits.min_images}")
    if limits.max_images and images > limits.max_images:
        return Drop("document:too_many_images", f"{images} images > {limits.max_images}")
    if limits.ratio_on:
        return ratio_drop(images, word_count(text), limits)
    return None


def document_rows(batch: pa.Table) -> np.ndarray:
    """Indices of the rows that are documents (``segments`` not null)."""
    if "segments" not in batch.column_names:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(np.asarray(pc.is_valid(batch.column("segments")).to_numpy(zero_copy_only=False), dtype=bool))


def batch_document_verdicts(batch: pa.Table, limits: DocumentLimits, text_th: TextThresholds | None
                            ) -> list[Drop | None]:
    """A verdict per row: the document rules for documents (then the text rules on the survivors when
    `text_th` is given), None for every other row."""
    drops: list[Drop | None] = [None] * batch.num_rows
    rows = document_rows(batch)
    if rows.shape[0] == 0:
        return drops
    at = pa.array(rows, pa.int64())
    texts = batch.column("text").take(at).to_pylist()
    counts = pc.fill_null(pc.list_value_length(batch.column("images").take(at)), 0).to_pylist()
    for i, text, images in zip(rows.tolist(), texts, counts):
        drops[i] = judge_document(text, images, limits)
    if text_th is not None:
        alive = [i for i in rows.tolist() if drops[i] is None]
        if alive:
            sub = batch.take(pa.array(alive, pa.int64()))
            for i, drop in zip(alive, batch_verdicts(sub, text_th)):
                if drop is not None:
                    detail = (drop.detail or "").removeprefix("caption: ")
                    drops[i] = Drop(drop.reason, "document text: " + detail, drop.status)
    return drops


_EXTRA: Sequence[tuple[str, type, object]] = [
    ("require_text", bool, field(default=True, metadata={
        "doc": "Reject documents whose joined text is empty (document:no_text)."})),
    ("min_images", int, field(default=0, metadata={
        "doc": "Fewest images a document must keep (document:too_few_images); 0 turns the rule off."})),
    ("max_images", int, field(default=0, metadata={
        "doc": "Most images a document may hold (document:too_many_images); 0 turns the rule off."})),
    ("min_images_per_word", float, field(default=0.0, metadata={
        "doc": "Smallest images / max(words, 1) (document:images_per_word, inclusive); 0 turns it off."})),
    ("max_images_per_word", float, field(default=0.0, metadata={
        "doc": "Largest images / max(words, 1) (document:images_per_word, inclusive); 0 turns it off."})),
    ("text_rules", bool, field(default=False, metadata={
        "doc": "Run text_filter's rules (the preset and overrides above) on the joined text of each document."})),
]


@register
class DocumentFilter(Stage):
    name: ClassVar[str] = "document_filter"
    description: ClassVar[str] = ("Interleaved documents as a whole: no text left, image count range, images per word, "
                                  "and (text_rules) text_filter's rules on the joined text. Other rows pass.")
    requires: ClassVar[tuple[str, ...]] = ("text", "conversations", "images", "segments")
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=256, kind="task")

    Config = preset_settings("DocumentFilter", __name__, TextThresholds, TEXT_PRESETS, extra=_EXTRA)

    def validate_config(self) -> None:
        c = self.config
        for name in ("min_images", "max_images", "min_images_per_word", "max_images_per_word"):
            if getattr(c, name) < 0:
                raise ValueError(f"{name}: must be >= 0 (0 turns the rule off), got {getattr(c, name)}")
        if c.max_images and c.min_images > c.max_images:
            raise ValueError(f"min_images: {c.min_images} > max_images {c.max_images}")
        if c.max_images_per_word and c.min_images_per_word > c.max_images_per_word:
            raise ValueError(f"min_images_per_word: {c.min_images_per_word} > max_images_per_word {c.max_images_per_word}")
        if not c.text_rules:
            given = [f.name for f in dataclasses.fields(TextThresholds) if getattr(c, f.name) is not None]
            if given or c.preset != "default":
                raise ValueError(f"{(given or ['preset'])[0]}: a text rule setting without text_rules: true has no effect")
        self.limits = DocumentLimits(c.require_text, c.min_images, c.max_images, float(c.min_images_per_word),
                                     float(c.max_images_per_word))
        self.text_thresholds: TextThresholds | None = (
            thresholds_of(c, TextThresholds, TEXT_PRESETS) if c.text_rules else None)

    def process_batch(self, batch: pa.Table) -> BatchResult:
        return split_drops(batch, batch_document_verdicts(batch, self.limits, self.text_thresholds))
