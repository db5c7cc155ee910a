"""Which accelerator a model stage runs on: CUDA, then Ascend NPU (torch_npu), then CPU.

Resolved inside the worker (``setup()``), never at import: a Ray actor that was given a GPU sees
it, the driver that built the stage may not. ``torch_npu`` registers the ``npu`` device type with
torch when imported; it is optional and only tried when no CUDA device is visible.
"""
from __future__ import annotations

from typing import Any

from curate.base.devices import npu_available  # noqa: F401  (one answer for stages and the loader)

DEVICE_CHOICES = ("auto", "cuda", "npu", "cpu")


def pick_device(preference: str = "auto") -> str:
    """'cuda' / 'npu' / 'cpu' (or 'cuda:1'-style strings, passed through after a check).

    `auto` takes the best device present. Asking for a device that is not there is an error rather
    than a silent fall-back to CPU: a recipe that says ``device: cuda`` expects GPU throughput.
    """
    import torch
    pref = (preference or "auto").lower()
    kind = pref.split(":", 1)[0]
    if kind not in DEVICE_CHOICES:
        raise ValueError(f"device: expected one of {DEVICE_CHOICES} (optionally with ':index'), got {preference!r}")
    if kind == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if npu_available():
            return "npu"
        return "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda requested but torch.cuda.is_available() is False")
    if kind == "npu" and not npu_available():
        raise RuntimeError("device: npu requested but torch_npu is not importable or sees no device")
    return pref


def default_dtype(device: str) -> Any:
    """float16 on accelerators (CLIP-style models score the same to ~1e-3), float32 on CPU."""
    import torch
    return torch.float32 if device.startswith("cpu") else torch.float16


def resolve_dtype(name: str, device: str) -> Any:
    import torch
    if name == "auto":
        return default_dtype(device)
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"dtype: expected auto, float32, float16 or bfloat16, got {name!r}")
    return table[name]


def cuda_device_count() -> int:
    """GPUs visible to this process (0 without torch or CUDA)."""
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        return 0
