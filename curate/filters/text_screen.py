"""A vectorised screen in front of the text rules: which captions no rule can drop.

``check_text`` runs a dozen rules in Python, one caption at a time (tokenising, counting characters,
counting n-grams, looking for tail loops): about 60-90 µs a caption, most of a metadata-only
curation run's CPU. Nearly every caption passes every rule. This screen proves that for whole
batches at once with pyarrow and numpy, and only the captions it cannot clear go through
``check_text`` — so every verdict, reason and detail is still the rule code's own.

Each rule's screen is a necessary condition for the rule to fire: exact for the character counts,
lengths, word counts, boilerplate gates and tail loops, an upper bound for the n-gram coverage (the
largest coverage of any n-gram that repeats often enough, which bounds the top n-gram's). A caption
the screen passes therefore passes ``check_text``; the property tests check this on generated text.

It judges only what it models exactly: a caption without conversation turns whose text is printable
ASCII (0x20-0x7e: no newline, so one line, and ``\\s`` is the space alone), without ``<`` (markup)
and ``|`` (tables), not blank. Everything else goes to the rules unscreened.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.filters.presets import TextThresholds
from curate.filters.text_lexicon import GENERIC_OR_STOP, SPAM_FIRST_WORDS, TAIL_LOOP_MAX_PERIOD, ngram_limits

_NOT_SCREENABLE = r"[^\x20-\x3b\x3d-\x7b\x7d\x7e]"   # outside printable ASCII, or '<', or '|'
_PUNCT = r"([^a-z0-9_ ])"                            # a token of its own (tokenize's [^\w\s])
_GENERIC = pa.array(sorted(GENERIC_OR_STOP))
_SPAM_FIRST = pa.array(sorted(SPAM_FIRST_WORDS))
_BYTE_CLASS = np.zeros(256, dtype=np.int8)          # 0 symbol, 1 letter, 2 digit, 3 space
_BYTE_CLASS[ord("a"):ord("z") + 1] = _BYTE_CLASS[ord("A"):ord("Z") + 1] = 1
_BYTE_CLASS[ord("0"):ord("9") + 1] = 2
_BYTE_CLASS[ord(" ")] = 3


def cleared(texts: pa.Array, conversations: pa.Array | None, th: TextThresholds) -> np.ndarray:
    """For each row, True when no text rule can drop its caption (module docstring); False: unknown."""
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    n = len(texts)
    out = np.zeros(n, dtype=bool)
    if n == 0 or th.max_duplicate_line_ratio < 0:   # a negative limit would drop one-line texts too
        return out
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        return out   # e.g. an all-null column typed null: every row is empty, for the rules to say
    if conversations is not None and pa.types.is_null(conversations.type):
        conversations = None   # no row has turns
    ok = pc.and_kleene(pc.is_valid(texts), pc.invert(pc.match_substring_regex(texts, _NOT_SCREENABLE)))
    if conversations is not None:
        turns = pc.list_value_length(conversations)
        ok = pc.and_(ok, pc.or_kleene(pc.is_null(turns), pc.equal(turns, 0)))
    stripped = pc.utf8_trim_whitespace(texts)
    ok = pc.fill_null(pc.and_kleene(ok, pc.greater(pc.binary_length(stripped), 0)), False)
    rows = np.flatnonzero(ok.to_numpy(zero_copy_only=False))
    if len(rows):
        out[rows] = ~_may_drop(pc.take(stripped, pa.array(rows)).cast(pa.string()), th)
    return out


def _may_drop(text: pa.Array, th: TextThresholds) -> np.ndarray:
    """Screenable, stripped captions: True where some rule may fire."""
    length, letters, digits, spaces = _char_counts(text)
    nonspace = length - spaces
    symbols = nonspace - letters - digits
    may = np.zeros(len(text), dtype=bool)
    judged = nonspace >= th.ratio_min_chars
    with np.errstate(divide="ignore", invalid="ignore"):
        if th.max_symbol_ratio:
            may |= judged & (symbols / nonspace > th.max_symbol_ratio)
        if th.max_digit_ratio:
            may |= judged & (digits / nonspace > th.max_digit_ratio)
    if th.min_caption_chars:
        may |= nonspace < th.min_caption_chars
    if th.max_chars:
        may |= length > th.max_chars
    ids, parent, vocabulary = _tokens(text)
    # Token properties are computed once per distinct token (the batch's vocabulary), then gathered.
    is_word = _first_byte_is_word(vocabulary)[ids]
    words_per_row = np.bincount(parent[is_word], minlength=len(text))
    if th.min_caption_words:
        may |= words_per_row < th.min_caption_words
    if th.boilerplate_max_words:
        may |= (words_per_row <= th.boilerplate_max_words) & _boilerplate_gate(vocabulary, ids, parent, len(text))
    if th.tail_loop_min_repeats and th.tail_loop_min_tokens:
        may |= _tail_loop_possible(ids, parent, len(text), th.tail_loop_min_repeats, th.tail_loop_min_tokens)
    if th.max_top_ngram_ratio:
        lengths = pc.binary_length(vocabulary).to_numpy(zero_copy_only=False).astype(np.int64)[ids]
        may |= _ngram_possible(ids[is_word], parent[is_word], lengths[is_word], len(text), th)
    return may


def _string_buffers(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, bytes) of a string array without nulls."""
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32, count=len(strings) + 1, offset=strings.offset * 4)
    data = np.frombuffer(strings.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    return (offsets - offsets[0]).astype(np.int64), data


def _char_counts(text: pa.Array) -> tuple[np.ndarray, ...]:
    """Per row: bytes (= characters: ASCII), letters, digits, spaces — from the string buffer."""
    offsets, data = _string_buffers(text)
    lengths = np.diff(offsets)
    row_of_byte = np.repeat(np.arange(len(text), dtype=np.int64), lengths)
    by_class = np.bincount(row_of_byte * 4 + _BYTE_CLASS[data], minlength=len(text) * 4).reshape(-1, 4)
    return lengths, by_class[:, 1], by_class[:, 2], by_class[:, 3]


def _tokens(text: pa.Array) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """``tokenize`` for screenable text — lower-cased words and single punctuation marks — as the
    token ids (flat, row after row), the row of each, and the distinct tokens the ids index."""
    spaced = pc.replace_substring_regex(pc.ascii_lower(text), pattern=_PUNCT, replacement=r" \1 ")
    split = pc.ascii_split_whitespace(spaced)
    flat = pc.list_flatten(split)
    parent = np.asarray(pc.list_parent_indices(split).to_numpy(zero_copy_only=False), dtype=np.int64)
    keep = pc.greater(pc.binary_length(flat), 0)      # a leading mark leaves an empty first piece
    encoded = pc.dictionary_encode(pc.filter(flat, keep))
    ids = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    return ids, parent[keep.to_numpy(zero_copy_only=False)], encoded.dictionary


def _first_byte_is_word(vocabulary: pa.Array) -> np.ndarray:
    """Per distinct token: a word (``words_of``: starts with a letter, digit or '_'), not a mark."""
    offsets, data = _string_buffers(vocabulary.cast(pa.string()))
    first = data[offsets[:-1]]
    return (_BYTE_CLASS[first] == 1) | (_BYTE_CLASS[first] == 2) | (first == ord("_"))


def _boilerplate_gate(vocabulary: pa.Array, ids: np.ndarray, parent: np.ndarray, rows: int) -> np.ndarray:
    """``boilerplate_match``'s two ASCII gates: a spam phrase's first word is a token, or no letter-only
    token outside the generic words and stopwords (else it returns None without searching)."""
    spam = pc.is_in(vocabulary, value_set=_SPAM_FIRST).to_numpy(zero_copy_only=False)
    plain = pc.and_(pc.match_substring_regex(vocabulary, "^[a-z]+$"),
                    pc.invert(pc.is_in(vocabulary, value_set=_GENERIC))).to_numpy(zero_copy_only=False)
    has_spam = np.bincount(parent[spam[ids]], minlength=rows) > 0
    specific = np.bincount(parent[plain[ids]], minlength=rows) > 0
    return has_spam | ~specific


def _row_bounds(parent: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Start offset and count of each row's items in a flat array ordered by row."""
    count = np.bincount(parent, minlength=rows)
    return np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64), count


def _tail_loop_possible(ids: np.ndarray, parent: np.ndarray, rows: int, min_repeats: int, min_tokens: int) -> np.ndarray:
    """Exactly where ``find_tail_loop`` finds a loop: for some period p <= min(64, n // repeats), the
    last need(p) * p tokens repeat with period p, need(p) = max(repeats, ceil(min_tokens / p)). The
    last token recurring every p tokens is checked first; the whole window only where it does."""
    repeats = max(2, min_repeats)
    start, n = _row_bounds(parent, rows)
    end = start + n
    last = ids[np.maximum(end - 1, 0)]
    found = np.zeros(rows, dtype=bool)
    for p in range(1, min(TAIL_LOOP_MAX_PERIOD, int(n.max(initial=0)) // repeats) + 1):
        need = max(repeats, -(-min_tokens // p))
        rows_p = np.flatnonzero((p <= n // repeats) & (need * p <= n) & ~found)
        for k in range(1, need):
            rows_p = rows_p[ids[end[rows_p] - 1 - k * p] == last[rows_p]]
        for row in rows_p.tolist():
            lo, hi = end[row] - need * p, end[row] - p
            found[row] = bool(np.array_equal(ids[lo:hi], ids[lo + p:hi + p]))
    return found


def _ngram_possible(ids: np.ndarray, parent: np.ndarray, lengths: np.ndarray, rows: int,
                    th: TextThresholds) -> np.ndarray:
    """Where the n-gram rule may fire: for n = 2, 3, 4, the largest count x characters / all word
    characters of any n-gram occurring at least ngram_min_repeats times exceeds the limit for n.
    The rule judges the most frequent n-gram, whose coverage is at most that largest one.

    Only n-grams that can reach the count are followed: an n-gram occurs at most as often as the
    (n-1)-gram it starts with, so each level keeps the positions whose gram reached it (level 1:
    the words). A gram's number is dense and of its row (level 1: row and word; level n: the
    (n-1)-gram's number and the next word), so one sort per level both counts the grams and
    numbers them for the next level."""
    need = max(2, th.ngram_min_repeats)
    start, count = _row_bounds(parent, rows)
    end = start + count
    total = np.bincount(parent, weights=lengths, minlength=rows)
    may = np.zeros(rows, dtype=bool)
    width = int(ids.max(initial=0)) + 1
    pos = np.arange(len(ids))
    key, chars = parent * width + ids, lengths
    for n, limit in ((1, None), *ngram_limits(th)):
        if n > 1:
            inside = pos + n - 1 < end[parent[pos]]
            pos, key, chars = pos[inside], key[inside], chars[inside]
            key = key * width + ids[pos + n - 1]
            chars = chars + lengths[pos + n - 1]
        key, seen = np.unique(key, return_inverse=True, return_counts=True)[1:]
        key = key.reshape(-1)
        times = seen[key]   # how often the gram at each position occurs in its row
        often = times >= need
        pos, key, chars, times = pos[often], key[often], chars[often], times[often]
        if len(pos) == 0:
            break
        if limit is not None:
            row = parent[pos]
            may[row[times * chars / total[row] > limit]] = True
    return may
