"""Negative grounding samples: ask for a category that is not in the image, answer "no such object".

openPangu-VL "incorporate[s] negative samples derived from queries targeting randomly selected objects
that are absent from the image" (seed 001, section 3). Absence must be *known*: the categories present
come from the source's annotations (COCO instance labels), never guessed from a caption — a caption
saying "a man" does not tell us there is no "person". The drawn category is also skipped when its
name appears anywhere in the sample's text, as a guard against vocabularies with synonyms.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

from curate.grounding.convert import GroundingTask, RandomLike, pick

NEGATIVE_PROMPT = "Locate every {name} in the image and output its bounding box."
NEGATIVE_ANSWER = "There is no such object in the image."


def _norm(name: str) -> str:
    return " ".join(name.lower().split())


def absent_categories(present: Iterable[str], vocabulary: Sequence[str], text: str = "") -> list[str]:
    """Vocabulary entries (first-seen order, case/space-insensitive unique) not present and not named
    in `text` (whole-word match)."""
    have = {_norm(p) for p in present if isinstance(p, str)}
    low = text.lower()
    out, seen = [], set()
    for v in vocabulary:
        n = _norm(v)
        if not n or n in seen or n in have:
            continue
        seen.add(n)
        if low and re.search(rf"(?<!\w){re.escape(n)}(?!\w)", low):
            continue
        out.append(v.strip())
    return out


def negatives_for_ratio(ratio: float, rng: RandomLike) -> int:
    """How many negatives one sample gets so that the mean is `ratio` (0.3 -> 0 or 1, 2.5 -> 2 or 3)."""
    if ratio < 0 or not math.isfinite(ratio):
        raise ValueError(f"ratio must be a finite number >= 0, got {ratio}")
    whole = math.floor(ratio)
    return whole + (1 if rng.random() < ratio - whole else 0)


def make_negatives(present: Iterable[str], vocabulary: Sequence[str], rng: RandomLike, *, count: int = 1,
                   text: str = "", prompt: str = NEGATIVE_PROMPT, answer: str = NEGATIVE_ANSWER
                   ) -> list[GroundingTask]:
    """Up to `count` negative tasks for distinct categories drawn from `vocabulary` minus `present`
    (fewer when the vocabulary runs out). Deterministic for a seeded `rng`."""
    pool = absent_categories(present, vocabulary, text)
    tasks = []
    for _ in range(min(count, len(pool))):
        name = pool.pop(pick(rng, len(pool)))
        tasks.append(GroundingTask("negative", prompt.format(name=name), answer))
    return tasks
