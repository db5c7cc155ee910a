"""Choices a stage's typed Config declares are checked once, by ``check_config`` when the stage is built:
no stage re-checks them by hand, and the error still names the setting and the choices."""
from __future__ import annotations

import pytest

from curate import base as S

# (stage, setting, a bad value, what the message must say besides the setting's name)
REMOVED_HAND_CHECKS = [
    ("clip_score", "backend", "nope", "'hf_clip', 'hf_siglip', 'open_clip', 'label_text_similarity'"),
    ("clip_score", "dtype", "int8", "'auto', 'float32', 'float16', 'bfloat16'"),
    ("clip_score", "image_reduce", "median", "'mean', 'max', 'min'"),
    ("clip_score", "conversation_text", "all", "'first_answer', 'first_exchange'"),
    ("embed", "modality", "audio", "'image', 'text'"),
    ("embed", "backend", "nope", "'offline', 'hf_clip', 'hf_siglip', 'open_clip'"),
    ("embed", "store_dtype", "int8", "'float16', 'float32'"),
    ("cluster_sample", "unit", "bytes", "'samples', 'tokens'"),
    ("cluster_sample", "within_leaf", "near", "'random', 'closest', 'farthest'"),
    ("semantic_dedup", "survivor", "oldest", "'hard', 'easy', 'quality'"),
    ("recaption", "relevance_column", "score", "'clip_score', 'mllm_score'"),
    ("recaption", "rescore_metric", "xyz", "'itm', 'odf', 'ctq', 'su'"),
    ("recaption", "backend", "nope", "'transformers', 'vllm', 'scripted'"),
    ("mllm_score", "backend", "nope", "'transformers', 'vllm', 'scripted'"),
    ("mllm_score", "decoding", "beam", "'digits', 'free'"),
    ("mixture", "on_shortfall", "ignore", "'report', 'fail'"),
    ("ocr", "text_from", "third", "'first', 'second'"),
    ("ocr", "grounding_output", "file", "'column', 'conversation'"),
    ("join_annotations", "columns", {"x": "complex"}, "'bool', 'int', 'float', 'string'"),
    ("grounding_check", "reject_on", "some", "is not 'all' or a list of strings"),
    ("grounding_check", "categories", "caption", "is not a list of strings or null"),
    ("grounding_check", "categories", [1], "is not a list of strings or null"),
]


@pytest.mark.parametrize("stage, setting, bad, says", REMOVED_HAND_CHECKS,
                         ids=[f"{s}.{k}={v!r}" for s, k, v, _ in REMOVED_HAND_CHECKS])
def test_a_bad_choice_is_refused_naming_the_setting_and_the_choices(stage, setting, bad, says):
    with pytest.raises(ValueError) as err:
        S.build(stage, {setting: bad})
    message = str(err.value)
    assert message.startswith(f"{setting}:") or message.startswith(f"{setting}."), message
    assert says in message, message
