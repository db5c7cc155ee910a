"""Exact, fast text-token counts for whole Arrow columns (see ``TextCounter``).

Texts are cut at spaces that are guaranteed pre-token boundaries of the Qwen2 regex (a space right
after a non-whitespace character), the pieces are hashed with Arrow, and only pieces never seen
before go through the tokenizer. The sum of the pieces' counts equals ``len(tokenizer.encode(text))``
(tests check it on adversarial unicode); anything not splittable that way is simply kept whole.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Bytes that may end a whitespace character, used to find safe split points (see TextCounter).
_ASCII_WS = np.zeros(256, dtype=bool)
_ASCII_WS[[0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20]] = True


class TextCounter:
    """Exact, fast token counts for many texts with a byte-level BPE tokenizer (Qwen2, GPT-2 style).

    Why it is exact: the tokenizer splits text at added tokens, normalises (NFC) and cuts it into
    pre-tokens with a regex; BPE never merges across pre-tokens. A space that follows a
    non-whitespace character always starts a new pre-token in the Qwen2/GPT-4 style regex (no
    alternative of the pattern continues from a non-space character into a space; NFC never composes
    across a space; no added token contains a space), so the count of a text is the sum of the counts
    of the pieces cut there. Whitespace characters before a space (double spaces, newlines, NBSP,
    U+2000..U+206F, U+3000, and conservatively any 3-byte character whose second byte marks those
    blocks) are never cut after. Other tokenizers are counted whole (``splittable`` is False).

    Why it is fast: the cutting, hashing and summing run in numpy/Arrow; only pieces never seen
    before reach the tokenizer (a bounded cache keeps the counts).
    """

    ROWS_PER_PASS = 65536

    def __init__(self, backend: Any, cache_size: int = 2_000_000):
        self.backend = backend
        self.cache_size = cache_size
        # The cache lives in Arrow: pieces seen so far and their counts, probed with one hash join
        # per pass (no Python work per piece).
        self.known = pa.array([], type=pa.large_string())
        self.known_counts = np.zeros(0, dtype=np.int64)
        self.splittable = self._is_splittable(backend)
        self.digits_alone = self.splittable and self._digits_alone(backend)
        self._encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch

    @staticmethod
    def _is_splittable(backend: Any) -> bool:
        import json
        try:
            spec = json.loads(backend.to_str())
        except Exception:  # noqa: BLE001
            return False
        norm = spec.get("normalizer")
        if norm is not None and norm.get("type") not in ("NFC",):
            return False
        pre = spec.get("pre_tokenizer") or {}
        parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
        kinds = [p.get("type") for p in parts]
        if not kinds or kinds[0] != "Split" or any(k not in ("Split", "ByteLevel") for k in kinds):
            return False
        if any(p.get("type") == "ByteLevel" and (p.get("use_regex") or p.get("add_prefix_space")) for p in parts):
            return False
        split = parts[0]
        pattern = (split.get("pattern") or {}).get("Regex", "")
        qwen_like = r"[^\r\n\p{L}\p{N}]?\p{L}+" in pattern and r"\s+(?!\S)" in pattern
        if not qwen_like or split.get("behavior") != "Isolated" or split.get("invert"):
            return False
        if (spec.get("model") or {}).get("type") != "BPE":
            return False
        if any(" " in t.get("content", "") or t.get("lstrip") or t.get("rstrip")
               for t in spec.get("added_tokens", [])):
            return False
        return True

    @staticmethod
    def _digits_alone(backend: Any) -> bool:
        """Whether every digit is a pre-token of its own (Qwen2: ``\\p{N}`` alone, where GPT-4 style
        patterns have ``\\p{N}{1,3}``) and no added token holds an ASCII digit: then a cut next to an
        ASCII digit whose other side is an ASCII non-space character is a pre-token boundary too (no
        alternative of the pattern spans a digit; no lookahead sees across non-space; NFC composes
        nothing onto or with an ASCII digit). Grounding coordinates "(123,456)" then cut into pieces
        from a tiny vocabulary, instead of one piece per box that the tokenizer must encode."""
        import json
        spec = json.loads(backend.to_str())
        pre = spec.get("pre_tokenizer") or {}
        parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
        pattern = ((parts[0] if parts else {}).get("pattern") or {}).get("Regex", "")
        return r"\p{N}" in pattern.split("|") and \
            not any(any(c.isdigit() for c in t.get("content", "")) for t in spec.get("added_tokens", []))

    def count(self, texts: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> np.ndarray:
        arr = _to_large_string(texts)
        n = len(arr)
        out = np.zeros(n, dtype=np.int64)
        for lo in range(0, n, self.ROWS_PER_PASS):
            part = arr.slice(lo, min(self.ROWS_PER_PASS, n - lo))
            out[lo:lo + len(part)] = self._count_pass(part) if self.splittable else self._count_whole(part)
        return out

    def _count_whole(self, arr: pa.Array) -> np.ndarray:
        texts = [t or "" for t in arr.to_pylist()]
        return np.fromiter((len(e.ids) for e in self._encode(texts, add_special_tokens=False)),
                           dtype=np.int64, count=len(texts))

    def _piece_counts(self, pieces: pa.Array) -> np.ndarray:
        """Token count of every piece: cached ones by a hash join, new ones through the tokenizer."""
        pos = np.asarray(pc.fill_null(pc.index_in(pieces, value_set=self.known), -1).to_numpy(zero_copy_only=False),
                         dtype=np.int64)
        miss = pos < 0
        if miss.any():
            missing = pieces.filter(pa.array(miss))
            new = pc.unique(missing)
            texts = new.to_pylist()
            counts = np.fromiter((len(e.ids) for e in self._encode(texts, add_special_tokens=False)),
                                 dtype=np.int64, count=len(texts))
            if len(self.known) + len(new) > self.cache_size:
                self.known, self.known_counts = new, counts
            else:
                self.known = pa.concat_arrays([self.known, new])
                self.known_counts = np.concatenate([self.known_counts, counts])
            sub = pc.index_in(missing, value_set=self.known)
            pos[miss] = np.asarray(sub.to_numpy(zero_copy_only=False), dtype=np.int64)
        return self.known_counts[pos]

    def _count_pass(self, arr: pa.Array) -> np.ndarray:
        n = len(arr)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        bufs = arr.buffers()
        offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset: arr.offset + n + 1]
        begin, end = int(offsets[0]), int(offsets[-1])
        if end == begin:
            return np.zeros(n, dtype=np.int64)
        data = np.frombuffer(bufs[2], dtype=np.uint8)
        seg = data[begin:end]
        # Candidate cut points: every space that is not the first byte of its string.
        sp = np.flatnonzero(seg == 0x20)
        nonempty = np.flatnonzero(offsets[1:] > offsets[:-1])
        mark = np.zeros(end - begin, dtype=bool)       # first byte of a (non-empty) string, then of a piece
        mark[offsets[nonempty] - begin] = True
        sp = sp[~mark[sp]]
        if sp.size:
            p1 = sp - 1                     # >= 0: a string never starts at a non-first candidate
            b1 = seg[p1]
            ws = _ASCII_WS[b1]
            multi = b1 >= 0x80
            if multi.any():
                b2 = seg[np.maximum(p1 - 1, 0)]
                b3 = seg[np.maximum(p1 - 2, 0)]
                ws |= multi & (b2 == 0xC2) & ((b1 == 0x85) | (b1 == 0xA0))
                ws |= multi & ((b3 == 0xE1) | (b3 == 0xE2) | (b3 == 0xE3)) & \
                    ((b2 == 0x80) | (b2 == 0x81) | (b2 == 0x9A))
            sp = sp[~ws]
        first = mark.copy()
        mark[sp] = True
        if self.digits_alone:
            mark[_digit_cuts(seg, first)] = True
        piece_start = np.flatnonzero(mark)
        # Owner of each piece: the k-th first piece of a string starts the k-th non-empty string.
        owner = nonempty[np.cumsum(first[piece_start]) - 1]
        piece_offsets = np.empty(piece_start.size + 1, dtype=np.int64)
        piece_offsets[:-1] = piece_start + begin
        piece_offsets[-1] = end
        pieces = pa.LargeStringArray.from_buffers(piece_start.size, pa.py_buffer(piece_offsets), bufs[2])
        per_piece = self._piece_counts(pieces)
        return np.bincount(owner, weights=per_piece, minlength=n).astype(np.int64)


def _to_large_string(texts: Any) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks else pa.array([], pa.large_string())
    if not isinstance(texts, pa.Array):
        texts = pa.array(list(texts), type=pa.large_string())
    if texts.type != pa.large_string():
        texts = texts.cast(pa.large_string())
    if texts.null_count:
        texts = pc.fill_null(texts, "")
    return texts


_DIGIT = np.zeros(256, dtype=bool)
_DIGIT[0x30:0x3A] = True
_ASCII_SOLID = np.zeros(256, dtype=bool)   # ASCII and not whitespace: a safe neighbour for a digit cut
_ASCII_SOLID[:0x80] = True
_ASCII_SOLID[_ASCII_WS] = False


def _digit_cuts(seg: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Piece starts next to ASCII digits (``TextCounter._digits_alone``): before a digit that follows
    an ASCII non-space byte, and after a digit that an ASCII non-space byte follows, never at a
    string's first byte (`first`)."""
    digit = _DIGIT[seg]
    solid = _ASCII_SOLID[seg]
    before = np.zeros(len(seg), dtype=bool)
    before[1:] = digit[1:] & solid[:-1]
    after = np.zeros(len(seg), dtype=bool)
    after[1:] = digit[:-1] & solid[1:]
    return np.flatnonzero((before | after) & ~first)
