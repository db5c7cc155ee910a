"""A random Qwen2-VL small enough for CPU tests (built from a config with a fixed seed; the vocabulary
and special-token ids are the real tokenizer's), shared by the trainer, video and equivalence tests;
`attn_implementation`: the text and vision attention (sdpa, eager, flash_attention_2 ...)."""
from __future__ import annotations


def tiny_qwen2_vl(attn_implementation: str = "sdpa"):
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1,
                         rope_parameters={"rope_type": "default", "mrope_section": [4, 2, 2], "rope_theta": 10000.0}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_chans=3),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    model.set_attn_implementation(attn_implementation)
    return model
