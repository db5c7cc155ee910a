"""Checks that an interleaved document's token count (count_tokens), the trainer's input_ids
(pack.tokens.sample_ids_and_labels) and transformers' Qwen2-VL chat template + tokenizer agree.

A helper module, not a test file: ``tests/test_document_tokens.py`` runs it on its own test documents,
and any other set of documents (the demo's, a reader's output) can be handed to
``assert_documents_match_transformers`` as a table of rows with ``text``, ``images`` (with
width/height) and ``segments``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from curate.base import records as R
from curate.documents.record import document_parts
from pack import tokens as T

PROCESSOR_MAX_PIXELS = 256 * 784     # a small max keeps the image processor cheap on CPU


def image_processor(max_pixels: int = PROCESSOR_MAX_PIXELS):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    return Qwen2VLImageProcessorPil(min_pixels=T.MIN_PIXELS, max_pixels=max_pixels)


def document_content(row: Mapping[str, Any]) -> list[dict]:
    """The document as a chat-template content list: text items (consecutive paragraphs joined the
    record's way) and one image item per image, in document order."""
    out: list[dict] = []
    for kind, value in document_parts(row["text"], row["segments"]):
        if kind == "image":
            out.append({"type": "image"})
        elif out and out[-1]["type"] == "text":
            out[-1]["text"] += R.DOCUMENT_PARAGRAPH_JOIN + value
        else:
            out.append({"type": "text", "text": value})
    return out


def _expand_pads(hf_tok, text: str, grids: Sequence[Sequence[int]]) -> list[int]:
    """What Qwen2VLProcessor does to a rendered prompt: every ``<|image_pad|>`` becomes
    grid.prod() // merge**2 pads, then the tokenizer runs on the whole string."""
    parts = text.split(T.IMAGE_PAD)
    assert len(parts) == len(grids) + 1, (len(parts), len(grids))
    full = parts[0] + "".join(T.IMAGE_PAD * (int(np.prod(g)) // 4) + p for g, p in zip(grids, parts[1:]))
    return hf_tok(full, add_special_tokens=False)["input_ids"]


def transformers_ids(hf_tok, row: Mapping[str, Any], grids: Sequence[Sequence[int]], template: T.Template) -> list[int]:
    """input_ids transformers builds for the document: chat — ``apply_chat_template`` on a user turn
    (the caption prompt) and the document as the assistant's content list; plain — the content items
    concatenated (an image as ``<|vision_start|><|image_pad|><|vision_end|>``) and ``<|endoftext|>``."""
    content = document_content(row)
    if template.kind == "chat":
        user = [{"type": "text", "text": template.caption_prompt}] if template.caption_prompt else []
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": content}]
        if template.system_prompt is not None and template.system_prompt != T.DEFAULT_SYSTEM_PROMPT:
            messages.insert(0, {"role": "system", "content": template.system_prompt})
        text = hf_tok.apply_chat_template(messages, chat_template=T.QWEN2_VL_CHAT_TEMPLATE, tokenize=False)
        if template.system_prompt is None:      # no system turn: drop the template's default one
            default = f"{T.IM_START}system\n{T.DEFAULT_SYSTEM_PROMPT}{T.IM_END}\n"
            assert text.startswith(default)
            text = text[len(default):]
    else:
        vision = T.VISION_START + T.IMAGE_PAD + T.VISION_END
        text = "".join(vision if c["type"] == "image" else c["text"] for c in content) + T.EOS
    return _expand_pads(hf_tok, text, grids)


def assert_documents_match_transformers(table: pa.Table, tok: T.Tokenizer, hf_tok, template: T.Template,
                                        max_pixels: int = PROCESSOR_MAX_PIXELS) -> int:
    """For every document row of `table`: count_rows' num_tokens == len(the trainer's input_ids) ==
    len(transformers' input_ids), and the ids are equal. Image token counts come from the recorded
    width/height (as count_tokens does), grids from transformers' image processor on an image of that
    size. Returns how many documents were checked."""
    from PIL import Image
    proc = image_processor(max_pixels)
    docs = table.filter(pa.compute.is_valid(table.column("segments")))
    rows = docs.select(["text", "images", "segments"]).to_pylist()
    counts = [[int(T.image_tokens(im["width"], im["height"], max_pixels=max_pixels)) for im in r["images"] or []]
              for r in rows]
    counted = T.count_rows(docs.select(["text", "segments"]), tok, pa.array(counts, type=pa.list_(pa.int32())),
                           None, template)
    for i, (row, n_img) in enumerate(zip(rows, counts)):
        imgs = [Image.new("RGB", (im["width"], im["height"])) for im in row["images"] or []]
        grids = proc(images=imgs, return_tensors="np")["image_grid_thw"].tolist() if imgs else []
        assert [int(np.prod(g)) // 4 for g in grids] == n_img
        want = transformers_ids(hf_tok, row, grids, template)
        got = T.sample_input_ids(row, tok, n_img, template=template)
        assert counted.error[i] is None, counted.detail[i]
        assert got == want, (i, row["text"][:80])
        assert int(counted.num_tokens[i]) == len(want), (i, int(counted.num_tokens[i]), len(want))
        assert int(counted.text_tokens[i]) == len(want) - sum(n_img)
    return len(rows)
