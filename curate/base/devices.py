"""Accelerator discovery shared by model stages (curate) and the trainer-side loader (pack).

Ascend NPUs come through the optional ``torch_npu`` extra, which registers the ``npu`` device type
with torch when imported. One answer for every caller, so a stage and the loader never disagree.
"""
from __future__ import annotations

import importlib


def npu_available() -> bool:
    """True when torch_npu imports and reports a device (Ascend)."""
    try:
        importlib.import_module("torch_npu")
    except Exception:  # noqa: BLE001 — absent or broken CANN install: no NPU
        return False
    import torch
    npu = getattr(torch, "npu", None)
    try:
        return bool(npu is not None and npu.is_available())
    except Exception:  # noqa: BLE001 — a broken driver reports no device
        return False
