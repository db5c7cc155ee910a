"""Attention confined to each segment of a pack, in the form each attention implementation takes.

Why: a pack is several samples in one row. Causal attention over the whole row lets a sample see the
samples before it, and the model then computes something no unpacked run computes. Transformers
builds a plain causal mask from a 2-D ``attention_mask``, and for M-RoPE models (Qwen2-VL: 3-row
``position_ids``) it cannot infer the segments from the positions (transformers #38007, #44643),
so the trainer has to say where the segments are:

* ``sdpa`` / ``eager``: a 4-D mask [B, 1, L, L] that is block-diagonal over the segments and causal
  inside each (transformers passes a 4-D mask through unchanged): boolean (True: attend) for sdpa,
  additive float (0 / dtype minimum) for eager. The padding at the end of a pack is a block of its
  own (causal), so no row is fully masked: a fully masked row gives NaN under sdpa, and NaN leaks
  into the gradients even where the loss ignores the row.
* ``flash_attention_2`` / ``_3``: no mask; ``cu_seq_lens_q/k`` (int32, the batch's ``cu_seqlens``
  over B·L tokens) and ``max_length_q/k``: transformers hands them to ``flash_attn_varlen_func``,
  which attends inside each [cu[i], cu[i+1]) range only.

``varlen_reference_attention`` computes what ``flash_attn_varlen_func`` computes, segment by segment
with PyTorch's sdpa, so the varlen inputs can be checked on a CPU; ``register_varlen_reference``
makes it an attention implementation transformers can select.
"""
from __future__ import annotations

from typing import Any

SDPA, EAGER = "sdpa", "eager"
FLASH = ("flash_attention_2", "flash_attention_3")
VARLEN_REFERENCE = "mmcurate_varlen_reference"
IMPLEMENTATIONS = (SDPA, EAGER, *FLASH, VARLEN_REFERENCE)


def block_causal_mask(segment_ids: Any, implementation: str, dtype: Any = None) -> Any:
    """[B, 1, L, L] mask from per-token segment ids [B, L] (-1: padding, a block of its own):
    token q may attend token k when both are in the same segment and k <= q. Boolean for sdpa,
    additive (0 where allowed, the minimum of `dtype`, default float32, elsewhere) for eager."""
    import torch
    sid = torch.as_tensor(segment_ids)
    if sid.ndim != 2:
        raise ValueError(f"segment_ids must be [batch, length], got shape {tuple(sid.shape)}")
    L = sid.shape[1]
    same = sid[:, :, None] == sid[:, None, :]
    causal = torch.ones(L, L, dtype=torch.bool, device=sid.device).tril()
    allowed = (same & causal)[:, None]
    if implementation == SDPA:
        return allowed
    if implementation == EAGER:
        dtype = dtype or torch.float32
        out = torch.zeros(allowed.shape, dtype=dtype, device=sid.device)
        return out.masked_fill_(~allowed, torch.finfo(dtype).min)
    raise ValueError(f"a 4-D mask is for sdpa or eager, not {implementation!r}")


def varlen_kwargs(cu_seqlens: Any, max_seqlen: int) -> dict[str, Any]:
    """The keyword arguments transformers' flash-attention path turns into ``flash_attn_varlen_func``
    calls (``cu_seqlens_q/k``, ``max_seqlen_q/k``)."""
    import torch
    cu = torch.as_tensor(cu_seqlens, dtype=torch.int32)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": int(max_seqlen), "max_length_k": int(max_seqlen)}


def varlen_reference_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                               scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """``flash_attn_varlen_func`` semantics in PyTorch: the B·L tokens cut at ``cu_seq_lens_q`` and
    causal attention inside each piece. Same signature and output layout ([B, L, heads, dim]) as
    transformers' attention functions; refuses without ``cu_seq_lens_q`` (it would attend across
    segments)."""
    import torch
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        raise ValueError("varlen attention needs cu_seq_lens_q (collate_packs(attn_implementation=...))")
    B, H, L, D = query.shape
    groups = H // key.shape[1]
    q = query.transpose(1, 2).reshape(B * L, H, D)
    k = key.repeat_interleave(groups, dim=1).transpose(1, 2).reshape(B * L, H, D)
    v = value.repeat_interleave(groups, dim=1).transpose(1, 2).reshape(B * L, H, D)
    out = torch.empty_like(q)
    bounds = cu.tolist()
    if bounds[-1] != B * L:
        raise ValueError(f"cu_seq_lens_q ends at {bounds[-1]}, the batch has {B * L} tokens")
    for a, b in zip(bounds[:-1], bounds[1:]):
        seg = torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=True,
            dropout_p=dropout if module.training else 0.0, scale=scaling)
        out[a:b] = seg.transpose(0, 1)
    return out.reshape(B, L, H, D), None


def register_varlen_reference() -> str:
    """Register ``varlen_reference_attention`` (and its mask rule: no mask, as flash attention) with
    transformers under ``VARLEN_REFERENCE``; returns that name for ``set_attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask
    AttentionInterface.register(VARLEN_REFERENCE, varlen_reference_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_REFERENCE, flash_attention_mask)
    return VARLEN_REFERENCE
