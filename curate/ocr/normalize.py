"""Text normalisation before two OCR engines' words are compared.

Two engines that read the same word rarely spell it byte-identically: full-width vs ASCII forms,
"Invoice" vs "invoice", "total:" vs "total", and the classic glyph confusions of OCR (``l``/``I``/``1``,
``O``/``0``). Comparison therefore happens on a *key*: NFKC (folds compatibility forms such as
full-width letters and ligatures), casefold, punctuation removed (Unicode category P*, so CJK and
other scripts' punctuation too; currency and other symbols S* are kept: "$45" and "45" are different
readings), and optionally look-alike folding. The key is only for matching: the text written out is
the engine's own reading.
"""
from __future__ import annotations

import unicodedata
from functools import lru_cache

# Characters OCR engines confuse with each other, mapped to one representative (after casefold).
# Folding both sides to the same representative makes "lnvoice" and "invoice" agree; it can also make
# genuinely different words agree ("l0" vs "lo"), which is why it is a setting.
LOOKALIKES: dict[str, str] = {
    "i": "l", "1": "l", "|": "l", "!": "l", "í": "l", "ı": "l",
    "0": "o", "ο": "o", "о": "o",        # digit zero, Greek omicron, Cyrillic o
    "5": "s", "$": "s",
    "8": "b",
    "2": "z",
    "а": "a", "е": "e", "р": "p", "с": "c", "х": "x", "у": "y",  # Cyrillic look-alikes of Latin letters
}
_FOLD_TABLE = str.maketrans(LOOKALIKES)


def _is_punctuation(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


@lru_cache(maxsize=65536)
def word_key(text: str, fold_lookalikes: bool = False) -> str:
    """The comparison key of one word (or line): NFKC, casefold, no punctuation, no whitespace."""
    s = unicodedata.normalize("NFKC", text).casefold()
    s = "".join(ch for ch in s if not _is_punctuation(ch) and not ch.isspace())
    if fold_lookalikes:
        s = s.translate(_FOLD_TABLE)
    # Composed again at the end: removing the space NFKC puts before a spacing accent ("A´" -> "A ́")
    # or folding "0" to "o" leaves base + combining mark, which is "á" / "ó" to a second pass.
    return unicodedata.normalize("NFC", s)


def split_words(text: str) -> list[tuple[int, int, str]]:
    """(start, end, word) of each whitespace-separated word of `text`, with character offsets."""
    out: list[tuple[int, int, str]] = []
    start = None
    for i, ch in enumerate(text):
        if ch.isspace():
            if start is not None:
                out.append((start, i, text[start:i]))
                start = None
        elif start is None:
            start = i
    if start is not None:
        out.append((start, len(text), text[start:]))
    return out
