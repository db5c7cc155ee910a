"""mmcurate.pack — token counting, packing, shard writing and the trainer-side loader.

Notebook use::

    import pack
    pack.image_tokens(1280, 720, max_pixels=1280 * 28 * 28)     # Qwen2-VL tokens for one image
    bins = pack.plan_packs(lengths, 4096)                        # bin index per sample
    ds = pack.PackedShards("out/demo/shards", rank=0, world_size=2)   # ids, labels, M-RoPE positions
    profile = pack.profile_from_mapping({"preset": "qwen2.5-vl", "max_pixels": 1003520})

Names are imported lazily so that `import pack` stays cheap (no torch until the loader is used).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "smart_resize": "pack.tokens",
    "image_tokens": "pack.tokens",
    "video_tokens": "pack.tokens",
    "load_tokenizer": "pack.tokens",
    "sample_input_ids": "pack.tokens",
    "first_fit_decreasing": "pack.packing",
    "plan_packs": "pack.packing",
    "PackedShards": "pack.trainer.loader",
    "ResumableLoader": "pack.trainer.loader",
    "collate_packs": "pack.trainer.collate",
    "model_inputs": "pack.trainer.collate",
    "packed_loss": "pack.trainer.loss",
    "packed_loss_from_hidden": "pack.trainer.loss",
    "ModelProfile": "pack.profile",
    "profile_from_mapping": "pack.profile",
    "validate_shards": "pack.shards.validate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pack' has no attribute {name!r}")
