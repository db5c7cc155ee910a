"""Text normalisation and content hashes: the keys that make two samples "the same".

Two normal forms, because exact and near-duplicate matching want different things:

* ``exact_text`` (exact_dedup): NFKC, case folded, runs of whitespace collapsed to one space and
  trimmed. Re-typed or re-wrapped copies of a caption hash equal; a changed comma does not.
* ``fuzzy_text`` (text_dedup, decontaminate): ``exact_text`` with punctuation and symbols removed as
  well, so that the character n-grams the MinHash sees are words and spaces only (scraped captions
  differ by quotes, dashes and trailing dots far more often than by words).

Hashes are BLAKE2b (fast, in the standard library, stable across machines and Python versions;
Python's ``hash()`` is salted per process and would break determinism).
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable, Sequence

from curate.media.image_facts import bytes_digest as image_bytes_digest

_SPACE = re.compile(r"\s+")
# Unicode categories dropped by the fuzzy form: punctuation (P*) and symbols (S*).
_DROP_CATEGORIES = ("P", "S")
_PUNCT_CACHE: dict[str, bool] = {}


def exact_text(text: str | None) -> str:
    """NFKC + casefold + collapsed whitespace. None and whitespace-only text become ''."""
    if not text:
        return ""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _is_punct(ch: str) -> bool:
    hit = _PUNCT_CACHE.get(ch)
    if hit is None:
        hit = _PUNCT_CACHE[ch] = unicodedata.category(ch)[0] in _DROP_CATEGORIES
    return hit


def fuzzy_text(text: str | None) -> str:
    """``exact_text`` without punctuation and symbols (each replaced by a space, then collapsed)."""
    base = exact_text(text)
    if not base:
        return ""
    stripped = "".join(" " if _is_punct(ch) else ch for ch in base)
    return _SPACE.sub(" ", stripped).strip()


def digest(parts: Iterable[bytes], size: int = 16) -> bytes:
    """BLAKE2b over length-prefixed parts (so ("ab", "c") and ("a", "bc") differ)."""
    h = hashlib.blake2b(digest_size=size)
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.digest()


def text_hash(normalised: str) -> str:
    """Hex content hash of an already-normalised text ('' hashes too: callers skip empty texts)."""
    return digest([b"text", normalised.encode("utf-8")]).hex()


def sample_hash(normalised_text: str, image_digests: Sequence[bytes]) -> str:
    """Hex content hash of a whole sample: its normalised text and the tuple of its images' byte digests.

    For interleaved / multi-image samples the image order is part of the identity."""
    parts = [b"sample", normalised_text.encode("utf-8"), len(image_digests).to_bytes(4, "little")]
    return digest(parts + list(image_digests)).hex()


def bytes_digest(data: bytes) -> bytes:
    """BLAKE2b-128 of an image's bytes: ``image_facts.bytes_digest``, which image_filter carries."""
    return image_bytes_digest(data)

