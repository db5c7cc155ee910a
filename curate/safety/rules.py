"""Keyword rules for URLs and captions, loaded from plain text files (one keyword or phrase a line,
``#`` starts a comment). Users bring their own lists; the project ships none (such lists are policy,
and language- and market-specific).

Matching is case-insensitive on whole words: "sex" must not reject "Essex" or "sextant". URLs are
split into words at every non-alphanumeric character ("/", ".", "-", "_", "?", "="), so
``example.com/nsfw_gallery/1.jpg`` holds the words "nsfw" and "gallery".
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

_URL_SEPARATORS = re.compile(r"[^0-9A-Za-z]+")


def load_keywords(path: str | Path) -> list[str]:
    """Keywords of a list file: stripped, lower-cased, without blanks and comments, sorted, unique."""
    words = set()
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip().lower()
        if line:
            words.add(" ".join(line.split()))
    return sorted(words)


@dataclass(frozen=True)
class KeywordRule:
    """A compiled keyword list; ``find`` returns the first keyword found (in list order) or None."""
    keywords: tuple[str, ...]

    def __post_init__(self) -> None:
        alternatives = "|".join(r"\s+".join(map(re.escape, k.split())) for k in self.keywords)
        object.__setattr__(self, "_pattern", re.compile(rf"(?<![^\W_])(?:{alternatives})(?![^\W_])", re.IGNORECASE)
                           if self.keywords else None)

    def find(self, text: str | None) -> str | None:
        pattern = getattr(self, "_pattern")
        if pattern is None or not text:
            return None
        m = pattern.search(text)
        return " ".join(m.group(0).lower().split()) if m else None

    def find_in_url(self, url: str | None) -> str | None:
        return self.find(_URL_SEPARATORS.sub(" ", url)) if url else None


def sample_urls(meta: str | None, images: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """Where a sample came from: the ``url`` in its metadata (img2dataset writes it) and remote image URIs."""
    urls = []
    if meta:
        try:
            data = json.loads(meta)
        except ValueError:
            data = None
        if isinstance(data, Mapping):
            urls += [str(data[k]) for k in ("url", "URL", "source_url") if data.get(k)]
    urls += [ref["uri"] for ref in (images or []) if str(ref.get("uri", "")).startswith(("http://", "https://"))]
    return urls


def first_url_hit(rule: KeywordRule, texts: Iterable[str]) -> tuple[str, str] | None:
    for text in texts:
        hit = rule.find_in_url(text)
        if hit:
            return hit, text
    return None
