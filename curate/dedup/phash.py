"""Perceptual hashes of images on a reduced decode, and bit-sampling LSH over them.

pHash (the DCT hash of imagehash / pHash.org): grey 32x32 thumbnail, 2-D DCT-II, the 8x8
lowest frequencies, one bit per coefficient above their median -> 64 bits. Re-encoding, resizing
and a crop of a few percent move few of these bits; different photos differ in ~half of them.

Decoding is the cost, so it is reduced: for JPEG, Pillow's ``draft`` lets libjpeg decode at 1/2,
1/4 or 1/8 scale straight from the DCT coefficients (a 4000x3000 photo decodes as 500x375), which
is all a 32x32 thumbnail needs. The DCT runs on the whole batch at once (``scipy.fft.dctn``). The
thumbnail and the hash live in ``curate.media.image_facts``: ``image_filter`` computes them from its own
reduced decode and carries them (the ``image_facts`` column), so this decode runs only for images the
filter did not decode.

Blank and near-blank images have no structure: their 64 low-frequency coefficients are rounding
noise, so their hashes collide with each other at random. ``flat`` marks images whose thumbnail
standard deviation is below a threshold; the stage leaves them to the exact-bytes path (and the
image filter's blank rule) instead of letting them form one huge false group.

Bit-sampling LSH (Indyk & Motwani): each band samples ``bits_per_band`` of the 64 bit positions;
two hashes at Hamming distance d agree on one band with probability C(64-d, k)/C(64, k). The number
of bands is chosen so that a pair at the tolerance ``max_distance`` collides in at least one band
with probability >= ``target_recall``; candidates are then confirmed by their exact Hamming distance.
"""
from __future__ import annotations

import math

import numpy as np

from curate.dedup.minhash import mix64
from curate.media.image_facts import HASH_BITS, LOW, THUMB, phash_batch, thumb_std, thumbnail

__all__ = ["HASH_BITS", "LOW", "THUMB", "band_keys", "choose_image_bands", "hamming", "is_flat", "phash_batch",
           "sampled_positions", "thumbnail"]


def is_flat(thumbs: np.ndarray, max_std: float) -> np.ndarray:
    """True for thumbnails with (almost) no structure: their pHash is noise."""
    return thumb_std(thumbs) < max_std


_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit differences between uint64 hashes, element-wise (np.bitwise_count on numpy >= 2)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    x = np.ascontiguousarray(x)
    return _BYTE_POPCOUNT[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def band_agreement(distance: int, bits_per_band: int, bits: int = HASH_BITS) -> float:
    """P(all sampled positions of one band agree) for two hashes at `distance` (sampling w/o replacement)."""
    if bits_per_band > bits - distance:
        return 0.0
    return math.comb(bits - distance, bits_per_band) / math.comb(bits, bits_per_band)


def choose_image_bands(max_distance: int, bits_per_band: int, target_recall: float, max_bands: int = 256) -> int:
    """Fewest bands such that a pair at `max_distance` collides in one of them with P >= target_recall."""
    if not 0 < target_recall < 1:
        raise ValueError("target_recall must be in (0, 1)")
    p = band_agreement(max_distance, bits_per_band)
    if p <= 0:
        raise ValueError(f"bits_per_band={bits_per_band} can never match at distance {max_distance}")
    if p >= 1:
        return 1
    bands = max(1, math.ceil(math.log(1 - target_recall) / math.log(1 - p)))
    if bands > max_bands:
        raise ValueError(f"{bands} bands of {bits_per_band} bits needed for recall {target_recall} at distance "
                         f"{max_distance} (more than {max_bands}): lower bits_per_band or target_recall")
    return bands


def sampled_positions(bands: int, bits_per_band: int, seed: int) -> np.ndarray:
    """(bands x bits_per_band) bit positions, distinct within a band, fixed by the seed."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return np.stack([rng.permutation(HASH_BITS)[:bits_per_band] for _ in range(bands)]).astype(np.uint64)


def band_keys(hashes: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """One uint64 bucket key per (hash, band): the band's sampled bits, packed, mixed with the band index."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    bands, k = positions.shape
    weights = np.uint64(1) << np.arange(k, dtype=np.uint64)
    keys = np.empty((hashes.shape[0], bands), dtype=np.uint64)
    for b in range(bands):
        bits = (hashes[:, None] >> positions[b][None, :]) & np.uint64(1)
        packed = (bits * weights).sum(axis=1, dtype=np.uint64)
        keys[:, b] = mix64(packed ^ (np.uint64(b + 1) << np.uint64(48)))
    return keys
