"""Rule-based image filtering: the cheap checks first, pixels only when a rule needs them.

The rules, in the order they run (the first that fails names the reason):

=====================================  =================================  ==========================
reason                                 what is looked at                  cost
=====================================  =================================  ==========================
``image:too_large_to_decode``          width x height from the reference  none (ingest read it)
``image:aspect_ratio``                 width, height                      none
``image:min_side``                     width, height                      none
``image:min_pixels``                   width, height                      none
``image:unreadable:<code>``            fetching the bytes                 one read (*quarantined*)
``image:corrupt``                      the header                         header parse
``image:low_jpeg_quality``             JPEG quantization tables           header parse, no decode
``image:truncated`` (progressive)      JPEG scan headers                  a byte search, no decode
``image:corrupt`` (decode failed)      a reduced copy                     JPEG DCT-scaled decode
``image:blank``                        per-channel std of a ~64 px copy   one pass in C
``image:truncated`` (baseline)         decoder grey fill in that copy     a row check
``image:blurry`` (off by default)      Laplacian variance, 256 px grey    a 2nd reduced decode for
``image:qr_code`` (off by default)     QR codes found on that copy        large JPEGs; QR ~5-10 ms
``image:low_bits_per_pixel``           encoded size / pixels              none (lossy formats)
=====================================  =================================  ==========================

Why this order: header rules need no I/O at all, so the common rejections (small, banner-shaped,
bombs) cost nothing. Aspect ratio runs before the size rules so that a 1200x100 banner is named a
banner. JPEG quality needs only the quantization tables that ``Image.open`` parses without
``load()`` (the estimate is cached per table). The blank check decodes JPEGs at a reduced DCT scale
(``image_pixels``: the scale of pHash's thumbnail, so that this one decode also gives
``image_dedup`` its thumbnail) and also proves that the bytes decode at all — a payload that fails
is ``image:corrupt``. A JPEG cut short with its end marker put back decodes *without* an error in
libjpeg: ``curate.media.jpeg`` explains the two signs it leaves (``image:truncated``). Blank is
named before baseline truncation: a uniform mid-grey image is blank whatever made it. Bits per
pixel runs last: a uniform image also compresses to almost nothing, and "blank" is the better name.

Bytes are read for a whole batch at once (``prefetch``: each container opened once, members read
in offset order), and only for images that passed the header rules: every rule above the decode
row needs no decode, and an image those rules reject is never decoded. The pixel checks (corrupt,
blank, baseline truncation) share one reduced decode and run when ``blank_max_std`` is on.

What a passing image's read and decode established — its byte digest, pHash and thumbnail std —
is carried to later stages in the ``image_facts`` column (``curate.media.image_facts``): ``exact_dedup``
and ``image_dedup`` then neither read nor decode it again. Only when a later stage of the run reads
the column (``StageContext.later_reads``; the dedup stages declare it in ``reads_if_present``): else
the column stays null and the filter takes no digest, makes no thumbnail, and decodes a JPEG at 1/8
scale (``image_pixels.decode_checks``) — the same verdicts at ~0.5 ms less per image.

Unreadable *bytes* (a missing file, a short read from a container) are *quarantined*, not rejected:
the sample may be fine and the storage broken, so a rerun can recover it. Bytes that are there but
are not a decodable image are rejected as ``image:corrupt``.

A sample with several images is rejected if any image fails (the reason of the first failing
image, the detail says which). Text-only samples pass. An interleaved document is never rejected
here: each of its images is judged on its own and a failing one is removed from the document with
its reason (``images_removed``; curate.documents.per_image).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import field
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import pyarrow as pa

from curate.media import images as I
from curate.base import Drop, split_drops
from curate.media.decode import read_or_drop
from curate.filters.image_pixels import decode_checks, max_channel_std
from curate.filters.image_quality import quality_rules_on
from curate.media.jpeg import estimate_jpeg_quality, progressive_scans_missing
from curate.filters.presets import IMAGE_PRESETS, ImageThresholds, preset_settings, thresholds_of
from curate.media.image_facts import FACTS_COLUMN, FACTS_TYPE, ImageFact, bytes_digest, facts_column, ref_id
from curate.base import ALL_COLUMNS, BatchResult, Resources, Stage, register
from curate.documents.per_image import document_rows, removal_stage, removals_of
from curate.documents.record import remove_images

__all__ = ["ImageFilter", "check_image", "check_sample", "estimate_jpeg_quality", "header_drop", "judge_sample",
           "max_channel_std"]

LOSSY_FORMATS = frozenset({"JPEG", "WEBP", "MPO", "JPEG2000"})

ReadBytes = Callable[[Mapping[str, Any]], bytes]


# --- the rules ------------------------------------------------------------------------------------
def header_drop(width: int, height: int, th: ImageThresholds) -> Drop | None:
    """The rules that need only the size: bombs, banners, thumbnails."""
    pixels = width * height
    if th.max_pixels and pixels > th.max_pixels:
        return Drop("image:too_large_to_decode", f"{width}x{height} = {pixels} pixels > {th.max_pixels}")
    short, long_ = min(width, height), max(width, height)
    if short <= 0:
        return Drop("image:corrupt", f"invalid size {width}x{height}")
    aspect = long_ / short
    if th.max_aspect_ratio and aspect > th.max_aspect_ratio:
        return Drop("image:aspect_ratio", f"aspect {aspect:.2f} > {th.max_aspect_ratio:g} ({width}x{height})")
    if th.min_side and short < th.min_side:
        return Drop("image:min_side", f"min side {short} < {th.min_side} ({width}x{height})")
    if th.min_pixels and pixels < th.min_pixels:
        return Drop("image:min_pixels", f"{pixels} pixels < {th.min_pixels} ({width}x{height})")
    return None


def _known_size(ref: Mapping[str, Any]) -> tuple[int, int] | None:
    width, height = ref.get("width"), ref.get("height")
    return (int(width), int(height)) if width and height else None


def needs_bytes(ref: Mapping[str, Any], th: ImageThresholds) -> bool:
    """Whether the rules left after the header rules need the encoded bytes of this image."""
    return _known_size(ref) is None or bool(th.min_jpeg_quality) or bool(th.blank_max_std) or quality_rules_on(th)


def reference_drop(ref: Mapping[str, Any], th: ImageThresholds) -> Drop | None:
    """The header rules, when ingest recorded the size: no I/O at all."""
    size = _known_size(ref)
    return header_drop(*size, th) if size else None


def bits_per_pixel_drop(ref: Mapping[str, Any], size: tuple[int, int], encoded: int, th: ImageThresholds
                        ) -> Drop | None:
    fmt = (ref.get("format") or "").upper()
    if th.min_bits_per_pixel and fmt in LOSSY_FORMATS and encoded >= 0:
        bpp = encoded * 8 / (size[0] * size[1])
        if bpp < th.min_bits_per_pixel:
            return Drop("image:low_bits_per_pixel", f"{bpp:.3f} bits per pixel < {th.min_bits_per_pixel:g}")
    return None


def _unreadable_drop(exc: I.UnreadableImage) -> Drop:
    if exc.reason in ("decompression_bomb", "too_large_to_decode"):
        return Drop("image:too_large_to_decode", exc.detail)
    return Drop("image:corrupt", f"{exc.reason}: {exc.detail}")


def check_bytes(ref: Mapping[str, Any], data: bytes, th: ImageThresholds, thumbnail: bool = True
                ) -> tuple[Drop | None, np.ndarray | None]:
    """The rules that look at the encoded bytes (and, for blank/truncated/corrupt, one reduced decode);
    with the verdict, with `thumbnail`, that decode's 32x32 thumbnail when it gives pHash's
    (``image_pixels``)."""
    try:
        im = I.open_image(data, th.max_pixels)
    except I.UnreadableImage as exc:
        return _unreadable_drop(exc), None
    size = _known_size(ref)
    if size is None:
        size = im.size
        drop = header_drop(*size, th)
        if drop:
            return drop, None
    if im.format == "JPEG":
        if th.min_jpeg_quality:
            quality = estimate_jpeg_quality(getattr(im, "quantization", None))
            if quality is not None and quality < th.min_jpeg_quality:
                return Drop("image:low_jpeg_quality", f"estimated JPEG quality {quality:.0f} < {th.min_jpeg_quality}"), None
        missing = progressive_scans_missing(data) if im.info.get("progressive") else []
        if missing:
            return Drop("image:truncated", f"progressive JPEG ends before components {missing} are fully refined"), None
    thumb = None
    if th.blank_max_std or quality_rules_on(th):
        drop, thumb = decode_checks(im, data, th, thumbnail)
        if drop:
            return drop, None
    encoded = ref.get("size")
    drop = bits_per_pixel_drop(ref, size, len(data) if encoded is None or encoded < 0 else encoded, th)
    return drop, (thumb if drop is None else None)


def judge_image(ref: Mapping[str, Any], th: ImageThresholds, read: ReadBytes = I.read_image_bytes,
                facts_wanted: bool = True) -> tuple[Drop | None, ImageFact | None]:
    """Every rule for one image reference, and, with `facts_wanted`, what its read established
    (``image_facts``) when it was read and passed; (None, None) for an image that passes on its header
    alone. Without `facts_wanted` (no later stage reads them) no digest is taken and no thumbnail made."""
    drop = reference_drop(ref, th)
    if drop is not None:
        return drop, None
    if not needs_bytes(ref, th):
        encoded = ref.get("size")
        return bits_per_pixel_drop(ref, _known_size(ref), -1 if encoded is None else encoded, th), None
    got = read_or_drop(ref, read)
    if isinstance(got, Drop):
        return got, None
    drop, thumb = check_bytes(ref, got, th, facts_wanted)
    if drop is not None or not facts_wanted:
        return drop, None
    return None, ImageFact(ref_id(ref), bytes_digest(got), thumb)


def check_image(ref: Mapping[str, Any], th: ImageThresholds, read: ReadBytes = I.read_image_bytes) -> Drop | None:
    """Every rule for one image reference; None when the image passes."""
    return judge_image(ref, th, read)[0]


def judge_sample(refs: Sequence[Mapping[str, Any]] | None, th: ImageThresholds, read: ReadBytes = I.read_image_bytes,
                 facts_wanted: bool = True) -> tuple[Drop | None, list[ImageFact] | None]:
    """A sample fails with its first failing image (samples without images pass); a passing sample's
    facts, one per image, or None when some image passed without being read."""
    refs = refs or []
    facts: list[ImageFact] | None = []
    for i, ref in enumerate(refs):
        drop, fact = judge_image(ref, th, read, facts_wanted)
        if drop is not None:
            where = f"image {i + 1}/{len(refs)}: " if len(refs) > 1 else ""
            return Drop(drop.reason, where + (drop.detail or ""), drop.status), None
        facts = None if fact is None or facts is None else facts + [fact]
    return None, facts


def judge_document(refs: Sequence[Mapping[str, Any]] | None, th: ImageThresholds, read: ReadBytes = I.read_image_bytes,
                   facts_wanted: bool = True) -> tuple[list[tuple[int, Drop]], list[ImageFact] | None]:
    """Every image of a document on its own (curate.documents.per_image): the failing ones with their
    reasons, and the facts of the images that stay (None when some stayed without being read)."""
    failing: list[tuple[int, Drop]] = []
    facts: list[ImageFact] | None = []
    for i, ref in enumerate(refs or []):
        drop, fact = judge_image(ref, th, read, facts_wanted)
        if drop is not None:
            failing.append((i, drop))
        else:
            facts = None if fact is None or facts is None else facts + [fact]
    return failing, facts


def check_sample(refs: Sequence[Mapping[str, Any]] | None, th: ImageThresholds,
                 read: ReadBytes = I.read_image_bytes) -> Drop | None:
    """A sample fails with its first failing image; samples without images pass."""
    return judge_sample(refs, th, read)[0]


def prefetch(rows: Sequence[Sequence[Mapping[str, Any]] | None], th: ImageThresholds) -> ReadBytes:
    """Read, in one pass per container file, the bytes every image of a batch will need; returns a
    `read` for ``check_sample`` that serves them (and raises a failed read's error for its image)."""
    wanted = [ref for refs in rows for ref in (refs or []) if reference_drop(ref, th) is None and needs_bytes(ref, th)]
    fetched = {id(ref): got for ref, got in zip(wanted, I.read_many(wanted))}

    def read(ref: Mapping[str, Any]) -> bytes:
        got = fetched[id(ref)] if id(ref) in fetched else I.read_image_bytes(ref)
        if isinstance(got, Exception):
            raise got
        return got
    return read


# --- the stage ------------------------------------------------------------------------------------
@register
class ImageFilter(Stage):
    name: ClassVar[str] = "image_filter"
    description: ClassVar[str] = ("Rule-based image filtering: decode budget, aspect ratio, min side/pixels, corrupt, "
                                  "JPEG quality, truncated, blank, bits per pixel. Header rules need no I/O.")
    requires: ClassVar[tuple[str, ...]] = ("images",)
    adds: ClassVar[dict[str, pa.DataType]] = {FACTS_COLUMN: FACTS_TYPE}
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=128, kind="task")

    Config = preset_settings("ImageFilter", __name__, ImageThresholds, IMAGE_PRESETS, extra=[
        ("io_threads", int, field(default=4, metadata={"doc": "Threads reading and decoding images in a batch."}))])

    def validate_config(self) -> None:
        self.thresholds: ImageThresholds = thresholds_of(self.config, ImageThresholds, IMAGE_PRESETS)
        if self.config.io_threads < 1:
            raise ValueError(f"io_threads: must be >= 1, got {self.config.io_threads}")
        later = self.context.later_reads
        # image_facts is written for the dedup stages only: without one later in the run the column
        # stays null, and no digest, thumbnail or pHash is computed (the verdicts are the same).
        self.carries_facts = later is None or FACTS_COLUMN in later or ALL_COLUMNS[0] in later

    def output_variant(self) -> dict[str, bool]:
        return {FACTS_COLUMN: self.carries_facts}

    def process_batch(self, batch: pa.Table) -> BatchResult:
        rows = batch.column("images").to_pylist()
        documents = document_rows(batch)
        th = self.thresholds
        read = prefetch(rows, th)
        wanted = self.carries_facts

        def judge(row: int) -> tuple[Drop | None, list[tuple[int, Drop]], list[ImageFact] | None]:
            if documents[row]:   # each image on its own: failing images leave the document
                return (None, *judge_document(rows[row], th, read, wanted))
            drop, facts = judge_sample(rows[row], th, read, wanted)
            return drop, [], facts
        if self.config.io_threads > 1 and len(rows) > 1:
            with ThreadPoolExecutor(self.config.io_threads) as pool:
                judged = list(pool.map(judge, range(len(rows))))
        else:
            judged = [judge(row) for row in range(len(rows))]
        out = remove_images(batch, [removals_of(failing) for _, failing, _ in judged], removal_stage(self))
        facts = facts_column([f for _, _, f in judged])
        idx = out.schema.get_field_index(FACTS_COLUMN)
        out = out.set_column(idx, FACTS_COLUMN, facts) if idx >= 0 else out.append_column(FACTS_COLUMN, facts)
        return split_drops(out, [d for d, _, _ in judged])
