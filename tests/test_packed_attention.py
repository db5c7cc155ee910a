"""pack.trainer.attention and pack.trainer.loss on arbitrary segment layouts (hypothesis), against the unpacked
computation written out the slow way: every segment alone through PyTorch's own causal attention and
cross-entropy. The demo packs through a real model: tests/test_equivalence.py."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pack.trainer import attention as A
from pack.trainer.collate import collate_packs, model_inputs
from pack.trainer.loss import IGNORE_INDEX, packed_loss, packed_loss_from_hidden, shift_targets

torch = pytest.importorskip("torch")

layouts = st.lists(st.integers(1, 9), min_size=1, max_size=5)      # segment lengths of one row


def _segment_ids(rows: list[list[int]], L: int) -> torch.Tensor:
    """Per row: segment j's tokens get a batch-wide index, the rest of the row is padding (-1)."""
    out, nxt = torch.full((len(rows), L), -1, dtype=torch.long), 0
    for b, lengths in enumerate(rows):
        lo = 0
        for n in lengths:
            out[b, lo:lo + n] = nxt
            lo, nxt = lo + n, nxt + 1
    return out


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(layouts, min_size=1, max_size=3), pad=st.integers(0, 4))
def test_block_mask_lets_a_token_see_exactly_its_own_segment_up_to_itself(rows, pad):
    L = max(sum(r) for r in rows) + pad
    sid = _segment_ids(rows, L)
    allowed = A.block_causal_mask(sid, A.SDPA)
    additive = A.block_causal_mask(sid, A.EAGER)
    assert allowed.shape == additive.shape == (len(rows), 1, L, L) and allowed.dtype == torch.bool
    for b in range(len(rows)):
        for q in range(L):
            for k in range(L):
                want = bool(sid[b, q] == sid[b, k] and k <= q)
                assert bool(allowed[b, 0, q, k]) == want
                assert float(additive[b, 0, q, k]) == (0.0 if want else torch.finfo(torch.float32).min)
    assert allowed.any(dim=-1).all()          # no row is fully masked (padding attends to itself)


def _alone(q, k, v, lengths):
    """Each segment through sdpa alone, causal: [n, H, D] rows concatenated."""
    out, lo = [], 0
    for n in lengths:
        out.append(torch.nn.functional.scaled_dot_product_attention(
            q[:, :, lo:lo + n], k[:, :, lo:lo + n], v[:, :, lo:lo + n], is_causal=True)[0].transpose(0, 1))
        lo += n
    return torch.cat(out)


@settings(max_examples=40, deadline=None)
@given(lengths=layouts, pad=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_mask_and_varlen_attention_equal_each_segment_alone(lengths, pad, seed):
    gen = torch.Generator().manual_seed(seed)
    L, H, KV, D = sum(lengths) + pad, 4, 2, 8
    q = torch.randn(1, H, L, D, generator=gen)
    k, v = torch.randn(1, KV, L, D, generator=gen), torch.randn(1, KV, L, D, generator=gen)
    kk, vv = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
    want = _alone(q, kk, vv, lengths + ([pad] if pad else []))
    sid = _segment_ids([lengths], L)
    for impl in (A.SDPA, A.EAGER):
        mask = A.block_causal_mask(sid, impl)
        got = torch.nn.functional.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)[0].transpose(0, 1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    cu = torch.tensor(np.cumsum([0] + lengths + ([pad] if pad else [])), dtype=torch.int32)

    class _Module:
        training = False
    got, _ = A.varlen_reference_attention(_Module(), q, k, v, None, **A.varlen_kwargs(cu, int(cu.diff().max())))
    torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-6)


def test_varlen_attention_refuses_without_boundaries():
    x = torch.zeros(1, 2, 4, 8)
    with pytest.raises(ValueError, match="cu_seq_lens_q"):
        A.varlen_reference_attention(object(), x, x, x, None)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(layouts, min_size=1, max_size=3), pad=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_packed_loss_averages_as_unpacked_training_does(rows, pad, seed):
    """"token": one cross-entropy mean over the labelled tokens of all samples, unpacked;
    "sample": the mean over samples of each sample's own mean. Each segment's first label is ignored,
    as the shards write it."""
    gen = torch.Generator().manual_seed(seed)
    V, L = 11, max(sum(r) for r in rows) + pad
    sid = _segment_ids(rows, L)
    logits = torch.randn(len(rows), L, V, generator=gen)
    labels = torch.randint(0, V, (len(rows), L), generator=gen)
    labels[torch.rand(len(rows), L, generator=gen) < 0.3] = IGNORE_INDEX
    labels[sid < 0] = IGNORE_INDEX
    first = torch.ones_like(sid, dtype=torch.bool)
    first[:, 1:] = sid[:, 1:] != sid[:, :-1]
    labels[first] = IGNORE_INDEX
    samples = []                                   # (logits[:-1], labels[1:]) of every sample alone
    for b in range(len(rows)):
        for s in sorted(set(sid[b].tolist()) - {-1}):
            idx = torch.nonzero(sid[b] == s).flatten()
            samples.append((logits[b, idx][:-1], labels[b, idx][1:]))
    all_logits = torch.cat([lg for lg, _ in samples])
    all_labels = torch.cat([lb for _, lb in samples])
    if (all_labels == IGNORE_INDEX).all():
        assert float(packed_loss(logits, labels, sid, "token")) == 0.0
        return
    token = torch.nn.functional.cross_entropy(all_logits, all_labels, ignore_index=IGNORE_INDEX)
    per_sample = [torch.nn.functional.cross_entropy(lg, lb, ignore_index=IGNORE_INDEX)
                  for lg, lb in samples if (lb != IGNORE_INDEX).any()]
    torch.testing.assert_close(packed_loss(logits, labels, sid, "token"), token)
    torch.testing.assert_close(packed_loss(logits, labels, sid, "sample"), torch.stack(per_sample).mean())
    head = torch.nn.Linear(V, V, bias=False)          # from hidden states: logits only where labelled
    torch.nn.init.eye_(head.weight)
    with torch.no_grad():
        torch.testing.assert_close(packed_loss_from_hidden(logits, head, labels, sid, "sample"),
                                   torch.stack(per_sample).mean())
    with pytest.raises(ValueError, match="average"):
        packed_loss(logits, labels, sid, "mean")


def test_shift_targets_moves_labels_one_left():
    labels = torch.tensor([[IGNORE_INDEX, 5, 6, IGNORE_INDEX, 7]])
    assert shift_targets(labels).tolist() == [[5, 6, IGNORE_INDEX, 7, IGNORE_INDEX]]


def _pack(lengths: list[int], L: int, index: int) -> dict:
    cu = np.cumsum([0] + lengths + ([L - sum(lengths)] if sum(lengths) < L else []))
    sid = np.full(L, -1)
    for j, (a, b) in enumerate(zip(cu[:-1], cu[1:len(lengths) + 1])):
        sid[a:b] = j
    pos = np.concatenate([np.arange(b - a) for a, b in zip(cu[:-1], cu[1:])])
    return {"context_length": L, "epoch": 0, "cu_seqlens": cu.astype(np.int32), "segment_ids": sid,
            "samples": [{"key": f"s{index}-{j}"} for j in range(len(lengths))], "length": sum(lengths),
            "position_ids": np.stack([pos] * 3), "input_ids": np.arange(L), "labels": np.arange(L),
            "mm_token_type_ids": np.zeros(L, dtype=np.int64), "images": [], "pack_key": f"p{index}", "index": index}


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(layouts, min_size=1, max_size=3))
def test_collate_packs_gives_each_implementation_its_attention_inputs(rows):
    L = max(sum(r) for r in rows) + 2
    packs = [_pack(r, L, i) for i, r in enumerate(rows)]
    plain = collate_packs(packs)
    for impl in (A.SDPA, A.EAGER):
        batch = collate_packs(packs, attn_implementation=impl)
        assert torch.equal(batch["attention_mask"], A.block_causal_mask(plain["segment_ids"], impl))
        assert torch.equal(batch["padding_mask"], plain["attention_mask"])
        assert set(model_inputs(batch)) == {"input_ids", "attention_mask", "position_ids", "mm_token_type_ids"}
    for impl in (*A.FLASH, A.VARLEN_REFERENCE):
        batch = collate_packs(packs, attn_implementation=impl)
        assert batch["attention_mask"] is None
        assert torch.equal(batch["cu_seq_lens_q"], plain["cu_seqlens"]) and batch["cu_seq_lens_q"].dtype == torch.int32
        assert batch["max_length_q"] == batch["max_length_k"] == plain["max_seqlen"]
        assert "attention_mask" not in model_inputs(batch) and "cu_seq_lens_k" in model_inputs(batch)
    with pytest.raises(ValueError, match="attn_implementation"):
        collate_packs(packs, attn_implementation="flex")
