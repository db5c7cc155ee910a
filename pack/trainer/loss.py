"""The loss of a packed batch, per segment, averaged the way unpacked training averages it.

Why: a model's own loss (``model(..., labels=...)``) is the mean over every labelled token of the
row. Unpacked, two common trainers weight samples differently, and packing changes neither only if
the loss is averaged on purpose:

* ``average="token"`` — sum over all labelled tokens of the batch / their number. This is what
  unpacked training computes when it averages over the tokens of the whole (global) batch:
  transformers' Trainer with ``num_items_in_batch`` (its default since the gradient-accumulation fix),
  Megatron's ``calculate_per_token_loss``, and a plain ``CrossEntropyLoss(ignore_index=-100)`` over a
  padded unpacked batch. Long answers weigh more, exactly as unpacked.
* ``average="sample"`` — each segment's mean over its labelled tokens, then the mean over segments.
  This is what unpacked training computes when every sample is a micro-batch of its own (or the loss
  is averaged per sample first): LLaVA / Qwen-VL fine-tuning with one sample per device, or any
  per-sample mean. Packed with a token average, a long sample would outweigh a short one.

Targets are shifted inside the row (the token at t predicts the label at t+1). A segment's first
token is never labelled in a pack, so no segment's last token is trained to predict the next
segment's first: the shift needs no segment awareness, and each segment's loss is the unpacked one.
For a global batch over data-parallel ranks or accumulation steps, all-reduce ``sums`` and ``counts``
(``segment_loss_sums``) before ``reduce_segment_losses``.
"""
from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100
AVERAGES = ("token", "sample")


def shift_targets(labels: Any) -> Any:
    """[B, L] targets aligned with the logits: ``labels[:, t + 1]`` at t, ``IGNORE_INDEX`` at the end."""
    import torch
    out = torch.full_like(labels, IGNORE_INDEX)
    out[:, :-1] = labels[:, 1:]
    return out


def segment_loss_sums(logits: Any, targets: Any, segment_ids: Any, num_segments: int) -> tuple[Any, Any]:
    """(summed cross-entropy [S], labelled tokens [S]) per segment. `logits` [..., V] with `targets`
    and `segment_ids` of the same leading shape (targets already shifted; -100 and segment -1 ignored)."""
    import torch
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    t, s = targets.reshape(-1), segment_ids.reshape(-1)
    keep = (t != IGNORE_INDEX) & (s >= 0)
    token = torch.nn.functional.cross_entropy(flat_logits[keep], t[keep], reduction="none")
    sums = torch.zeros(num_segments, dtype=token.dtype, device=token.device).index_add_(0, s[keep], token)
    counts = torch.zeros(num_segments, dtype=torch.int64, device=token.device).index_add_(
        0, s[keep], torch.ones_like(s[keep]))
    return sums, counts


def reduce_segment_losses(sums: Any, counts: Any, average: str = "token") -> Any:
    """The batch loss from per-segment sums and counts (see the module docstring for which matches what)."""
    if average == "token":
        return sums.sum() / counts.sum().clamp(min=1)
    if average == "sample":
        trained = counts > 0
        return (sums[trained] / counts[trained]).sum() / trained.sum().clamp(min=1)
    raise ValueError(f"average must be one of {list(AVERAGES)}, got {average!r}")


def packed_loss(logits: Any, labels: Any, segment_ids: Any, average: str = "token") -> Any:
    """Loss of a packed batch from the model's logits [B, L, V], ``labels`` and ``segment_ids`` [B, L]
    as ``collate_packs`` returns them."""
    num_segments = int(segment_ids.max()) + 1 if segment_ids.numel() else 0
    sums, counts = segment_loss_sums(logits, shift_targets(labels), segment_ids, max(num_segments, 1))
    return reduce_segment_losses(sums, counts, average)


def packed_loss_from_hidden(hidden: Any, lm_head: Any, labels: Any, segment_ids: Any, average: str = "token") -> Any:
    """``packed_loss`` computing logits only where a target is labelled: the last hidden states
    [B, L, H] and the output layer (``model.lm_head``). A pack's logits over a 150k vocabulary are
    2.4 GB per 4k tokens in fp32; most of a multimodal pack is image tokens, which are never targets."""
    targets = shift_targets(labels)
    keep = (targets != IGNORE_INDEX) & (segment_ids >= 0)
    num_segments = int(segment_ids.max()) + 1 if segment_ids.numel() else 1
    sums, counts = segment_loss_sums(lm_head(hidden[keep]), targets[keep], segment_ids[keep], max(num_segments, 1))
    return reduce_segment_losses(sums, counts, average)
