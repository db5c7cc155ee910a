"""The engine a stage's ``backend`` setting names: the one place that knows all three.

Why apart from backend_base: every engine module imports the base protocol; the factory imports every
engine. Kept in one module they would import each other.
"""
from __future__ import annotations

from typing import Any

from curate.mllm.backend_base import GenerationBackend


def build_backend(backend: str, model: str | None, **options: Any) -> GenerationBackend:
    """The engine named by a stage's ``backend`` setting (imports stay lazy)."""
    if backend == "transformers":
        from curate.mllm.backend_hf import TransformersBackend
        return TransformersBackend(model or "", **options)
    if backend == "vllm":
        from curate.mllm.backend_vllm import VllmBackend
        return VllmBackend(model or "", **options)
    if backend == "scripted":
        from curate.mllm.backend_scripted import ScriptedBackend
        return ScriptedBackend(model or "scripted", **options)
    raise ValueError(f"backend: expected transformers, vllm or scripted, got {backend!r}")
