"""A packed batch computes, for every segment, what the model computes on that sample alone.

On every pack the demo writes (photos, conversations, grounding, OCR, text-only lessons, video
clips; the session's `make demo` run, tests/conftest.py), a tiny random Qwen2-VL (from a config,
fixed seed) runs twice:

* packed — two packs per batch (one per rank), everything from ``PackedShards(pixel_values=True)`` and
  ``collate_packs(attn_implementation=...)``: ids, 3-D M-RoPE positions from the pack, the
  segment-confined attention (a 4-D block mask for sdpa / eager; cu_seqlens for varlen), image and
  video pixel values from the loader; the loss per segment from ``pack.trainer.loss``;
* unpacked — each sample alone, built the way transformers builds it: the chat template through the
  tokenizer's ``apply_chat_template`` (assistant mask from ``{% generation %}``), the image-pad
  expansion of ``Qwen2VLProcessor.replace_image_token`` / ``replace_video_token``, pixel values from
  transformers' Qwen2-VL image processor on the decoded image, positions computed by the model itself
  (``get_rope_index``), a plain causal mask, and the loss as unpacked training computes it (shifted
  cross-entropy over the sample's labelled tokens, summed).

``Qwen2VLProcessor`` itself cannot be built here: transformers 5.x checks its video-processor class,
which needs torchvision (not a dependency), so the test calls the processor's own expansion methods
and its image processor directly. The video's pixel values come from the loader
(pack.trainer.video_pixels) on both sides, for the same reason.

Tolerance (fp32, stated): every logit of every segment within ``LOGIT_ATOL`` of the unpacked one,
every segment's summed loss within ``LOSS_RTOL`` (relative) — only summation order differs. The
tests of the test perturb one thing by one (positions after an image, a mask boundary, the labels)
and show the same check then fails.
"""
from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest

from pack.trainer import attention as A
from pack import tokens as T
from pack.trainer.collate import collate_packs, model_inputs
from pack.trainer.loss import IGNORE_INDEX, segment_loss_sums, shift_targets
from pack.trainer.positions import IMAGE, TEXT, VIDEO

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LOGIT_ATOL = 1e-5        # largest |logit difference| allowed, fp32 (measured: 2.4e-7; README)
LOSS_RTOL = 1e-5         # largest relative |summed-loss difference| per segment (measured: 3.1e-7)

# Qwen2-VL's chat template with the assistant turns marked as generation (tests/test_trainer.py).
from tests.test_trainer import GENERATION_TEMPLATE  # noqa: E402


# --- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batches(demo_run):
    """Every demo pack with pixel values, as batches of two (rank 0's and rank 1's pack of one step)."""
    from pack.trainer.loader import PackedShards
    out, _, _ = demo_run
    ranks = [PackedShards(str(out / "shards"), rank=r, world_size=2, pixel_values=True) for r in (0, 1)]
    assert len({d.num_packs for d in ranks}) == 1
    return [[d.read_pack(i) for d in ranks] for i in range(ranks[0].num_packs)]


@pytest.fixture(scope="module")
def hf_text():
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    tok = AutoTokenizer.from_pretrained(str(T.shipped_tokenizer_dir()), local_files_only=True)
    return tok, Qwen2VLImageProcessorPil


@pytest.fixture(scope="module")
def model():
    """One tiny Qwen2-VL; each test sets the text attention it checks (the vision tower stays sdpa:
    it attends within each image by construction, packed or not)."""
    from tests.tiny_qwen import tiny_qwen2_vl
    return tiny_qwen2_vl(A.SDPA)


def _use(model, impl: str):
    model.set_attn_implementation({"text_config": impl, "vision_config": A.SDPA})
    assert model.model.language_model.config._attn_implementation == impl
    return model


@pytest.fixture(scope="module")
def references(batches, hf_text, demo_run, model):
    """Per sample key: the unpacked inputs, built with transformers' own pieces, and what the model
    computes on them alone (``_unpacked``, standard causal sdpa attention)."""
    import json
    out, _, _ = demo_run
    model_cfg = json.loads((out / "shards" / "manifest.json").read_text())["model"]
    tok, processor_cls = hf_text
    improc = processor_cls(min_pixels=model_cfg["min_pixels"], max_pixels=model_cfg["max_pixels"],
                           patch_size=14, merge_size=2, temporal_patch_size=2,
                           image_mean=model_cfg["image_mean"], image_std=model_cfg["image_std"])
    refs = {}
    for batch in batches:
        for pack in batch:
            videos = {id(v): (pv, g) for v, pv, g in _per_video(pack)}
            for seg in pack["samples"]:
                vids = [v for v in pack["videos"] if v["sample"] == seg["key"]]
                ref = _reference(seg, [im["bytes"] for im in pack["images"] if im["sample"] == seg["key"]],
                                 [videos[id(v)] for v in vids], tok, improc)
                refs[seg["key"]] = {**ref, "alone": _unpacked(_use(model, A.SDPA), ref)}
    return refs


def _per_video(pack):
    """Each video of the pack with its rows of the loader's pixel_values_videos and its grid."""
    start = 0
    for v, grid in zip(pack["videos"], pack["video_grid_thw"]):
        n = int(np.prod(grid))
        yield v, pack["pixel_values_videos"][start:start + n], grid
        start += n


# --- the unpacked side -------------------------------------------------------------------------------
def _messages(seg) -> list[dict]:
    """The sample as chat messages; images and videos where pack.tokens puts them (placeholders, else
    at the front of the first user turn: images, then videos)."""
    if seg.get("segments"):   # an interleaved document: the assistant's text, its images where they stand
        return [{"role": "user", "content": ""}, {"role": "assistant", "content": _document_text(seg)}]
    if seg.get("conversations"):
        turns = [(t["role"], t["content"]) for t in seg["conversations"]]
    else:
        turns = [("user", ""), ("assistant", seg.get("text") or "")]
    front = {"<image>": not any("<image>" in c for _, c in turns), "<video>": not any("<video>" in c for _, c in turns)}
    counts = {"<image>": len(seg["images"]), "<video>": len(seg["videos"])}
    out, placed = [], False
    for role, content in turns:
        if role == "user" and not placed:
            placed = True
            content = "".join(ph * counts[ph] for ph in ("<image>", "<video>") if front[ph]) + content
        content = (content.replace("<image>", T.VISION_START + T.IMAGE_PAD + T.VISION_END)
                   .replace("<video>", T.VISION_START + T.VIDEO_PAD + T.VISION_END))
        out.append({"role": role, "content": content})
    return out


def _document_text(seg) -> str:
    """A document as one string: paragraphs joined the record's way, each image's vision block at its
    position with nothing beside it (what the chat template makes of a list of text and image items)."""
    from curate.base import records as R
    from curate.documents.record import document_parts
    out, previous = "", None
    for kind, value in document_parts(seg["text"], seg["segments"]):
        if kind == "image":
            out += T.VISION_START + T.IMAGE_PAD + T.VISION_END
        else:
            out += (R.DOCUMENT_PARAGRAPH_JOIN if previous == "text" else "") + value
        previous = kind
    return out


def _reference(seg, image_bytes, videos, tok, improc) -> dict:
    from PIL import Image
    from transformers import Qwen2VLProcessor
    enc = tok.apply_chat_template(_messages(seg), chat_template=GENERATION_TEMPLATE, tokenize=True,
                                  return_dict=True, return_assistant_tokens_mask=True)
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in image_bytes]
    image_inputs = improc(images=images, return_tensors="pt") if images else {"image_grid_thw": torch.zeros(0, 3)}
    video_inputs = {"video_grid_thw": torch.as_tensor(np.asarray([g for _, g in videos]).reshape(-1, 3))}
    # the processor's own rule for how many pad tokens each image / video becomes
    proc = SimpleNamespace(image_processor=improc, image_token=T.IMAGE_PAD, video_token=T.VIDEO_PAD,
                           video_processor=SimpleNamespace(merge_size=improc.merge_size))
    pad = {tok.convert_tokens_to_ids(T.IMAGE_PAD): ("image", Qwen2VLProcessor.replace_image_token, image_inputs),
           tok.convert_tokens_to_ids(T.VIDEO_PAD): ("video", Qwen2VLProcessor.replace_video_token, video_inputs)}
    ids, mask, seen = [], [], {"image": 0, "video": 0}
    markers = {tok.convert_tokens_to_ids(T.VISION_START), tok.convert_tokens_to_ids(T.VISION_END)}
    for token, trained in zip(enc["input_ids"], enc["assistant_masks"]):
        if token in pad:
            kind, expand, inputs = pad[token]
            n = expand(proc, inputs, seen[kind]).count(proc.image_token if kind == "image" else proc.video_token)
            seen[kind] += 1
            ids += [token] * n
            mask += [False] * n
        else:
            ids.append(token)
            # vision markers are never trained (pack.tokens: -100 on pads and markers, also where an
            # interleaved document puts an image inside the assistant's text)
            mask.append(bool(trained) and token not in markers)
    assert seen == {"image": len(images), "video": len(videos)}, seg["key"]
    ids_t = torch.as_tensor(ids, dtype=torch.long)[None]
    labels = torch.where(torch.as_tensor(mask)[None], ids_t, IGNORE_INDEX)
    types = torch.zeros_like(ids_t)                      # what the processor returns as mm_token_type_ids
    types[ids_t == tok.convert_tokens_to_ids(T.IMAGE_PAD)] = IMAGE
    types[ids_t == tok.convert_tokens_to_ids(T.VIDEO_PAD)] = VIDEO
    return {"input_ids": ids_t, "labels": labels, "mm_token_type_ids": types,
            "pixel_values": image_inputs.get("pixel_values"),
            "image_grid_thw": image_inputs["image_grid_thw"] if images else None,
            "pixel_values_videos": torch.cat([torch.as_tensor(p) for p, _ in videos]) if videos else None,
            "video_grid_thw": video_inputs["video_grid_thw"] if videos else None}


def _unpacked(model, ref) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """The sample alone (positions by the model, causal mask): its last hidden states [n, H], where
    its targets are labelled (shifted by one) and their logits, and its summed loss as unpacked
    training computes it (cross-entropy over the labelled tokens)."""
    with torch.no_grad():
        hidden = model.model(**{k: v for k, v in ref.items() if k != "labels" and v is not None}).last_hidden_state[0]
        targets = ref["labels"][0, 1:]
        keep = targets != IGNORE_INDEX
        logits = model.lm_head(hidden[:-1][keep])
        loss = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
    return hidden, keep, logits, float(loss)


# --- the packed side and the comparison ---------------------------------------------------------------
def _packed(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden states [B, L, H] of the packed batch and the summed loss per segment of the batch
    (pack.trainer.loss: targets shifted in the row, summed per segment id)."""
    with torch.no_grad():
        hidden = model.model(**model_inputs(batch)).last_hidden_state
        targets, sid = shift_targets(batch["labels"]), batch["segment_ids"]
        keep = (targets != IGNORE_INDEX) & (sid >= 0)
        sums, _ = segment_loss_sums(model.lm_head(hidden[keep]), targets[keep], sid[keep], int(sid.max()) + 1)
    return hidden, sums


def compare(model, batch, references) -> dict[str, tuple[float, float, float]]:
    """Per sample key of the batch: (bound on |logit difference| over all its tokens, largest |logit
    difference| where it has targets, |summed-loss difference| / |summed loss|).

    The logits are ``lm_head(hidden)``, linear: at every token and vocabulary entry v,
    ``|logit_packed - logit_alone| = |W_v . (h_packed - h_alone)| <= max_v |W_v| * |h_packed - h_alone|``
    (Cauchy-Schwarz), so the bound covers all 151936 logits of every token without computing them
    (that is 10 s per 2k tokens here; bench/bench_train.py --equivalence measures them all). Where the
    loss is computed the logits are compared exactly."""
    hidden, sums = _packed(model, batch)
    row_norm = float(model.lm_head.weight.detach().norm(dim=1).max())
    out, j = {}, 0
    for b, samples in enumerate(batch["samples"]):
        lo = 0
        for seg in samples:
            key = seg["key"]
            ref = references[key]
            n = ref["input_ids"].shape[1]
            assert batch["input_ids"][b, lo:lo + n].tolist() == ref["input_ids"][0].tolist(), key
            ref_hidden, keep, ref_logits, ref_loss = ref["alone"]
            mine = hidden[b, lo:lo + n]
            with torch.no_grad():
                bound = row_norm * float((mine - ref_hidden).norm(dim=1).max())
                exact = float((model.lm_head(mine[:-1][keep]) - ref_logits).abs().max()) if keep.any() else 0.0
            loss = abs(float(sums[j]) - ref_loss) / max(abs(ref_loss), 1e-12)
            out[key] = (bound, exact, loss)
            assert int((batch["segment_ids"][b, lo:lo + n] == j).sum()) == n == seg["length"], key
            lo, j = lo + n, j + 1
    return out


def _violations(diffs: dict[str, tuple[float, float, float]]) -> dict[str, tuple[float, float, float]]:
    return {k: v for k, v in diffs.items() if not (v[0] <= LOGIT_ATOL and v[1] <= LOGIT_ATOL and v[2] <= LOSS_RTOL)}


@pytest.mark.parametrize("impl", [A.SDPA, A.EAGER])
def test_every_segment_of_every_demo_pack_computes_what_the_sample_alone_computes(impl, batches, references, model):
    _use(model, impl)
    diffs: dict[str, tuple[float, float, float]] = {}
    for packs in batches:
        diffs.update(compare(model, collate_packs(packs, attn_implementation=impl), references))
    worst = [max(d[i] for d in diffs.values()) for i in range(3)]
    print(f"\n{impl}: {len(diffs)} segments; |logit diff| <= {worst[0]:.2e} (bound, all tokens), "
          f"{worst[1]:.2e} (exact, labelled tokens); relative |summed-loss diff| {worst[2]:.2e}")
    assert not _violations(diffs), _violations(diffs)
    kinds = {("video" if s["videos"] else "image" if s["images"] else "text", s["category"])
             for packs in batches for p in packs for s in p["samples"]}
    assert {k for k, _ in kinds} == {"image", "video", "text"}
    assert {c for _, c in kinds} >= {"caption", "vqa", "grounding", "ocr", "text", "video"}
    # every segment compared (a pack that pads a rank's last step repeats its samples' keys)
    assert set(diffs) == {s["key"] for packs in batches for p in packs for s in p["samples"]}


# --- the test of the test: one deliberate off-by-one at a time, and the same check fails ---------------
def _image_then_text(batch):
    """(row, segment index in the batch, first token after the segment's first image block, segment
    end, key) of the first segment with text after an image, that is not the first of its pack."""
    j = 0
    for b, samples in enumerate(batch["samples"]):
        lo = 0
        types = batch["mm_token_type_ids"][b]
        for i, seg in enumerate(samples):
            hi = lo + seg["length"]
            image = torch.nonzero(types[lo:hi] == IMAGE).flatten()
            if i > 0 and len(image) and int(image[-1]) + 1 < seg["length"] - 1:
                return b, j, lo, lo + int(image[-1]) + 1, hi, seg["key"]
            lo, j = hi, j + 1
    raise AssertionError("no pack has an image sample after another sample")


def _perturbed(batch, what: str):
    out = dict(batch)
    b, j, lo, after_image, hi, key = _image_then_text(batch)
    if what == "positions":          # text after the image one position late (the gap rule off by one)
        out["position_ids"] = batch["position_ids"].clone()
        out["position_ids"][:, b, after_image:hi] += 1
    elif what == "mask":             # the segment's boundary one token late: its first token joins the previous one
        sid = batch["segment_ids"].clone()
        sid[b, lo] = sid[b, lo - 1]
        out["attention_mask"] = A.block_causal_mask(sid, A.SDPA)
    elif what == "labels":           # the labels one token late inside the segment
        out["labels"] = batch["labels"].clone()
        out["labels"][b, lo + 1:hi] = batch["labels"][b, lo:hi - 1]
    return out, key


@pytest.mark.parametrize("what", ["positions", "mask", "labels"])
def test_the_check_fails_on_an_off_by_one(what, batches, references, model):
    _use(model, A.SDPA)
    batch = next(collate_packs(p, attn_implementation=A.SDPA) for p in batches
                 if any(i > 0 and s["images"] for pk in p for i, s in enumerate(pk["samples"])))
    # intact, this batch passes (test_every_segment_..._computes above)
    bad, key = _perturbed(batch, what)
    diffs = compare(model, bad, references)
    assert key in _violations(diffs), diffs[key]
    bound, exact, loss = diffs[key]
    if what == "labels":
        assert loss > 10 * LOSS_RTOL and exact <= LOGIT_ATOL              # same logits, wrong targets
    else:
        assert exact > 10 * LOGIT_ATOL and bound >= exact


# --- varlen: cu_seqlens instead of a mask -------------------------------------------------------------
def test_varlen_inputs_compute_what_each_sample_alone_computes(batches, references, model):
    """``collate_packs(attn_implementation=...)`` for flash attention, run through
    ``pack.trainer.attention.varlen_reference_attention`` (what ``flash_attn_varlen_func`` computes, in
    PyTorch): no mask at all, only cu_seq_lens_q/k and max_length_q/k reach the attention layers."""
    _use(model, A.register_varlen_reference())
    try:
        diffs: dict[str, tuple[float, float, float]] = {}
        for packs in batches:
            batch = collate_packs(packs, attn_implementation=A.VARLEN_REFERENCE)
            assert batch["attention_mask"] is None and batch["cu_seq_lens_q"].dtype == torch.int32
            diffs.update(compare(model, batch, references))
    finally:
        _use(model, A.SDPA)
    worst = [max(d[i] for d in diffs.values()) for i in range(3)]
    print(f"\nvarlen (reference kernel): |logit diff| <= {worst[0]:.2e}, exact {worst[1]:.2e}, loss {worst[2]:.2e}")
    assert not _violations(diffs), _violations(diffs)


def _flash_skip_reason() -> str | None:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return "flash-attn is not installed (it needs a CUDA GPU); the varlen path is checked with its PyTorch stand-in"
    if not torch.cuda.is_available():
        return "no CUDA device: flash_attn_varlen_func runs on GPUs only"
    return None


@pytest.mark.skipif(_flash_skip_reason() is not None, reason=str(_flash_skip_reason()))
def test_flash_attention_varlen_computes_what_each_sample_alone_computes(batches, references, model):
    """The same packs through transformers' flash_attention_2 (``flash_attn_varlen_func`` with the
    batch's cu_seqlens) in bf16 on a GPU, against each sample alone with the same kernel and dtype."""
    import copy
    gpu = copy.deepcopy(model).to("cuda", torch.bfloat16)
    gpu.set_attn_implementation("flash_attention_2")
    row_norm = float(gpu.lm_head.weight.float().norm(dim=1).max())
    worst = 0.0
    for packs in batches:
        batch = collate_packs(packs, device="cuda", attn_implementation="flash_attention_2")
        for key in ("pixel_values", "pixel_values_videos"):
            if batch.get(key) is not None:
                batch[key] = batch[key].to(torch.bfloat16)
        with torch.no_grad():
            hidden = gpu.model(**model_inputs(batch)).last_hidden_state.float()
            for b, samples in enumerate(batch["samples"]):
                lo = 0
                for seg in samples:
                    ref = {k: (v.to("cuda") if torch.is_tensor(v) else v) for k, v in references[seg["key"]].items()
                           if k not in ("labels", "alone") and v is not None}
                    for key in ("pixel_values", "pixel_values_videos"):
                        if key in ref:
                            ref[key] = ref[key].to(torch.bfloat16)
                    alone = gpu.model(**ref).last_hidden_state[0].float()
                    n = alone.shape[0]
                    worst = max(worst, row_norm * float((hidden[b, lo:lo + n] - alone).norm(dim=1).max()))
                    lo += n
    print(f"\nflash_attention_2 (bf16): |logit diff| <= {worst:.2e}")
    assert worst <= 5e-2          # bf16: 8 bits of mantissa; summation order differs between the two runs


def test_the_readme_training_snippet_runs_on_the_demo_shards(demo_run, tmp_path):
    """README, "Training on the packs": its ten-line example, run as written against the demo output."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", (root / "README.md").read_text(), flags=re.S)
                  if "collate_packs(" in b and "attn_implementation" in b]
    out, _, _ = demo_run
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "demo").symlink_to(out)
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", snippet + "\nprint('loss', float(loss))"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^loss \d+\.\d+", proc.stdout, flags=re.M), proc.stdout


def test_resumable_loader_batches_carry_the_attention_inputs(demo_run):
    from pack.trainer.loader import PackedShards, ResumableLoader
    out, _, _ = demo_run
    loader = ResumableLoader(PackedShards(str(out / "shards"), rank=1, world_size=2), batch_size=2, device=None,
                             attn_implementation=A.EAGER)
    batch = next(iter(loader))
    L = batch["input_ids"].shape[1]
    assert batch["attention_mask"].shape == (2, 1, L, L) and batch["attention_mask"].dtype == torch.float32
    assert torch.equal(batch["attention_mask"], A.block_causal_mask(batch["segment_ids"], A.EAGER))
    assert loader.state_dict()["position"] == 2
