"""Interleaved documents: count_tokens counts each image's pads at its position, exactly the input_ids
the trainer builds, and those equal transformers' Qwen2-VL chat template + tokenizer (#25 item 6)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from curate.base import records as R
from curate.documents import record as D
from pack import tokens as T
from tests.document_tokens import assert_documents_match_transformers

TEMPLATES = [T.Template("chat"), T.Template("plain"), T.Template("chat", system_prompt=None, caption_prompt="Read:")]

PARAGRAPHS = [
    "The harbour at dawn.", "Boats line up along the quay; fishermen sort the catch.", "数字 3.14 和 emoji 😀。",
    "  Leading spaces and a trailing one ", "A list:\n- one\n- two", "Ends with punctuation!", "x" * 200,
    "tab\there\u00a0nbsp", "Question? Answer.", "’Curly quotes’ and — dashes…",
]


def _img(i: int, w: int, h: int) -> dict:
    return R.image_ref(uri=f"/docs/{i}.jpg", width=w, height=h, format="JPEG")


def documents(n: int = 40, seed: int = 3) -> pa.Table:
    """Documents of every shape: images first, last, back to back, none; text-only; one image alone;
    and documents after a per-image rule removed images (paragraphs that become neighbours)."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(n):
        parts: list = []
        for _ in range(int(rng.integers(1, 9))):
            if rng.random() < 0.4:
                parts.append(_img(len(rows) * 10 + len(parts), int(rng.integers(30, 900)), int(rng.integers(30, 900))))
            else:
                parts.append(PARAGRAPHS[int(rng.integers(len(PARAGRAPHS)))])
        if d % 7 == 0:
            parts = [_img(d, 640, 480), _img(d + 1, 300, 200)]
        rows.append({"key": f"doc/{d}", "source": "doc", "category": "interleaved", **D.build_document(parts),
                     R.ORDINAL: d, R.STATUS: R.KEPT})
    table = R.rows_to_table(rows)
    removals = [[D.Removal(0, "blurry")] if (i % 3 == 0 and len(r["images"])) else []
                for i, r in enumerate(rows)]
    return D.remove_images(table, removals, "image_filter")


@pytest.mark.parametrize("template", TEMPLATES, ids=["chat", "plain", "chat-no-system"])
def test_document_counts_equal_transformers_input_ids(tok, hf_tok, template):
    table = documents()
    assert sum(len(x or []) for x in table.column("images_removed").to_pylist()) > 5   # removals are exercised
    assert assert_documents_match_transformers(table, tok, hf_tok, template) == table.num_rows


def test_each_image_block_stands_at_its_position(tok):
    doc = D.build_document(["First.", _img(0, 56, 56), _img(1, 112, 56), "Second.", "Third."])
    ids = T.sample_input_ids(doc, tok, [4, 8], template="plain")
    vs, ve, pad, eos = (tok.token_id(x) for x in (T.VISION_START, T.VISION_END, T.IMAGE_PAD, T.EOS))
    assert ids == tok.encode("First.") + [vs] + [pad] * 4 + [ve, vs] + [pad] * 8 + [ve] + \
        tok.encode("Second.\n\nThird.") + [eos]


def test_document_labels_train_the_text_and_never_vision_tokens(tok):
    doc = D.build_document(["Intro.", _img(0, 56, 56), "Outro."])
    vision = {tok.token_id(x) for x in (T.VISION_START, T.VISION_END, T.IMAGE_PAD)}
    for template in ("plain", "chat"):
        ids, trained = T.sample_ids_and_labels(doc, tok, [4], template=template)
        assert not any(t for i, t in zip(ids, trained) if i in vision)
        picked = [i for i, t in zip(ids, trained) if t]
        end = [tok.token_id(T.EOS)] if template == "plain" else [tok.token_id(T.IM_END)] + tok.encode("\n")
        assert picked == tok.encode("Intro.") + tok.encode("Outro.") + end


def test_segments_out_of_order_or_unused_images_are_a_placeholder_mismatch(tok):
    doc = D.build_document(["a", _img(0, 56, 56), "b", _img(1, 56, 56)])
    swapped = dict(doc, segments=[dict(s, image=1 - s["image"]) if s["kind"] == "image" else s
                                  for s in doc["segments"]])
    with pytest.raises(T.PlaceholderMismatch):
        T.sample_input_ids(swapped, tok, [4, 4])
    with pytest.raises(T.PlaceholderMismatch):
        T.sample_input_ids(doc, tok, [4, 4, 4])
    table = pa.table({"text": [doc["text"]], "segments": pa.array([doc["segments"]], type=pa.list_(R.SEGMENT))})
    res = T.count_rows(table, tok, pa.array([[4, 4, 4]], type=pa.list_(pa.int32())), None, T.Template())
    assert res.error == [T.PlaceholderMismatch.reason]


def test_a_placeholder_in_document_text_is_text_not_an_image(tok):
    doc = D.build_document(["see <image> and <video> here", _img(0, 56, 56)])
    for template in ("plain", "chat"):
        ids = T.sample_input_ids(doc, tok, [4], template=template)
        text = tok.encode("see <image> and <video> here")
        assert any(ids[i:i + len(text)] == text for i in range(len(ids)))
        assert ids.count(tok.token_id(T.IMAGE_PAD)) == 4
