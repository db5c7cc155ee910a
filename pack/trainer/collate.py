"""Batches from packs: ``collate_packs`` stacks what ``PackedShards`` returns into the tensors a
trainer passes to the model (ids, labels, positions, modality and segment ids, varlen boundaries,
pixel values and grids, and with ``attn_implementation`` the segment-confined attention that
implementation takes), ``model_inputs`` picks what goes into a Hugging Face model's forward, and
``to_device`` moves them (the NPU when the torch_npu extra works)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from curate.base.devices import npu_available
from pack.trainer import attention as A
# What a Hugging Face Qwen2-VL-family forward takes from a batch (labels left out on purpose: the
# model's own loss averages over the whole row; pack.trainer.loss averages per segment as unpacked training).
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "position_ids", "mm_token_type_ids", "pixel_values",
                    "image_grid_thw", "pixel_values_videos", "video_grid_thw", "cu_seq_lens_q",
                    "cu_seq_lens_k", "max_length_q", "max_length_k")


def resolve_device(device: str | None) -> str | None:
    """``"auto"``: the NPU when torch_npu works, in the main process only (not in DataLoader workers);
    None: leave tensors on the CPU; anything else: a torch device string."""
    if device != "auto":
        return device
    from torch.utils.data import get_worker_info
    if get_worker_info() is None and npu_available():
        return "npu"
    return None


def _check_batch(packs: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    if not packs:
        raise ValueError("collate_packs needs at least one pack")
    L = int(packs[0]["context_length"])
    if any(int(p["context_length"]) != L for p in packs):
        raise ValueError("packs of different context_length cannot share a batch")
    epochs = {int(p["epoch"]) for p in packs}
    if len(epochs) != 1:
        raise ValueError(f"a batch spans epochs {sorted(epochs)}")
    return L, next(iter(epochs))


def _varlen(packs: Sequence[Mapping[str, Any]], L: int) -> dict[str, Any]:
    """cu_seqlens of the whole batch flattened to B*L tokens, the pack of each segment, the
    attention mask and the segment id of every token (index into the batch's samples, -1: padding)."""
    import torch
    B = len(packs)
    cu_parts, seg_pack, seg_ids = [], [], []
    mask = np.zeros((B, L), dtype=np.int64)
    first_sample = 0
    for i, p in enumerate(packs):
        cu = np.asarray(p["cu_seqlens"], dtype=np.int64)
        cu_parts.append(cu[:-1] + i * L)
        seg_pack.append(np.full(cu.size - 1, i, dtype=np.int64))
        sid = np.asarray(p["segment_ids"], dtype=np.int64)
        seg_ids.append(np.where(sid >= 0, sid + first_sample, -1))
        first_sample += len(p["samples"])
        mask[i, : int(p["length"])] = 1
    cu_all = np.concatenate(cu_parts + [np.array([B * L], dtype=np.int64)])
    return {
        "cu_seqlens": torch.from_numpy(cu_all.astype(np.int32)),
        "max_seqlen": int(np.diff(cu_all).max()) if cu_all.size > 1 else 0,
        "segment_pack": torch.from_numpy(np.concatenate(seg_pack)),
        "segment_ids": torch.from_numpy(np.stack(seg_ids)),
        "attention_mask": torch.from_numpy(mask),
    }


def _token_arrays(packs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """input_ids / labels / mm_token_type_ids [B, L] when every pack has them; position_ids
    [B, L] (1-D) or [3, B, L] (M-RoPE), the layout HF Qwen2-VL expects."""
    import torch
    out: dict[str, Any] = {}
    for name in ("input_ids", "labels", "mm_token_type_ids"):
        if all(p.get(name) is not None for p in packs):
            out[name] = torch.from_numpy(np.stack([np.asarray(p[name], dtype=np.int64) for p in packs]))
    pos = np.stack([np.asarray(p["position_ids"], dtype=np.int64) for p in packs])
    out["position_ids"] = torch.from_numpy(np.ascontiguousarray(pos.transpose(1, 0, 2)) if pos.ndim == 3 else pos)
    return out


def _vision(packs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    import torch
    out: dict[str, Any] = {
        "image_token_counts": torch.tensor([int(im["tokens"]) for p in packs for im in p["images"]], dtype=torch.int32),
        "images_per_pack": torch.tensor([len(p["images"]) for p in packs], dtype=torch.int32),
        "image_bytes": [im["bytes"] for p in packs for im in p["images"]],
    }
    for pixels, grids in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
        if all(p.get(pixels) is not None for p in packs):
            rows = torch.cat([torch.as_tensor(p[pixels]) for p in packs])
            thw = torch.cat([torch.as_tensor(p[grids], dtype=torch.int64).reshape(-1, 3) for p in packs])
            out[pixels], out[grids] = (rows, thw) if len(thw) else (None, None)   # none: the model takes None
    return out


def _attention(out: dict[str, Any], implementation: str) -> dict[str, Any]:
    """The attention inputs `implementation` takes (pack.trainer.attention); the [B, L] padding mask moves to
    ``padding_mask``."""
    if implementation not in A.IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {list(A.IMPLEMENTATIONS)}, got {implementation!r}")
    extra: dict[str, Any] = {"padding_mask": out["attention_mask"]}
    if implementation in (A.SDPA, A.EAGER):
        extra["attention_mask"] = A.block_causal_mask(out["segment_ids"], implementation)
    else:
        extra["attention_mask"] = None
        extra.update(A.varlen_kwargs(out["cu_seqlens"], out["max_seqlen"]))
    return extra


def collate_packs(packs: Sequence[Mapping[str, Any]], device: str | None = None,
                  attn_implementation: str | None = None) -> dict[str, Any]:
    """Batch tensors from packs of equal context_length ``L`` (batch size ``B``):

    * ``input_ids``, ``labels`` (-100 where no loss), ``mm_token_type_ids`` (0 text, 1 image,
      2 video) int64 [B, L] — when the shards are tokenized;
    * ``position_ids`` — int64 [3, B, L] for M-RoPE profiles (tokenized Qwen2-VL family), else
      [B, L]; restarting at 0 at every segment (and at the padding);
    * ``cu_seqlens`` int32 [S + 1] — boundaries of all S segments of the batch flattened to B·L tokens
      (pack i's boundaries offset by i·L; padding is a segment), the TND / varlen layout;
      ``max_seqlen`` — the longest segment; for npu_fusion_attention use
      ``actual_seq_qlen = cu_seqlens[1:].tolist()``; ``segment_pack`` int64 [S] — each segment's pack;
    * ``segment_ids`` int64 [B, L] — per token, the index of its sample in the batch (the order of
      ``samples`` flattened), -1 on padding: the input of per-sample loss weighting;
    * ``image_token_counts`` int32 [I], ``images_per_pack`` int32 [B], ``image_bytes`` (I encoded
      images); ``pixel_values`` / ``image_grid_thw`` and ``pixel_values_videos`` /
      ``video_grid_thw`` when the loader was asked for them (None when the batch has no image / video);
    * ``attention_mask`` int64 [B, L] — 1 for sample tokens, 0 for padding — without
      `attn_implementation`. With it, what that implementation needs so that every segment attends to
      itself only (pack.trainer.attention), and the [B, L] mask as ``padding_mask``:
      ``"sdpa"``: ``attention_mask`` bool [B, 1, L, L], block-diagonal and causal;
      ``"eager"``: the same as an additive float32 mask (0 / float32 minimum);
      ``"flash_attention_2"`` / ``"flash_attention_3"`` (and the CPU stand-in
      ``pack.trainer.attention.VARLEN_REFERENCE``): ``attention_mask`` None, ``cu_seq_lens_q`` /
      ``cu_seq_lens_k`` (= ``cu_seqlens``) and ``max_length_q`` / ``max_length_k`` (= ``max_seqlen``),
      which transformers passes to ``flash_attn_varlen_func``;
    * ``samples``, ``pack_keys``, ``pack_index`` (int64 [B]), ``epoch`` — for the consumed-data tracker.
    """
    import torch
    L, epoch = _check_batch(packs)
    out: dict[str, Any] = {**_varlen(packs, L), **_token_arrays(packs), **_vision(packs)}
    if attn_implementation is not None:
        out.update(_attention(out, attn_implementation))
    out.update(samples=[list(p["samples"]) for p in packs], pack_keys=[p["pack_key"] for p in packs],
               pack_index=torch.tensor([int(p["index"]) for p in packs], dtype=torch.int64), epoch=epoch)
    return to_device(out, resolve_device(device))


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a ``collate_packs`` batch that a Hugging Face Qwen2-VL-family ``forward`` takes
    (``MODEL_INPUT_KEYS``; not the labels: compute the loss with pack.trainer.loss)."""
    return {k: batch[k] for k in MODEL_INPUT_KEYS if batch.get(k) is not None}


def to_device(batch: dict[str, Any], device: str | None) -> dict[str, Any]:
    """Move the tensors of a batch (not the bookkeeping) to `device`; None leaves them where they are."""
    if device is None:
        return batch
    import torch
    keep_on_cpu = {"pack_index"}
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) and k not in keep_on_cpu else v)
            for k, v in batch.items()}
