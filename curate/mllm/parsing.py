"""Scores 0-100 from generated text, and the digit grammar that constrains decoding to them.

Why a grammar: MLM-Filter decodes at most 2 new tokens greedily, and Qwen's tokenizer writes one
token per digit, so a "100" comes out as "10". Here the decoder may only emit an integer in
0..100 written without leading zeros, followed by a stop token: ``allowed_next`` is that grammar
(a 3-digit maximum, so 3 new tokens always suffice and nothing can be truncated).

Parsing free text (vLLM without a grammar, custom prompts, scripted tests) follows MLM-Filter's
rule — the first line, trailing ``,;`` stripped, an integer — but never silently: every failure
comes back with a named reason (``empty``, ``no_integer``, ``out_of_range``) and the raw text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

DIGITS = "0123456789"
MAX_SCORE = 100
MAX_SCORE_TOKENS = 3   # "100": one token per digit with Qwen-style tokenizers

_LEADING_INT = re.compile(r"\s*(\d+)\s*(?:/\s*100)?\s*[,;.]*\s*$")


@dataclass(frozen=True)
class ParsedScore:
    value: int | None
    reason: str | None = None   # set exactly when value is None
    raw: str = ""


def allowed_next(prefix: str) -> tuple[str, bool]:
    """(digits that may follow `prefix`, whether the number may end here) for integers 0..100.

    Examples: "" -> any digit, no stop; "0" -> stop only; "1" -> any digit or stop;
    "10" -> "0" or stop; "42" / "100" -> stop only.
    """
    if prefix and (not prefix.isdigit() or not prefix.isascii()):
        raise ValueError(f"not a digit prefix: {prefix!r}")
    if prefix == "":
        return DIGITS, False
    if prefix == "0" or len(prefix) >= 3:
        return "", True
    if len(prefix) == 1:
        return DIGITS, True
    return ("0" if prefix == "10" else ""), True


def is_complete_score(text: str) -> bool:
    """True for the strings the grammar accepts: "0".."100" without leading zeros."""
    return text.isdigit() and text.isascii() and str(int(text)) == text and int(text) <= MAX_SCORE


def parse_score(text: str | None) -> ParsedScore:
    """The integer on the first non-blank line (MLM-Filter's rule, made explicit about failures)."""
    raw = text or ""
    lines = [ln for ln in raw.splitlines() if ln.strip()]
    if not lines:
        return ParsedScore(None, "empty", raw)
    first = lines[0].strip().strip(",;").strip()
    m = _LEADING_INT.fullmatch(first)
    if m is None:
        return ParsedScore(None, "no_integer", raw)
    value = int(m.group(1))
    if value > MAX_SCORE:
        return ParsedScore(None, "out_of_range", raw)
    return ParsedScore(value, None, raw)
