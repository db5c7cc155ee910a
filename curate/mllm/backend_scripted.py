"""A deterministic engine for tests and parser edge cases: answers come from a rule, not a model.

The answer to a request is ``answers[caption]`` when the caption (the text after "Text Caption: ",
or the whole prompt) is listed, else ``default``; ``"{len}"`` in an answer is replaced by the
caption's length in characters modulo 101, so tests can make scores depend on the input. An image whose
width or height is listed in ``refuse_sizes`` is refused like an engine refuses a bad input.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from curate.mllm.backend_base import DecodeSpec, Generation, GenerationBackend, GenerationRequest


def caption_of(prompt: str) -> str:
    marker = "Text Caption: "
    if marker in prompt:
        return prompt.split(marker, 1)[1].split("\n\n", 1)[0]
    return prompt


class ScriptedBackend(GenerationBackend):
    def __init__(self, model: str = "scripted", family: str | None = None,
                 answers: Mapping[str, str] | None = None, default: str = "{len}",
                 refuse_sizes: Sequence[int] = (), **_: Any):
        self.model_id = model
        self.family = family or "qwen2_vl"
        self.answers = dict(answers or {})
        self.default = default
        self.refuse_sizes = set(refuse_sizes)
        self.calls: list[int] = []     # requests per generate call (tests check batching)

    def load(self) -> None:
        pass

    def generate(self, requests: Sequence[GenerationRequest], spec: DecodeSpec) -> list[Generation]:
        self.calls.append(len(requests))
        out = []
        for r in requests:
            if self.refuse_sizes & set(r.image.size):
                out.append(Generation("", "engine:rejected_input", f"scripted refusal of size {r.image.size}"))
                continue
            caption = caption_of(r.prompt)
            answer = self.answers.get(caption, self.default).replace("{len}", str(len(caption) % 101))
            out.append(Generation(answer))
        return out
