"""What the two MLLM stages share: engine settings, actor resources, and the engine's lifecycle.

Resources follow the engines: vLLM runs one engine per GPU in an actor (``gpus_per_actor`` 1,
``actors`` = visible GPUs); transformers does the same on GPUs and one CPU actor otherwise (a CPU
model already uses every core). The engine is built in ``setup()``, inside the worker.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from curate.media import images as I
from curate.mllm.backend_base import GenerationBackend
from curate.mllm.backends import build_backend
from curate.scoring.device import DEVICE_CHOICES
from curate.base import Resources


@dataclass
class EngineSettings:
    backend: Literal["transformers", "vllm", "scripted"] = field(default="transformers", metadata={
        "doc": "transformers (batched generate, CPU/GPU/NPU), vllm (the `mllm` extra, GPU), scripted (tests)."})
    model: str | None = field(default=None, metadata={
        "doc": "Local model directory (Qwen2-VL-style or LLaVA-style). Nothing is downloaded."})
    device: str = field(default="auto", metadata={"doc": "transformers: auto, cuda, npu, cpu."})
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = field(default="auto", metadata={
        "doc": "Model precision; auto: float16 on accelerators, float32 on CPU (vllm: its own auto)."})
    batch_size: int = field(default=8, metadata={"doc": "transformers: requests per generate call "
                                                        "(MLM-Filter used 8). vllm gets a whole batch at once."})
    categories: list[str] | None = field(default=None, metadata={
        "doc": "Only samples of these categories are judged; the others pass untouched. None: all."})
    conversation_text: Literal["first_answer", "first_exchange"] = field(default="first_answer", metadata={
        "doc": "Text judged for conversation samples without a caption."})
    max_image_side: int = field(default=1344, metadata={
        "doc": "Images are downscaled to this longer side before the engine (its processor resizes anyway)."})
    max_pixels: int = field(default=I.MAX_DECODE_PIXELS, metadata={"doc": "Refuse to decode larger images."})
    decode_threads: int = field(default=4, metadata={"doc": "Threads reading and decoding images."})
    engine_options: dict[str, Any] | None = field(default=None, metadata={
        "doc": "vllm: extra vllm.LLM arguments (gpu_memory_utilization, max_model_len, tensor_parallel_size...)."})
    engine_timeout_s: float = field(default=1800.0, metadata={
        "doc": "vllm: fail the run when one generate call gives no answer within this many seconds."})
    scripted: dict[str, Any] | None = field(default=None, metadata={
        "doc": "scripted backend only: {answers: {caption: text}, default: text, refuse_sizes: [px]}."})
    gpus_per_actor: float | None = field(default=None, metadata={
        "doc": "GPUs per actor; None: 1 when CUDA is visible (one engine per GPU), else 0."})
    actors: int | None = field(default=None, metadata={"doc": "Engine actors; None: one per GPU, 1 on CPU."})
    cpu_threads: int | None = field(default=None, metadata={"doc": "torch threads of a CPU actor; None: every core it may run on."})


def validate_engine_settings(c: EngineSettings) -> None:
    if c.backend != "scripted" and not c.model:
        raise ValueError(f"model: required for backend {c.backend} (a local model directory)")
    if c.backend != "scripted" and c.scripted:
        raise ValueError("scripted: only for backend scripted")
    if c.device.split(":", 1)[0] not in DEVICE_CHOICES:
        raise ValueError(f"device: expected one of {DEVICE_CHOICES}, got {c.device!r}")
    for name in ("batch_size", "max_image_side", "max_pixels", "decode_threads"):
        if int(getattr(c, name)) < 1:
            raise ValueError(f"{name}: must be >= 1, got {getattr(c, name)}")
    if c.engine_timeout_s <= 0:
        raise ValueError(f"engine_timeout_s: must be > 0, got {c.engine_timeout_s}")
    for name in ("actors", "cpu_threads"):
        value = getattr(c, name)
        if value is not None and value < 1:
            raise ValueError(f"{name}: must be >= 1, got {value}")


def engine_resources(c: EngineSettings, batch_size: int) -> Resources:
    """One engine per GPU when CUDA is visible (vLLM always asks for a GPU), else one CPU actor."""
    from curate.scoring.device import cuda_device_count
    gpus = c.gpus_per_actor
    if gpus is None:
        wants_gpu = c.backend == "vllm" or (c.backend == "transformers" and c.device.split(":")[0] in ("auto", "cuda"))
        gpus = 1.0 if wants_gpu and (c.backend == "vllm" or cuda_device_count() > 0) else 0.0
    if c.actors is not None:
        actors = c.actors
    elif gpus > 0:
        actors = max(1, int(max(1, cuda_device_count()) // max(gpus, 1e-9)))
    else:
        actors = 1
    return Resources(cpus=1, gpus=gpus, batch_size=batch_size, kind="actor", concurrency=actors)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity: a pinned benchmark or a cgroup-limited
    worker gets fewer than os.cpu_count(); more torch threads than cores only thrash)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def start_engine(c: EngineSettings, seed: int) -> GenerationBackend:
    """Build and load the engine inside the worker."""
    if c.backend == "transformers" and c.device.split(":")[0] in ("auto", "cpu"):
        import torch
        torch.set_num_threads(c.cpu_threads or usable_cores())
    options: dict[str, Any] = {"device": c.device, "dtype": c.dtype, "batch_size": c.batch_size}
    if c.backend == "vllm":
        options.update(engine_options=c.engine_options, engine_timeout_s=c.engine_timeout_s, seed=seed)
    if c.backend == "scripted":
        options.update(c.scripted or {})
    engine = build_backend(c.backend, c.model, **options)
    engine.load()
    return engine
