"""The generation-engine contract both stages use, and the factory that builds an engine by name.

An engine turns many (image, prompt) requests into texts in as few engine calls as it can: the
stage hands it every request of a batch at once (all metrics of all samples), and the engine
batches them its own way (transformers: padded sub-batches; vLLM: one ``generate`` call, its
scheduler does the rest). A request the engine refuses *because of that sample* (an image the
vision tower cannot take) comes back as a ``Generation`` with ``error`` set — the stage turns it
into a quarantined row — while an engine that breaks (dead process, out of memory) raises, so the
run fails fast instead of quarantining every sample after it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class GenerationRequest:
    image: Any        # decoded RGB PIL image
    prompt: str       # the full chat-rendered prompt with one image placeholder (see prompts.render_chat)


@dataclass(frozen=True)
class Generation:
    text: str
    error: str | None = None    # a reason the engine refused this one request; text is then ""
    detail: str | None = None


@dataclass(frozen=True)
class DecodeSpec:
    """How to decode: greedy always (scores must be reproducible)."""
    max_new_tokens: int
    score_digits: bool = False  # constrain the output to an integer 0..100 (parsing.allowed_next)


class GenerationBackend(ABC):
    """An engine loaded once per worker. ``family`` decides the image placeholder in prompts."""

    family: str = "qwen2_vl"
    model_id: str = ""          # what provenance records (the model path or name)
    input_pixels: int | None = None   # most pixels the engine keeps of an image (None: unknown)

    @abstractmethod
    def load(self) -> None:
        """Load the model (inside the worker)."""

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest], spec: DecodeSpec) -> list[Generation]:
        """One Generation per request, in order."""

    def close(self) -> None:
        """Release the engine (tests and benchmarks)."""


class EngineFailure(RuntimeError):
    """The engine itself broke (died, hung, ran out of memory): fail the run, do not quarantine."""
