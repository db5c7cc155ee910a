"""Training throughput of the tiny Qwen2-VL on packed vs unpacked batches of the same samples (CPU).

The samples are the demo's (`make demo`: out/demo/shards; built here with the inline executor when
absent). One training step (forward, backward, AdamW) per global batch of the shards — one pack per
data-parallel rank — three ways:

* packed: the packs as ``collate_packs(attn_implementation="sdpa")`` batches them (4-D block mask,
  M-RoPE positions from the pack), the loss per token with ``pack.trainer.loss``; and the same packs with
  cu_seqlens through ``pack.trainer.attention.varlen_reference_attention`` (the PyTorch stand-in for
  ``flash_attn_varlen_func``: attention computed per segment, not over the whole L x L block mask);
* unpacked, padded: the same samples as one batch, one sample per row right-padded to the longest
  (what a padding collator does), positions computed by the model (``get_rope_index``);
* unpacked, one sample at a time: each sample its own forward/backward (gradient accumulation), one
  optimizer step per global batch (no padding at all, the smallest matrices).

Tokens/s counts real tokens (no padding) per second of wall time and of process CPU time.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from run import format_table, quick

BENCH_TIMEOUT_S = 1200
ROOT = Path(__file__).resolve().parents[1]
PAD_ID = 151643                       # <|endoftext|>


def demo_shards() -> Path:
    given = os.environ.get("MMCURATE_BENCH_SHARDS")
    if given:
        return Path(given)
    if (ROOT / "out" / "demo" / "shards" / "manifest.json").exists():
        return ROOT / "out" / "demo" / "shards"
    from demo_data import sample as sample_data
    from pipelines.recipe import load
    from pipelines.runner import run
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    sample_data.build(work / "data" / "sample")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        run(load(ROOT / "recipes" / "demo.yaml"), out=work / "out", executor="inline", progress=False)
    finally:
        os.chdir(cwd)
    return work / "out" / "shards"


def _rows_of(pack, kind: str):
    """Per sample key: its rows of the pack's pixel values and its grids (images or videos)."""
    media, pixels, grids = (("images", "pixel_values", "image_grid_thw") if kind == "image"
                            else ("videos", "pixel_values_videos", "video_grid_thw"))
    out, start = {}, 0
    for m, g in zip(pack[media], pack[grids]):
        n = int(np.prod(g))
        rows, thw = out.setdefault(m["sample"], ([], []))
        rows.append(pack[pixels][start:start + n])
        thw.append(g)
        start += n
    return out


def unpacked_samples(packs) -> list[dict]:
    """Every sample of `packs` alone: ids, labels, modality ids, its pixel values and grids."""
    import torch
    out = []
    for pack in packs:
        images, videos = _rows_of(pack, "image"), _rows_of(pack, "video")
        lo = 0
        for seg in pack["samples"]:
            n = int(seg["length"])
            s = {k: torch.as_tensor(pack[k][lo:lo + n], dtype=torch.long) for k in ("input_ids", "labels", "mm_token_type_ids")}
            for key, grids, src in (("pixel_values", "image_grid_thw", images), ("pixel_values_videos", "video_grid_thw", videos)):
                rows, thw = src.get(seg["key"], ([], []))
                s[key] = torch.as_tensor(np.concatenate(rows)) if rows else None
                s[grids] = torch.as_tensor(np.asarray(thw), dtype=torch.long) if thw else None
            out.append(s)
            lo += n
    return out


def padded_batch(samples: list[dict]) -> dict:
    """One row per sample, right-padded to the longest; the pixel rows concatenated in order."""
    import torch
    L = max(len(s["input_ids"]) for s in samples)
    B = len(samples)
    batch = {"input_ids": torch.full((B, L), PAD_ID), "labels": torch.full((B, L), -100),
             "mm_token_type_ids": torch.zeros((B, L), dtype=torch.long), "attention_mask": torch.zeros((B, L), dtype=torch.long)}
    for i, s in enumerate(samples):
        n = len(s["input_ids"])
        for k in ("input_ids", "labels", "mm_token_type_ids"):
            batch[k][i, :n] = s[k]
        batch["attention_mask"][i, :n] = 1
    for key, grids in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
        have = [s for s in samples if s[key] is not None]
        batch[key] = torch.cat([s[key] for s in have]) if have else None
        batch[grids] = torch.cat([s[grids] for s in have]) if have else None
    return batch


def step_unpacked(model, batch) -> None:
    from pack.trainer.loss import packed_loss_from_hidden
    inputs = {k: v for k, v in batch.items() if k != "labels" and v is not None}
    hidden = model.model(**inputs).last_hidden_state
    rows = batch["input_ids"].new_tensor(range(batch["input_ids"].shape[0]))[:, None].expand_as(batch["input_ids"])
    sid = torch_where(batch["attention_mask"] == 1, rows, -1)
    packed_loss_from_hidden(hidden, model.lm_head, batch["labels"], sid, "token").backward()


def torch_where(cond, a, b):
    import torch
    return torch.where(cond, a, torch.as_tensor(b))


def step_packed(model, batch) -> None:
    from pack.trainer.collate import model_inputs
    from pack.trainer.loss import packed_loss_from_hidden
    hidden = model.model(**model_inputs(batch)).last_hidden_state
    packed_loss_from_hidden(hidden, model.lm_head, batch["labels"], batch["segment_ids"], "token").backward()


def measure(name: str, model, optimizer, steps) -> list:
    """Run every step (a list of callables doing forward + backward), then the optimizer."""
    run_steps = lambda: [(fn(), optimizer.step(), optimizer.zero_grad(set_to_none=True)) for fn in steps]  # noqa: E731
    run_steps()                                                       # warm-up pass
    wall, cpu = time.perf_counter(), time.process_time()
    run_steps()
    return [name, time.perf_counter() - wall, time.process_time() - cpu]


def main() -> None:
    import torch
    from pack.trainer.collate import collate_packs
    from pack.trainer.loader import PackedShards
    from pack.trainer.train_demo import tiny_model
    torch.manual_seed(0)
    shards = demo_shards()
    import json
    dp = json.loads((shards / "manifest.json").read_text())["dp_size"]
    ranks = [PackedShards(str(shards), rank=r, world_size=dp, pixel_values=True) for r in range(dp)]
    n_steps = 2 if quick() else ranks[0].num_packs
    steps = [[d.read_pack(i) for d in ranks] for i in range(n_steps)]
    L = ranks[0].context_length
    real = sum(int(p["length"]) for packs in steps for p in packs)
    fill = real / (len(steps) * dp * L)
    model = tiny_model(0, "sdpa").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    from pack.trainer import attention as A
    varlen_name = A.register_varlen_reference()
    packed = [collate_packs(packs, attn_implementation="sdpa") for packs in steps]
    varlen = [collate_packs(packs, attn_implementation=varlen_name) for packs in steps]
    use = lambda impl: model.set_attn_implementation({"text_config": impl, "vision_config": "sdpa"})  # noqa: E731
    per_step = [unpacked_samples(packs) for packs in steps]
    padded = [padded_batch(s) for s in per_step]
    padded_tokens = sum(int(b["input_ids"].numel()) for b in padded)
    use("sdpa")
    rows = [
        measure("packed (block mask)", model, opt, [lambda b=b: step_packed(model, b) for b in packed])
        + [len(steps) * dp * L, f"{fill:.1%}"],
        measure("unpacked, padded batch", model, opt, [lambda b=b: step_unpacked(model, b) for b in padded])
        + [padded_tokens, f"{real / padded_tokens:.1%}"],
        measure("unpacked, one sample at a time", model, opt,
                [lambda s=s: [step_unpacked(model, padded_batch([x])) for x in s] for s in per_step])
        + [real, "100.0%"],
    ]
    use(varlen_name)
    rows.insert(1, measure("packed (varlen, per segment)", model, opt, [lambda b=b: step_packed(model, b) for b in varlen])
                + [len(steps) * dp * L, f"{fill:.1%}"])
    use("sdpa")
    table = [[name, f"{real / wall:,.0f}", f"{real / cpu:,.0f}", f"{wall:.1f}", f"{cpu:.1f}", computed, useful]
             for name, wall, cpu, computed, useful in rows]
    n_samples = sum(len(s) for s in per_step)
    print(f"{n_samples} samples, {real} real tokens in {len(steps)} global batches of {dp} packs x {L} tokens; "
          f"torch threads: {torch.get_num_threads()}")
    print(format_table(["batches", "tokens/s (wall)", "tokens/s (CPU)", "wall s", "CPU s", "tokens computed",
                        "real / computed"], table))
    for i, name in ((0, "block mask"), (1, "varlen")):
        print(f"packed ({name}) by CPU time: {rows[2][2] / rows[i][2]:.2f}x the padded batch's throughput, "
              f"{rows[3][2] / rows[i][2]:.2f}x one sample at a time")


if __name__ == "__main__":
    main()
