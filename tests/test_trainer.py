"""What a trainer gets from the shards, checked against transformers' own Qwen2-VL code on real packs.

The packs come from the bundled sample corpus (photos, LLaVA conversations, grounding) run through
image_filter -> count_tokens -> pack -> shards with the inline executor. Every check uses only what
``PackedShards`` / ``collate_packs`` return: labels against the chat template's assistant spans (as
transformers' ``return_assistant_tokens_mask`` marks them), M-RoPE positions against
``Qwen2VLModel.get_rope_index`` on every segment, pixel values from transformers' image processor
against the image-pad runs, and a tiny random Qwen2-VL (from a config, fixed seed) forward and
backward with the loss masked by the labels.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pack import packformat as F
from pack import tokens as T
from pack.trainer.collate import collate_packs
from pack.trainer.loader import PackedShards
from pack.trainer.positions import IMAGE, TEXT

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

RECIPE = """
name: trainer-packs
seed: 7
sources:
  - {{name: photos, path: "{d}/photos/*.tar", format: webdataset, category: caption}}
  - {{name: conversations, path: "{d}/conversations.jsonl", format: llava, category: vqa}}
  - {{name: grounding, path: "{d}/grounding.jsonl", format: llava, category: grounding}}
stages:
  - {{name: image_filter, settings: {{preset: default}}}}
  - {{name: count_tokens}}
  - {{name: pack, settings: {{context_length: 1024}}}}
  - {{name: shards, settings: {{dp_size: 1, micro_batches: 1, leftover: pad_with_repeats, input_ids: true}}}}
model: {{preset: qwen2-vl, max_pixels: 100352}}
"""

# Qwen2-VL's chat template with the assistant turns marked as generation (what transformers'
# return_assistant_tokens_mask reads): content, <|im_end|> and the newline, as Qwen's fine-tuning trains.
GENERATION_TEMPLATE = T.QWEN2_VL_CHAT_TEMPLATE.replace(
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n",
    "{% if message['content'] is string %}{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] }}<|im_end|>\n{% endgeneration %}{% else %}{{ message['content'] }}<|im_end|>\n"
    "{% endif %}")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from demo_data import sample as sample_data
    from pipelines.recipe import load
    from pipelines.runner import run
    work = tmp_path_factory.mktemp("trainer")
    sample_data.build(work / "sample")
    (work / "recipe.yaml").write_text(RECIPE.format(d=work / "sample"))
    run(load(work / "recipe.yaml"), out=work / "out", executor="inline", progress=False)
    return work / "out" / "shards"


@pytest.fixture(scope="module")
def packs(shards):
    ds = PackedShards(str(shards), pixel_values=True)
    return [ds.read_pack(i) for i in range(ds.num_packs)]


@pytest.fixture(scope="module")
def tiny_qwen2_vl():
    """A random Qwen2-VL small enough for a CPU test; vocabulary of the real tokenizer."""
    from tests.tiny_qwen import tiny_qwen2_vl as build
    return build()


def _segments(pack):
    cu = pack["cu_seqlens"].tolist()
    for j, seg in enumerate(pack["samples"]):
        yield j, seg, cu[j], cu[j + 1]


def _messages(seg) -> list[dict]:
    """The segment as chat messages, images where the template puts them (as pack.tokens lays them out)."""
    if seg.get("conversations"):
        turns = [(t["role"], t["content"]) for t in seg["conversations"]]
    else:
        turns = [("user", ""), ("assistant", seg.get("text") or "")]
    has_placeholder = any("<image>" in c for _, c in turns)
    out, front = [], not has_placeholder
    for role, content in turns:
        if role == "user" and front:
            content, front = "<image>" * len(seg["images"]) + content, False
        text = content.replace("<image>", T.VISION_START + T.IMAGE_PAD + T.VISION_END)
        out.append({"role": role, "content": text})
    return out


def _collapse_pads(ids, mask, pad_id):
    """Runs of image-pad tokens shortened to one (the processor's text before expansion)."""
    keep = np.ones(len(ids), dtype=bool)
    keep[1:] = ~((ids[1:] == pad_id) & (ids[:-1] == pad_id))
    return ids[keep].tolist(), mask[keep].tolist()


def test_labels_are_the_assistant_spans_of_the_chat_template(packs):
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(str(T.shipped_tokenizer_dir()), local_files_only=True)
    pad = hf.convert_tokens_to_ids(T.IMAGE_PAD)
    checked = 0
    for pack in packs:
        ids, labels = pack["input_ids"], pack["labels"]
        assert ((labels == F.IGNORE_INDEX) | (labels == ids)).all()
        assert (labels[pack["length"]:] == F.IGNORE_INDEX).all()                # padding
        assert (labels[pack["mm_token_type_ids"] != TEXT] == F.IGNORE_INDEX).all()  # vision tokens
        for _, seg, a, b in _segments(pack):
            enc = hf.apply_chat_template(_messages(seg), chat_template=GENERATION_TEMPLATE, tokenize=True,
                                         return_dict=True, return_assistant_tokens_mask=True)
            want_mask = np.asarray(enc["assistant_masks"], dtype=bool)
            want_mask[0] = False          # a segment's first token is never a target in a pack
            got_ids, got_mask = _collapse_pads(ids[a:b], labels[a:b] != F.IGNORE_INDEX, pad)
            assert got_ids == list(enc["input_ids"]), seg["key"]
            assert got_mask == want_mask.tolist(), seg["key"]
            assert any(got_mask), seg["key"]
            checked += 1
    assert checked == sum(len(p["samples"]) for p in packs) > 50


def test_mrope_positions_equal_get_rope_index_on_every_segment(packs, tiny_qwen2_vl):
    model = tiny_qwen2_vl.model
    checked = 0
    for pack in packs:
        pos, types = pack["position_ids"], pack["mm_token_type_ids"]
        assert pos.shape == (3, pack["context_length"])
        for _, seg, a, b in _segments(pack):
            grids = [im["grid_thw"] for im in seg["images"]]
            want, _ = model.get_rope_index(
                torch.as_tensor(pack["input_ids"][a:b], dtype=torch.long)[None],
                mm_token_type_ids=torch.as_tensor(types[a:b])[None],
                image_grid_thw=torch.as_tensor(grids, dtype=torch.long) if grids else None)
            assert np.array_equal(pos[:, a:b], want[:, 0].numpy()), seg["key"]
            checked += 1
        tail = pos[:, pack["length"]:]
        assert (tail == np.arange(tail.shape[1])).all()                          # padding restarts at 0
    assert checked > 50


def test_processor_grids_stored_tokens_and_pad_runs_agree(packs):
    for pack in packs:
        grids = pack["image_grid_thw"]
        assert len(grids) == len(pack["images"])
        assert pack["pixel_values"].shape == (int(grids.prod(axis=1).sum()), 3 * 2 * 14 * 14)
        types = pack["mm_token_type_ids"]
        starts = np.flatnonzero((types == IMAGE) & (np.r_[TEXT, types[:-1]] != IMAGE))
        ends = np.flatnonzero((types == IMAGE) & (np.r_[types[1:], TEXT] != IMAGE)) + 1
        runs = (ends - starts).tolist()
        assert runs == [int(g.prod()) // 4 for g in grids] == [im["tokens"] for im in pack["images"]]


def test_segment_ids_follow_cu_seqlens(packs):
    batch = collate_packs(packs[:3])
    flat = [s for p in batch["samples"] for s in p]
    for i, pack in enumerate(packs[:3]):
        sid = batch["segment_ids"][i].numpy()
        assert (sid[pack["length"]:] == -1).all()
        for j, seg, a, b in _segments(pack):
            idx = set(sid[a:b].tolist())
            assert len(idx) == 1 and flat[idx.pop()]["key"] == seg["key"]


def test_tiny_qwen2_vl_trains_on_collated_packs_with_the_loss_masked(packs, tiny_qwen2_vl):
    """Forward and backward using only what the loader returns (ids, labels, 3-D positions, pixel
    values, grids, modality ids); the loss equals cross-entropy over the labelled tokens only."""
    model = tiny_qwen2_vl
    batch = collate_packs(packs[:2])
    assert batch["position_ids"].shape == (3, 2, 1024)
    model.zero_grad()
    out = model(input_ids=batch["input_ids"], labels=batch["labels"], position_ids=batch["position_ids"],
                mm_token_type_ids=batch["mm_token_type_ids"], pixel_values=batch["pixel_values"],
                image_grid_thw=batch["image_grid_thw"])
    logits = out.logits.float()
    shifted = batch["labels"][:, 1:]
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), shifted.reshape(-1),
                                               ignore_index=F.IGNORE_INDEX)
    assert torch.isfinite(out.loss) and torch.allclose(out.loss, manual, rtol=1e-4)
    out.loss.backward()
    vision_grad = model.model.visual.patch_embed.proj.weight.grad
    assert vision_grad is not None and vision_grad.abs().sum() > 0       # the images reached the loss
    assert int((shifted != F.IGNORE_INDEX).sum()) < int(batch["attention_mask"].sum()) // 2


def test_manifest_alone_configures_the_image_processor(shards):
    manifest = json.loads((shards / "manifest.json").read_text())
    model = manifest["model"]
    assert (model["patch_size"], model["merge_size"], model["temporal_patch_size"]) == (14, 2, 2)
    assert model["max_pixels"] == 100352 and model["rope"] == "mrope"
