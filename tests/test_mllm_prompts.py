"""MLM-Filter prompt fidelity, the score grammar and the score parser (no model needed).

Reference: Victorwz/MLM_Filter, mlm_filter_scoring_datacomp_batch_inference_v2.py at commit
599c9810c9504cf858007867f71e5dfe74ba58e2. The SHA-256 of each of its prompt strings was computed
from that file (parsed with ``ast``); the chat wrapping is rendered independently here with the
Qwen tokenizer's own ChatML template (``apply_chat_template``), not with ``prompts.render_chat``.
"""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.mllm import prompts as P
from curate.mllm.parsing import MAX_SCORE, allowed_next, is_complete_score, parse_score

UPSTREAM_SHA256 = {
    "INSTRUCTION_TEMPLATE": "14d307d85a274b91d3a4986ea361ecb1034ffc0703488514e42223cdcd4436f9",
    "CRITERIA_ITM": "a5dbc19a309b9fda0c56526940f5c4bf0d7efee42dac5e81618926afddd0f6d8",
    "CRITERIA_ODF": "8cd5119eedb635aa16ed790def47afab8f8e887558ebf5348f6c29bdf987325b",
    "CRITERIA_CTQ": "1382b4e31bd7e8fa7f6d05b78694cc077c44e42341ec3dba86b95d121619c5d6",
    "CRITERIA_SU": "d0c189ca02f0431398d982c9c7444e079180ae3562403ac626246240841667f4",
}
# MLM-Filter's task names (their ALL_METRICS keys); the prompt's {aspect} is the name with spaces.
UPSTREAM_TASKS = {"itm": "image_text_matching", "odf": "object_detail_fulfillment",
                  "ctq": "caption_text_quality", "su": "semantic_understanding"}


@pytest.mark.parametrize("name", sorted(UPSTREAM_SHA256))
def test_prompt_texts_are_mlm_filters_verbatim(name):
    assert hashlib.sha256(getattr(P, name).encode()).hexdigest() == UPSTREAM_SHA256[name]


@pytest.fixture(scope="module")
def qwen_tokenizer():
    from transformers import AutoTokenizer
    from pack.tokens import shipped_tokenizer_dir
    return AutoTokenizer.from_pretrained(str(shipped_tokenizer_dir()), local_files_only=True)


def reference_prompt(tokenizer, metric: str, caption: str, placeholder: str) -> str:
    """MLM-Filter's documented format: "<image>\\n" + instruction as the user turn of the ChatML
    conversation (system "You are a helpful assistant."), generation prompt, then one space."""
    criteria = getattr(P, f"CRITERIA_{metric.upper()}")
    text = P.INSTRUCTION_TEMPLATE.format(caption=caption, criteria=criteria,
                                         aspect=UPSTREAM_TASKS[metric].replace("_", " "))
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": placeholder + "\n" + text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + " "


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
@pytest.mark.parametrize("metric", ["itm", "odf", "ctq", "su"])
def test_prompt_token_ids_equal_the_reference_template(qwen_tokenizer, metric, family):
    caption = "A man in a red \"rain\" coat; walks 2 dogs — past the Eiffel Tower.\nSecond line."
    ours = P.render_chat(P.metric_instruction(metric, caption), family, P.ASSISTANT_PREFIX)
    ref = reference_prompt(qwen_tokenizer, metric, caption, P.IMAGE_PLACEHOLDER[family])
    ours_ids = qwen_tokenizer.encode(ours, add_special_tokens=False)
    assert ours_ids == qwen_tokenizer.encode(ref, add_special_tokens=False)
    assert ours_ids[-1] == qwen_tokenizer.encode(" ", add_special_tokens=False)[0]   # the appended space token


def test_custom_prompt_and_versions():
    assert P.metric_instruction("custom", "a cat", "Rate {caption} 0-100.") == "Rate a cat 0-100."
    with pytest.raises(ValueError):
        P.metric_instruction("custom", "a cat")
    assert P.prompt_version("su") == P.PROMPT_VERSION
    assert P.prompt_version("custom", "x") != P.prompt_version("custom", "y")


# --- the digit grammar -----------------------------------------------------------------------------
def grammar_language() -> set[str]:
    """Every string the grammar accepts, by exhaustive walk."""
    out, frontier = set(), [""]
    while frontier:
        prefix = frontier.pop()
        digits, may_stop = allowed_next(prefix)
        if may_stop:
            out.add(prefix)
        frontier += [prefix + d for d in digits]
    return out


def test_grammar_accepts_exactly_0_to_100():
    assert grammar_language() == {str(v) for v in range(MAX_SCORE + 1)}
    assert allowed_next("10") == ("0", True)
    assert allowed_next("100") == ("", True)


@given(st.text(alphabet="0123456789", min_size=1, max_size=4))
def test_grammar_prefixes_agree_with_complete_scores(s):
    reachable = all(s[i] in allowed_next(s[:i])[0] for i in range(len(s)))
    assert (reachable and allowed_next(s)[1]) == is_complete_score(s)


# --- the parser ----------------------------------------------------------------------------------------
@given(st.integers(0, 100), st.sampled_from(["", ",", ";", " ", "/100"]),
       st.sampled_from(["", "\nThe caption matches.", "\n\nbecause..."]))
def test_parser_reads_every_score_including_100(value, tail, rest):
    parsed = parse_score(f" {value}{tail}{rest}")
    assert parsed.value == value and parsed.reason is None


@settings(max_examples=200)
@given(st.text(max_size=30))
def test_parser_never_returns_both_or_neither(text):
    parsed = parse_score(text)
    assert (parsed.value is None) == (parsed.reason is not None)
    if parsed.value is not None:
        assert 0 <= parsed.value <= MAX_SCORE


@pytest.mark.parametrize("text, reason", [("", "empty"), ("  \n ", "empty"), (None, "empty"),
                                          ("eighty", "no_integer"), ("85 because", "no_integer"),
                                          ("-5", "no_integer"), ("101", "out_of_range"), ("999", "out_of_range")])
def test_parser_names_why_an_answer_is_unparseable(text, reason):
    assert parse_score(text) == parse_score(text) and parse_score(text).reason == reason
