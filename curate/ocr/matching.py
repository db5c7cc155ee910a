"""Matching two engines' words by box overlap and text similarity, and the agreement between them.

Pure functions over word lists, so the property tests exercise exactly what the stage runs.

* **Overlap** of two words is intersection / smaller area of their axis-aligned boxes (IoMin), not
  IoU: Tesseract's boxes hug the glyphs while a line detector's cut-out words span the line height,
  so the same word can have IoU ~0.5 but IoMin ~1.
* **Similarity** is rapidfuzz's normalised Indel similarity of the comparison keys (``word_key``).
* **One-to-one**: candidate pairs above both thresholds, best first (similarity, then overlap, then
  index: deterministic), each word used once.
* **Split/merged words**: RapidOCR drops spaces ("Invoicetotal:" for "Invoice" "total:"). A word
  left unmatched on one side is compared with the concatenation of the unmatched words of the other
  side that lie inside it (overlap relative to the *small* word's area >= threshold).

Agreement: precision = share of the first engine's words confirmed by the second, recall = share of
the second's confirmed by the first, F1 their harmonic mean; character coverage = characters of
agreed words (weighted by their similarity) over all characters both engines read. Words whose key
is empty (pure punctuation) take no part.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from rapidfuzz import fuzz

from curate.ocr.engines import OcrWord
from curate.ocr.normalize import word_key


@dataclass(frozen=True)
class MatchSettings:
    min_overlap: float = 0.5          # IoMin of the two words' boxes
    min_similarity: float = 0.8       # rapidfuzz ratio / 100 of the keys
    fold_lookalikes: bool = False


@dataclass(frozen=True)
class Agreement:
    """One agreed reading: indices of the words of each engine and the similarity of their keys."""
    first: tuple[int, ...]
    second: tuple[int, ...]
    similarity: float


@dataclass(frozen=True)
class Metrics:
    first_words: int
    second_words: int
    agreed_first: int
    agreed_second: int
    precision: float | None
    recall: float | None
    f1: float | None
    char_coverage: float | None


def boxes_of(words: Sequence[OcrWord]) -> np.ndarray:
    """(n, 4) axis-aligned x1, y1, x2, y2 of each word's quad."""
    if not words:
        return np.zeros((0, 4))
    q = np.asarray([w.quad for w in words], dtype=np.float64)  # (n, 4, 2)
    return np.concatenate([q.min(axis=1), q.max(axis=1)], axis=1)


def overlap_matrix(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersection areas (n, m) and the areas of a (n,) and b (m,)."""
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    area_a = np.maximum((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), 1e-9)
    area_b = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-9)
    return ix * iy, area_a, area_b


def similarity(a: str, b: str) -> float:
    return float(fuzz.ratio(a, b)) / 100.0


def match_words(first: Sequence[OcrWord], second: Sequence[OcrWord], s: MatchSettings) -> list[Agreement]:
    """Agreed readings between two engines' words (see the module docstring)."""
    ka = [word_key(w.text, s.fold_lookalikes) for w in first]
    kb = [word_key(w.text, s.fold_lookalikes) for w in second]
    inter, area_a, area_b = overlap_matrix(boxes_of(first), boxes_of(second))
    iomin = inter / np.minimum(area_a[:, None], area_b[None, :]) if inter.size else inter
    candidates = []
    for i, j in zip(*np.nonzero(iomin >= s.min_overlap)):
        if ka[i] and kb[j]:
            sim = similarity(ka[i], kb[j])
            if sim >= s.min_similarity:
                candidates.append((-sim, -float(iomin[i, j]), int(i), int(j)))
    candidates.sort()
    used_a: set[int] = set()
    used_b: set[int] = set()
    out: list[Agreement] = []
    for neg_sim, _, i, j in candidates:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            out.append(Agreement((i,), (j,), -neg_sim))
    inside_a = inter / area_b[None, :] if inter.size else inter       # share of each b inside a
    out += _merged(ka, kb, inside_a, used_a, used_b, s, flip=False)
    inside_b = inter.T / area_a[None, :] if inter.size else inter.T   # share of each a inside b
    out += _merged(kb, ka, inside_b, used_b, used_a, s, flip=True)
    return sorted(out, key=lambda g: (g.first, g.second))


def _merged(big_keys: list[str], small_keys: list[str], inside: np.ndarray, used_big: set[int],
            used_small: set[int], s: MatchSettings, flip: bool) -> list[Agreement]:
    """One unmatched word of one side = the concatenation of unmatched words of the other inside it."""
    out = []
    for i, key in enumerate(big_keys):
        if i in used_big or not key:
            continue
        parts = [j for j in np.flatnonzero(inside[i] >= s.min_overlap).tolist()
                 if j not in used_small and small_keys[j]]
        if len(parts) < 2:
            continue
        sim = similarity(key, "".join(small_keys[j] for j in parts))
        if sim >= s.min_similarity:
            used_big.add(i)
            used_small.update(parts)
            group = Agreement((i,), tuple(parts), sim)
            out.append(Agreement(group.second, group.first, sim) if flip else group)
    return out


def agreement_metrics(first: Sequence[OcrWord], second: Sequence[OcrWord], agreed: Sequence[Agreement],
                      fold_lookalikes: bool = False) -> Metrics:
    """Word precision/recall/F1 of the first engine against the second, and character coverage."""
    ka = [word_key(w.text, fold_lookalikes) for w in first]
    kb = [word_key(w.text, fold_lookalikes) for w in second]
    n_a = sum(1 for k in ka if k)
    n_b = sum(1 for k in kb if k)
    got_a = sum(len(g.first) for g in agreed)
    got_b = sum(len(g.second) for g in agreed)
    precision = got_a / n_a if n_a else None
    recall = got_b / n_b if n_b else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    chars = sum(len(k) for k in ka) + sum(len(k) for k in kb)
    agreed_chars = sum(g.similarity * (sum(len(ka[i]) for i in g.first) + sum(len(kb[j]) for j in g.second))
                       for g in agreed)
    coverage = agreed_chars / chars if chars else None
    return Metrics(n_a, n_b, got_a, got_b, precision, recall, f1, coverage)
