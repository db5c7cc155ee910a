"""MinHash signatures of character n-grams, vectorised over a whole batch, and the LSH band choice.

Why character n-grams: captions are short (a median web caption is ~10 words). Word 5-shingles
(Data-Juicer, DataTrove) leave a 10-word caption only 6 shingles, so one edited word moves the
Jaccard similarity by ~0.3; character 5-grams give ~50 shingles and a one-word edit moves it by
~0.1, which is what "near duplicate" should mean for captions. NeMo uses 24-character n-grams,
tuned for web documents: on a caption one typo removes 24 of ~40 shingles.

How it is fast: a batch's texts are concatenated as UTF-32 code points, every n-gram gets a
polynomial rolling hash finished with the splitmix64 mixer (all in numpy, no per-shingle Python),
and each of the ``num_perm`` hash functions is ``(a_k * h + b_k) >> 32`` with odd 64-bit ``a_k``
(multiply-shift on an already mixed 64-bit value). The signature of a text is the column-wise
minimum over its n-grams (``np.minimum.reduceat``). Texts shorter than ``n`` have no n-gram: they get
no signature and are matched on their exact hash instead (see ``curate.dedup.stages``).

Band choice (``choose_bands``): for a threshold t, pick bands x rows <= num_perm minimising
``fp_weight * P(candidate | s < t) + fn_weight * P(miss | s >= t)`` integrated over s, the method of
datasketch's ``_optimal_param``. Candidates are verified from the signatures afterwards, so false
positives only cost a comparison: the default weights favour recall (0.2 / 0.8).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_POLY = np.uint64(0x100000001B3)   # FNV-64 prime: odd, spreads code points over all 64 bits
_trapezoid = getattr(np, "trapezoid", None) or np.trapz   # renamed in numpy 2.0
# Rows of the (shingles x num_perm) working matrix per chunk: 16k x 128 x 8 B = 16 MB.
_CHUNK_SHINGLES = 16_384


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (a bijection on uint64 with full avalanche). Wrap-around is intended."""
    z = np.asarray(x, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


@dataclass(frozen=True)
class Permutations:
    """The ``num_perm`` hash functions, fixed by a seed so signatures are comparable across workers."""
    a: np.ndarray   # odd uint64 multipliers
    b: np.ndarray   # uint64 offsets

    @classmethod
    def make(cls, num_perm: int, seed: int) -> "Permutations":
        rng = np.random.Generator(np.random.PCG64(seed))
        a = rng.integers(0, 2**63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        b = rng.integers(0, 2**63, num_perm, dtype=np.uint64) * np.uint64(2)
        return cls(a, b)

    @property
    def num_perm(self) -> int:
        return int(self.a.shape[0])


def shingle_hashes(texts: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every character n-gram of every text, and per-text counts.

    Returns (hashes, counts): ``hashes`` holds the n-grams of text 0, then text 1, ...; a text with
    fewer than n characters contributes none (count 0)."""
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    counts = np.maximum(lengths - n + 1, 0)
    if counts.sum() == 0:
        return np.empty(0, dtype=np.uint64), counts
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    # start position of every n-gram: starts[t] + 0..counts[t]-1, for texts that have any
    owner = np.repeat(np.arange(len(texts)), counts)
    pos = starts[owner] + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    h = np.zeros(pos.shape[0], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * _POLY + codes[pos + j]
    return mix64(h ^ np.uint64(n)), counts


def signatures(texts: Sequence[str], n: int, perms: Permutations) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures (len(texts) x num_perm, uint32) and a mask of texts that have one."""
    hashes, counts = shingle_hashes(texts, n)
    out = np.full((len(texts), perms.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    has = counts > 0
    if not has.any():
        return out, has
    bounds = np.concatenate([[0], np.cumsum(counts)])
    text_idx = np.flatnonzero(has)
    # Process whole texts in chunks of about _CHUNK_SHINGLES n-grams to bound memory.
    i = 0
    while i < len(text_idx):
        j = i + 1
        while j < len(text_idx) and bounds[text_idx[j] + 1] - bounds[text_idx[i]] <= _CHUNK_SHINGLES:
            j += 1
        chunk = text_idx[i:j]
        lo, hi = bounds[chunk[0]], bounds[chunk[-1] + 1]
        with np.errstate(over="ignore"):
            permuted = ((hashes[lo:hi, None] * perms.a[None, :] + perms.b[None, :]) >> np.uint64(32)).astype(np.uint32)
        offsets = bounds[chunk] - lo
        out[chunk] = np.minimum.reduceat(permuted, offsets, axis=0)
        i = j
    return out, has


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Fraction of equal signature positions, row by row: an unbiased estimate of Jaccard similarity."""
    return np.mean(np.asarray(sig_a) == np.asarray(sig_b), axis=-1)


def bbit_jaccard(low_a: np.ndarray, low_b: np.ndarray, bits: int = 8) -> np.ndarray:
    """Jaccard estimate from the lowest `bits` of each signature value (b-bit MinHash, Li & Koenig 2010):
    unequal values still agree with probability 2^-bits, so P(equal) = J + (1 - J) 2^-bits."""
    chance = 2.0 ** -bits
    return (estimated_jaccard(low_a, low_b) - chance) / (1.0 - chance)


def collision_probability(s: np.ndarray | float, bands: int, rows: int) -> np.ndarray:
    """P(two sets of Jaccard s share at least one band) = 1 - (1 - s^rows)^bands."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


def choose_bands(threshold: float, num_perm: int, fp_weight: float = 0.2, fn_weight: float = 0.8,
                 ) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising the weighted false positive/negative areas."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if num_perm < 1:
        raise ValueError("num_perm must be >= 1")
    grid_lo = np.linspace(0.0, threshold, 201)
    grid_hi = np.linspace(threshold, 1.0, 201)
    best: tuple[float, int, int] | None = None
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = _trapezoid(collision_probability(grid_lo, bands, rows), grid_lo)
            fn = _trapezoid(1.0 - collision_probability(grid_hi, bands, rows), grid_hi)
            err = fp_weight * fp + fn_weight * fn
            if best is None or err < best[0] - 1e-12:
                best = (err, bands, rows)
    assert best is not None
    return best[1], best[2]


def band_keys(sigs: np.ndarray, bands: int, rows: int, salt: int = 0) -> np.ndarray:
    """One uint64 bucket key per (row, band): a mixed hash of that band's ``rows`` signature values.

    The band index is part of the key, so equal values in different bands never share a bucket."""
    sigs = np.asarray(sigs)
    if bands * rows > sigs.shape[1]:
        raise ValueError(f"{bands} bands x {rows} rows need {bands * rows} values, signature has {sigs.shape[1]}")
    n = sigs.shape[0]
    keys = np.empty((n, bands), dtype=np.uint64)
    for b in range(bands):
        k = np.full(n, np.uint64((salt * 1_000_003 + b + 1) & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
        for r in range(rows):
            k = mix64(k ^ sigs[:, b * rows + r].astype(np.uint64))
        keys[:, b] = k
    return keys
