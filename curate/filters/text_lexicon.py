"""The word lists and limits the text rules (text_rules) and their vectorised screen (text_screen) share.

Why a module of its own: the screen must clear exactly the rows the rules would keep, so both read the
same lists; here, neither imports the other for them.
"""
from __future__ import annotations

import re

from curate.filters.presets import TextThresholds

TAIL_LOOP_MAX_PERIOD = 64

SPAM_PHRASES = [
    r"click (?:here|to (?:enlarge|view|see|download|zoom))", r"subscribe (?:now|today|for|to (?:our|my|the))",
    r"sign up (?:now|today|for)", r"lorem ipsum", r"all rights reserved", r"copyright (?:\(c\)|©|\d{4})",
    r"free download", r"download (?:now|free|here)", r"add to (?:cart|basket|wishlist)", r"buy now", r"shop now",
    r"free shipping", r"privacy policy", r"terms of (?:use|service)", r"cookie policy", r"we use cookies",
    r"enable javascript", r"image (?:not found|not available|unavailable)", r"no (?:image|photo|preview) available",
]
SPAM_RE = re.compile(r"(?<!\w)(?:" + "|".join(SPAM_PHRASES) + r")(?!\w)", re.IGNORECASE)
GENERIC_WORDS = frozenset("""
stock photo photos photograph photography image images picture pictures pic pics img dsc dscn dcim screenshot
free royalty hd 4k uhd wallpaper wallpapers background backgrounds vector vectors illustration download jpg jpeg
png gif webp thumbnail thumb untitled placeholder file shutterstock getty gettyimages istock istockphoto alamy
dreamstime depositphotos bigstock adobe
""".split())
STOPWORDS = frozenset("the a an of and with for in on by from".split())
GENERIC_OR_STOP = GENERIC_WORDS | STOPWORDS


# The first word of every SPAM_PHRASES phrase. In ASCII text a phrase can only match where its first word is a
# whole token, so a text without any of these tokens skips the (case-insensitive, slow) search.
SPAM_FIRST_WORDS = frozenset(phrase.split(" ")[0] for phrase in SPAM_PHRASES)
assert all(w.isascii() and w.isalpha() and w.islower() for w in SPAM_FIRST_WORDS), \
    "every SPAM_PHRASES phrase starts with a plain lower-case word"


def ngram_limits(th: TextThresholds) -> tuple[tuple[int, float], ...]:
    """(n, coverage limit) of the n-gram rule, Gopher's steps: 2-grams the base, 3- and 4-grams 0.02
    and 0.04 below it. The rule and its vectorised screen (text_screen) both read them here."""
    base = th.max_top_ngram_ratio
    return (2, base), (3, base - 0.02), (4, base - 0.04)


# The image and video placeholders of LLaVA records.
PLACEHOLDERS = re.compile(r"<(?:image|video)>")
# Markup that is not language: special tokens (<|box_start|>, <|object_ref_end|>...) and tag-like
# markers (<ref>, </box>, <image>). Judged by the grounding checks, not by these rules.
MARKUP = re.compile(r"<\|[^<>|\s]{1,48}\|>|</?[A-Za-z][\w:-]{0,30}/?>")
