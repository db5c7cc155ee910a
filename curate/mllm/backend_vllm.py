"""The vLLM engine: offline ``LLM.generate`` with every request of a batch in one call.

Why these choices (see the issue's anchors): NeMo Curator sends chunks of 16 and loses the chunk
on one exception, Data-Juicer sends one sample per call, and Ray Data LLM users report hangs when
vLLM runs out of GPU memory. Here:

* one engine per GPU, created in the stage's actor (``load``), with **prefix caching** on: the
  prompt is system + image + metric text, so the metric prompts of one image share the image
  prefix and the four metrics cost about one image encoding (requests are sent image-major);
* all requests of a batch go to one ``generate`` call (images as ``multi_modal_data``);
* a request vLLM refuses as invalid (``ValueError`` at input processing) is isolated by
  bisection and reported as that request's error; any other engine exception, or no answer
  within ``engine_timeout_s``, raises ``EngineFailure`` so the run fails fast instead of hanging;
* scores: greedy, at most 3 new tokens, ``allowed_token_ids`` = digits + stop tokens, so "100"
  cannot be truncated; numbers above 100 are caught by the parser (``out_of_range``).

vLLM is an optional extra (``pip install -e ".[mllm]"``) and cannot run on the CPU-only machine
this was written on: ``request_dicts``, ``sampling_kwargs``, ``engine_kwargs`` and the isolation
logic are tested; the engine call itself is not.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Callable, Sequence

from curate.mllm.backend_base import DecodeSpec, EngineFailure, Generation, GenerationBackend, GenerationRequest
from curate.mllm.parsing import DIGITS

FAMILY_OF_MODEL_TYPE = {"qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_vl", "llava": "llava"}


def isolate_failures(items: Sequence[Any], call: Callable[[Sequence[Any]], list[Any]],
                     on_bad: Callable[[Any, ValueError], Any]) -> list[Any]:
    """``call(items)``; when it raises ValueError (a bad input), bisect until the bad items are
    alone and answer them with ``on_bad``. Costs O(bad * log n) extra calls; good items are
    answered by ``call`` exactly as they would be in one call."""
    try:
        return list(call(items))
    except ValueError as exc:
        if len(items) == 1:
            return [on_bad(items[0], exc)]
        mid = len(items) // 2
        return isolate_failures(items[:mid], call, on_bad) + isolate_failures(items[mid:], call, on_bad)


class VllmBackend(GenerationBackend):
    def __init__(self, model: str, family: str | None = None, dtype: str = "auto", engine_timeout_s: float = 1800.0,
                 engine_options: dict[str, Any] | None = None, seed: int = 0, **_: Any):
        self.model_id = model
        self.family = family or self._family_from_config(model)
        self.dtype = dtype
        self.engine_timeout_s = engine_timeout_s
        self.engine_options = dict(engine_options or {})
        self.seed = seed
        self.llm: Any = None
        self.allowed_ids: list[int] = []

    @staticmethod
    def _family_from_config(model: str) -> str:
        path = Path(model) / "config.json"
        if not path.is_file():
            return "qwen2_vl"
        return FAMILY_OF_MODEL_TYPE.get(json.loads(path.read_text()).get("model_type", ""), "qwen2_vl")

    def engine_kwargs(self) -> dict[str, Any]:
        """Arguments of ``vllm.LLM``; ``engine_options`` (a stage setting) override them."""
        kwargs: dict[str, Any] = {
            "model": self.model_id, "enable_prefix_caching": True, "limit_mm_per_prompt": {"image": 1},
            "seed": self.seed, "dtype": self.dtype, "trust_remote_code": False,
        }
        kwargs.update(self.engine_options)
        return kwargs

    def load(self) -> None:
        import vllm  # the `mllm` extra
        self.llm = vllm.LLM(**self.engine_kwargs())
        tokenizer = self.llm.get_tokenizer()
        digits = [tokenizer.encode(d, add_special_tokens=False) for d in DIGITS]
        if any(len(ids) != 1 for ids in digits):
            raise ValueError(f"tokenizer of {self.model_id} does not write every digit as one token")
        stops = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
        self.allowed_ids = sorted({ids[0] for ids in digits} | {i for i in stops if isinstance(i, int) and i >= 0})

    @staticmethod
    def request_dicts(requests: Sequence[GenerationRequest]) -> list[dict[str, Any]]:
        """vLLM's offline prompt format: text with one placeholder, the PIL image as multi_modal_data."""
        return [{"prompt": r.prompt, "multi_modal_data": {"image": r.image}} for r in requests]

    def sampling_kwargs(self, spec: DecodeSpec) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"temperature": 0.0, "max_tokens": spec.max_new_tokens, "seed": self.seed}
        if spec.score_digits:
            if not self.allowed_ids:
                raise RuntimeError("load() first: the digit token ids come from the engine's tokenizer")
            kwargs["allowed_token_ids"] = list(self.allowed_ids)
        return kwargs

    def generate(self, requests: Sequence[GenerationRequest], spec: DecodeSpec) -> list[Generation]:
        import vllm
        params = vllm.SamplingParams(**self.sampling_kwargs(spec))

        def call(batch: Sequence[GenerationRequest]) -> list[Generation]:
            outputs = self._call_engine(self.request_dicts(batch), params)
            return [Generation(o.outputs[0].text if o.outputs else "") for o in outputs]

        def bad(_: GenerationRequest, exc: ValueError) -> Generation:
            return Generation("", "engine:rejected_input", f"{type(exc).__name__}: {exc}"[:300])

        return isolate_failures(list(requests), call, bad)

    def _call_engine(self, prompts: list[dict[str, Any]], params: Any) -> list[Any]:
        """``LLM.generate`` with a deadline. ValueError (invalid input) passes through for isolation;
        anything else from the engine is an EngineFailure."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-generate")
        future = pool.submit(self.llm.generate, prompts, params, use_tqdm=False)
        try:
            return future.result(timeout=self.engine_timeout_s)
        except FutureTimeout:
            raise EngineFailure(f"vLLM gave no answer within {self.engine_timeout_s:.0f}s "
                                f"({len(prompts)} requests): engine hung or died") from None
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 — any engine error (EngineDeadError, CUDA OOM) fails the run
            raise EngineFailure(f"vLLM engine failed: {type(exc).__name__}: {exc}") from exc
        finally:
            pool.shutdown(wait=False)

    def close(self) -> None:
        self.llm = None
