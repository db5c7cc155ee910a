"""Pipeline stages for grounding data: ``grounding_check`` and ``grounding_negatives``.

``grounding_check`` is openPangu-VL's annotation validation (seed 001, section 3, step 3): every
grounding label in the caption and in every conversation turn must follow the grammar. A rejected row
carries ``grounding:<first problem code>`` as its reason and every problem in ``_detail``; the
``grounding_problems`` column lists the codes found (also on kept rows when ``reject_on`` tolerates
some codes). Samples without any tag pass untouched at the cost of one substring test.

``grounding_negatives`` appends "is there a <category>?" / "no such object" turns to grounding
samples whose present categories are known, at the recipe's ratio. It is a stage (rather than only an
ingest helper, ``make_negatives``) because the ratio is a mixture decision that belongs in the recipe
next to the other grounding settings, and because a stage keeps it deterministic per sample
(the generator is seeded with the run seed and the sample key) and reproducible from the recipe hash.
It appends turns to an existing sample instead of creating rows: stages account for every row
(in == out), and a negative question about the same image is a natural extra dialogue turn.

Imports no torch: both stages are pure Python over Arrow columns.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import summary_sketch as K
from curate.grounding.negatives import NEGATIVE_ANSWER, NEGATIVE_PROMPT, make_negatives, negatives_for_ratio
from curate.grounding.parse import validate
from curate.grounding.problems import CODES, Problem
from curate.grounding.screen import cleared_rows
from curate.base import BatchResult, Drop, Resources, Stage, register, split_drops

REASON_PREFIX = "grounding:"
PROBLEM = "problem:"   # the summary counters of tolerated codes
_DETAIL_MAX = 1000


def _column(table: pa.Table, name: str) -> list[Any]:
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def _put_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, values) if i >= 0 else table.append_column(name, values)


def _single_image_size(images: Any) -> tuple[int | None, int | None]:
    if isinstance(images, list) and len(images) == 1 and isinstance(images[0], dict):
        w, h = images[0].get("width"), images[0].get("height")
        if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0:
            return w, h
    return None, None


@register
class GroundingCheck(Stage):
    name: ClassVar[str] = "grounding_check"
    description: ClassVar[str] = (
        "Reject samples whose grounding labels (<|object_ref_start|>..., point/box/quad tags) break the "
        "grammar: unbalanced/nested tags, wrong point counts, coordinates outside [0, 999] or unpadded, "
        "whitespace in labels, box corners out of order, unparseable ```json blocks.")
    requires: ClassVar[tuple[str, ...]] = ("key", "category", "text", "conversations", "images")
    adds: ClassVar[dict[str, pa.DataType]] = {"grounding_problems": pa.string()}
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=2048)
    summary_columns: ClassVar[tuple[str, ...]] = ("grounding_problems",)

    @dataclass
    class Config:
        categories: list[str] | None = field(default=None, metadata={
            "doc": "sample categories to check (e.g. [grounding, gui]); null checks every sample"})
        require_padding: bool = field(default=True, metadata={
            "doc": "coordinates must be written with three digits (008); false accepts 8"})
        reject_on: Literal["all"] | list[str] = field(default="all", metadata={
            "doc": "problem codes that reject a sample ('all', or a list); other codes are only listed "
                   "in the grounding_problems column"})
        check_json: bool = field(default=True, metadata={
            "doc": "also reject ```json blocks that do not parse (structured outputs must be parseable)"})

    def validate_config(self) -> None:
        c = self.config
        if c.reject_on != "all":   # 'all' or a list of strings: check_config
            unknown = sorted(set(c.reject_on) - set(CODES))
            if unknown:
                raise ValueError(f"reject_on: unknown problem code(s) {unknown}; known: {sorted(CODES)}")

    def check_row(self, text: str | None, conversations: list[dict] | None,
                  images: Any = None) -> list[tuple[str, Problem]]:
        """(field, problem) for every problem of one sample, in field order then text order."""
        width, height = _single_image_size(images)
        found: list[tuple[str, Problem]] = []
        fields: list[tuple[str, Any]] = [("text", text)] if text is not None else []
        fields += [(f"conversations[{i}]", (t or {}).get("content")) for i, t in enumerate(conversations or [])]
        for name, value in fields:
            if value is None:
                continue
            for prob in validate(value, width, height, require_padding=self.config.require_padding,
                                 check_json=self.config.check_json):
                found.append((name, prob))
        return found

    def process_batch(self, batch: pa.Table) -> BatchResult:
        cats = self.config.categories
        wanted = None if cats is None else set(cats)
        reject_all = self.config.reject_on == "all"
        rejecting = set() if reject_all else set(self.config.reject_on)
        n = batch.num_rows
        drops: list[Drop | None] = [None] * n
        codes_col: list[str | None] = [None] * n
        # Only rows the vectorised screen cannot clear are scanned in Python (curate.grounding.screen).
        rows = np.flatnonzero(~cleared_rows(batch, self.config.check_json))
        sub = batch.take(pa.array(rows, pa.int64()))
        for i, cat, text, conv, images in zip(rows.tolist(), _column(sub, "category"), _column(sub, "text"),
                                              _column(sub, "conversations"), _column(sub, "images")):
            found = [] if wanted is not None and cat not in wanted else self.check_row(text, conv, images)
            codes = list(dict.fromkeys(p.code for _, p in found))
            codes_col[i] = ",".join(codes) if codes else None
            first = next((p for _, p in found if reject_all or p.code in rejecting), None)
            drops[i] = None if first is None else Drop(REASON_PREFIX + first.code,
                                                       "; ".join(f"{f}: {p}" for f, p in found)[:_DETAIL_MAX])
        return split_drops(_put_column(batch, "grounding_problems", pa.array(codes_col, type=pa.string())), drops)

    def summary_partial(self, kept: pa.Table) -> pa.Table:
        """Per batch, the kept rows per tolerated problem code (exact counters)."""
        counts: Counter[str] = Counter()
        if "grounding_problems" in kept.column_names and kept.num_rows:
            tally = pc.value_counts(kept.column("grounding_problems").combine_chunks())
            for v, n in zip(tally.field("values").to_pylist(), tally.field("counts").to_pylist()):
                for code in (v.split(",") if v else ()):
                    counts[code] += n
        return pa.concat_tables([K.empty(), *(K.counter("", PROBLEM + code, n) for code, n in counts.items())])

    def summary_merge(self, parts: pa.Table) -> pa.Table:
        return K.merge(parts)

    def summarize(self, kept: pa.Table) -> dict[str, Any]:
        """Codes tolerated on kept rows (only non-empty when reject_on is a list)."""
        counts = K.Summary(K.as_partials(kept, self.summary_partial)).counts("", PROBLEM)
        return {"kept_with_problems": counts} if counts else {}


@register
class GroundingNegatives(Stage):
    name: ClassVar[str] = "grounding_negatives"
    description: ClassVar[str] = (
        "Append negative grounding turns (a query for a category absent from the image, answered 'no such "
        "object') to grounding samples whose present categories are known, at the recipe's ratio.")
    requires: ClassVar[tuple[str, ...]] = ("key", "category", "conversations", "meta")
    adds: ClassVar[dict[str, pa.DataType]] = {"grounding_negatives": pa.int32()}
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=2048)
    summary_columns: ClassVar[tuple[str, ...]] = ("grounding_negatives",)

    @dataclass
    class Config:
        vocabulary: list[str] = field(default_factory=list, metadata={
            "doc": "the source's category vocabulary (e.g. the 80 COCO classes) negatives are drawn from"})
        ratio: float = field(default=0.1, metadata={
            "doc": "mean number of negative Q/A pairs appended per eligible sample (0.1: one sample in ten)"})
        categories: list[str] = field(default_factory=lambda: ["grounding"], metadata={
            "doc": "sample categories that receive negatives"})
        present_meta_key: str = field(default="categories", metadata={
            "doc": "key in the sample's meta JSON listing the categories present in the image; samples "
                   "without it are left alone (absence must be known, not guessed)"})
        prompt: str = field(default=NEGATIVE_PROMPT, metadata={"doc": "question template with {name}"})
        answer: str = field(default=NEGATIVE_ANSWER, metadata={"doc": "the answer to an absent category"})

    def validate_config(self) -> None:
        c = self.config
        if not c.vocabulary or not all(isinstance(v, str) and v.strip() for v in c.vocabulary):
            raise ValueError("vocabulary must be a non-empty list of category names")
        if not isinstance(c.ratio, (int, float)) or c.ratio < 0 or c.ratio != c.ratio:
            raise ValueError(f"ratio must be a number >= 0, got {c.ratio!r}")
        if "{name}" not in c.prompt:
            raise ValueError("prompt must contain {name}")

    def _present(self, meta: str | None) -> list[str] | None:
        if not meta:
            return None
        try:
            value = json.loads(meta).get(self.config.present_meta_key)
        except (ValueError, AttributeError):
            return None
        if isinstance(value, list):
            return [v for v in value if isinstance(v, str)]
        return None

    def process_batch(self, batch: pa.Table) -> BatchResult:
        c = self.config
        wanted = set(c.categories)
        keys, cats = _column(batch, "key"), _column(batch, "category")
        convs, metas = _column(batch, "conversations"), _column(batch, "meta")
        added: list[int] = []
        new_convs: list[Any] = []
        for key, cat, conv, meta in zip(keys, cats, convs, metas):
            present = self._present(meta) if cat in wanted and conv else None
            n = 0
            if present is not None:
                rng = random.Random(f"{self.context.seed}:{self.name}:{key}")
                count = negatives_for_ratio(c.ratio, rng)
                if count:
                    # Categories named anywhere in the dialogue (object refs included) count as present.
                    text = "\n".join((t or {}).get("content") or "" for t in conv)
                    tasks = make_negatives(present, c.vocabulary, rng, count=count, text=text,
                                           prompt=c.prompt, answer=c.answer)
                    conv = list(conv) + [turn for task in tasks for turn in task.turns()]
                    n = len(tasks)
            added.append(n)
            new_convs.append(conv)
        if any(added):
            idx = batch.schema.get_field_index("conversations")
            batch = batch.set_column(idx, "conversations", pa.array(new_convs, type=batch.schema.field(idx).type))
        return BatchResult.keep_all(_put_column(batch, "grounding_negatives", pa.array(added, type=pa.int32())))

    def summary_partial(self, kept: pa.Table) -> pa.Table:
        """Per batch: negative turns added and samples that got any (exact counters)."""
        added = np.asarray(pc.fill_null(kept.column("grounding_negatives"), 0).to_numpy(zero_copy_only=False),
                           dtype=np.int64) if "grounding_negatives" in kept.column_names else np.zeros(0, np.int64)
        return pa.concat_tables([K.counter("", "negative_turns_added", int(added.sum())),
                                 K.counter("", "samples_with_negatives", int((added != 0).sum()))])

    def summary_merge(self, parts: pa.Table) -> pa.Table:
        return K.merge(parts)

    def summarize(self, kept: pa.Table) -> dict[str, Any]:
        summary = K.Summary(K.as_partials(kept, self.summary_partial))
        return {"negative_turns_added": summary.count("", "negative_turns_added"),
                "samples_with_negatives": summary.count("", "samples_with_negatives")}
