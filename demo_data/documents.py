"""The demo's interleaved source: ~20 web-page-like documents in one MINT-1T-style tar.

Each document is a ``{key}.json`` member (aligned ``texts`` / ``images`` lists) plus its images as
``{key}.{n}.jpg`` members (curate.readers.mint1t), built from the bundled photos and the lesson
paragraphs the text-only source uses. Planted, each with what the demo must do with it:

* a corrupt image inside a good document (``doc-04``, its second image: a JPEG cut in half with its end marker put
  back, so its header probes at ingest): ``image_filter`` removes that image
  (``image:truncated``), the document goes on;
* one photo twice in one document (``doc-05``): ``image_dedup`` removes the second copy
  (``dedup:image_repeated_in_document``);
* a logo repeated across documents (``LOGO_DOCUMENTS``): what the repeated-images step counts and
  removes (a recipe without that step keeps it);
* a document longer than the demo's 2,048-token context (``doc-18``, ``LONG_DOCUMENT``): ``pack``
  rejects it as ``overlong`` unless the recipe splits documents (``overlong: split``);
* a misaligned document (``doc-19``: one more text than images) and a document whose JSON names an
  image member the tar does not hold (``doc-16``): both rejected at ingest.

Deterministic: fixed seeds, fixed tar headers (curate's sample writer), so the bytes are stable.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

SOURCE = "documents"
DOCUMENTS = 20
LOGO_DOCUMENTS = (1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17)   # more pages than any photo is on
LONG_DOCUMENT = f"{SOURCE}/doc-18"
CORRUPT_DOCUMENT, REPEAT_DOCUMENT = 4, 5

# planted removals: document key -> [(position in the document as read, stage, reason)]
REMOVED: dict[str, list[tuple[int, str, str]]] = {
    f"{SOURCE}/doc-{CORRUPT_DOCUMENT:02d}": [(1, "image_filter", "image:truncated")],
    f"{SOURCE}/doc-{REPEAT_DOCUMENT:02d}": [(1, "image_dedup", "dedup:image_repeated_in_document")],
}


def logo() -> bytes:
    """A publisher's logo: flat colours and a shape, the kind of image OBELICS drops by counting it."""
    im = Image.new("RGB", (160, 160), (250, 250, 245))
    draw = ImageDraw.Draw(im)
    draw.ellipse((20, 20, 140, 140), fill=(20, 60, 160))
    draw.rectangle((60, 50, 100, 110), fill=(240, 200, 40))
    draw.text((48, 120), "HARBOUR", fill=(255, 255, 255))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _photo_jpeg(path: str, width: int = 320) -> bytes:
    from demo_data.tarfiles import jpeg_bytes
    im = Image.open(path).convert("RGB")
    im = im.resize((width, max(1, round(im.height * width / im.width))))
    return jpeg_bytes(im, quality=88)


_DETERMINERS = ("The", "A", "One", "Every", "This", "That", "Each", "Some", "Our", "Their")
_ADJECTIVES = ("quiet", "narrow", "golden", "ancient", "busy", "distant", "gentle", "rusty", "bright", "hollow",
               "northern", "crowded", "patient", "curious", "sturdy", "faded", "hidden", "wooden", "silver", "modest")
_NOUNS = ("harbour", "lighthouse", "ferry", "market", "bridge", "orchard", "library", "tower", "garden", "river",
          "workshop", "station", "museum", "village", "canal", "meadow", "bakery", "school", "quarry", "valley",
          "mill", "chapel", "pier", "forest", "archive", "tavern", "square", "fountain", "island", "road")
_VERBS = ("faces", "overlooks", "shelters", "follows", "borders", "serves", "outlasts", "hides", "joins", "crosses",
          "echoes", "frames", "guards", "feeds", "mirrors", "surrounds", "welcomes", "divides", "lights", "remembers")
_PREPOSITIONS = ("beside", "beyond", "under", "above", "behind", "across", "along", "around", "past", "toward")


def varied_paragraph(rng: np.random.Generator, sentences: int = 3) -> str:
    """A paragraph of varied sentences (no line or n-gram repeats that a text rule would flag)."""
    out = []
    for _ in range(sentences):
        pick = [int(rng.integers(len(w))) for w in (_DETERMINERS, _ADJECTIVES, _NOUNS, _VERBS, _PREPOSITIONS,
                                                      _DETERMINERS, _ADJECTIVES, _NOUNS)]
        det, adj, noun, verb, prep, det2, adj2, noun2 = (w[i] for w, i in zip(
            (_DETERMINERS, _ADJECTIVES, _NOUNS, _VERBS, _PREPOSITIONS, _DETERMINERS, _ADJECTIVES, _NOUNS), pick))
        out.append(f"{det} {adj} {noun} {verb} the {noun2} {prep} {det2.lower()} {adj2} {_NOUNS[(pick[2] + 7) % len(_NOUNS)]}.")
    return " ".join(out)


def _cut(data: bytes) -> bytes:
    return data[:len(data) // 2] + b"\xff\xd9"


def build_documents(root: Path, pics: list, topics: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Write ``root/documents/pages-00000.tar``; returns the planted rejections (key -> (stage, reason))."""
    from demo_data.tarfiles import write_tar
    rng = np.random.default_rng(20261207)
    jpegs = {p.name: _photo_jpeg(p.file) for p in pics}
    members: list[tuple[str, bytes]] = []
    expected: dict[str, tuple[str, str]] = {}
    logo_bytes = logo()
    for d in range(DOCUMENTS):
        key = f"doc-{d:02d}"
        picks = rng.choice(len(pics), size=3, replace=False)
        texts: list[str | None] = []
        images: list[str | None] = []
        blobs: list[bytes] = []

        def paragraph(text: str) -> None:
            texts.append(text)
            images.append(None)

        def image(data: bytes) -> None:
            texts.append(None)
            images.append(f"{len(blobs)}.jpg")
            blobs.append(data)
        paragraph(f"Page {d + 1}. {topics[d % len(topics)]}")
        for j, k in enumerate(picks[: 1 + d % 3]):
            photo = pics[k]
            paragraph(photo.caption)
            image(_cut(jpegs[photo.name]) if d == CORRUPT_DOCUMENT and j == 1 else jpegs[photo.name])
            if d == REPEAT_DOCUMENT and j == 0:
                paragraph(f"The same picture again: {photo.caption.lower()}")
                image(jpegs[photo.name])
        if d == int(LONG_DOCUMENT.rsplit("-", 1)[1]):
            for j in range(70):
                paragraph(f"Section {j + 1}. {varied_paragraph(rng)}")
                if j % 14 == 5:
                    image(jpegs[pics[j % len(pics)].name])
        if d in LOGO_DOCUMENTS:
            paragraph("Published by the Harbour Press.")
            image(logo_bytes)
        doc = {"texts": texts, "images": images, "url": f"https://pages.example.org/{key}.html"}
        if d == 16:   # the JSON names a member the tar does not hold
            doc["images"] = [None if v is None else f"{int(v[:-4]) + 7}.jpg" for v in images]
            expected[f"{SOURCE}/{key}"] = ("ingest", "document:missing_member")
        if d == 19:   # one more text than images
            doc["texts"] = texts + ["A trailing paragraph without its image slot."]
            expected[f"{SOURCE}/{key}"] = ("ingest", "document:misaligned")
        members.append((f"{key}.json", json.dumps(doc, sort_keys=True).encode()))
        members += [(f"{key}.{n}.jpg", data) for n, data in enumerate(blobs)]
    out = root / SOURCE
    out.mkdir(parents=True, exist_ok=True)
    write_tar(out / "pages-00000.tar", members)
    return expected
