"""The vLLM engine up to the engine boundary (vLLM does not install on this CPU-only machine).

What is proven here: the requests vLLM would get (prompt with one image placeholder, the PIL image
as multi_modal_data, one request per metric, image-major), the sampling parameters (greedy, 3
tokens, digits + stop only), the engine arguments (prefix caching, one image per prompt, the
user's options on top), the bisection that isolates a request vLLM refuses, the deadline that
turns a hung engine into a failure, and the actor resources (one engine per GPU). The engine call
itself runs only where vllm is installed (the last test, skipped here with the reason).
"""
from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from curate.mllm import prompts as P
from curate.mllm.backend_base import DecodeSpec, EngineFailure, GenerationRequest
from curate.mllm.backend_vllm import VllmBackend, isolate_failures
from curate.base import build


def test_requests_and_sampling_parameters_up_to_the_engine_boundary():
    engine = VllmBackend("/models/mlm-filter-qwen", engine_options={"gpu_memory_utilization": 0.8})
    image = Image.new("RGB", (64, 48))
    reqs = [GenerationRequest(image, P.render_chat(P.metric_instruction(m, "a dog"), engine.family, " "))
            for m in ("itm", "su")]
    dicts = engine.request_dicts(reqs)
    assert [d["multi_modal_data"]["image"] for d in dicts] == [image, image]
    assert all(d["prompt"].count("<|image_pad|>") == 1 and d["prompt"].endswith("assistant\n ") for d in dicts)
    with pytest.raises(RuntimeError, match="load"):
        engine.sampling_kwargs(DecodeSpec(3, score_digits=True))
    engine.allowed_ids = [15, 16, 151645]
    assert engine.sampling_kwargs(DecodeSpec(3, score_digits=True)) == {
        "temperature": 0.0, "max_tokens": 3, "seed": 0, "allowed_token_ids": [15, 16, 151645]}
    assert "allowed_token_ids" not in engine.sampling_kwargs(DecodeSpec(64))
    kwargs = engine.engine_kwargs()
    assert kwargs["enable_prefix_caching"] is True and kwargs["limit_mm_per_prompt"] == {"image": 1}
    assert kwargs["gpu_memory_utilization"] == 0.8 and kwargs["model"] == "/models/mlm-filter-qwen"


@given(st.integers(1, 40), st.sets(st.integers(0, 39), max_size=6))
def test_isolation_bisects_to_exactly_the_refused_requests_code_path(n, bad):
    """`call` stands for one LLM.generate: it refuses the whole call if any input is invalid."""
    bad = {b for b in bad if b < n}
    calls = []

    def call(items):
        calls.append(len(items))
        if bad & set(items):
            raise ValueError(f"invalid inputs {sorted(bad & set(items))}")
        return [f"ok{i}" for i in items]

    out = isolate_failures(list(range(n)), call, lambda item, exc: f"bad{item}")
    assert out == [f"bad{i}" if i in bad else f"ok{i}" for i in range(n)]
    assert len(calls) <= 1 + 2 * max(1, len(bad)) * max(1, n.bit_length())


def test_a_hung_engine_fails_fast_instead_of_hanging_code_path():
    engine = VllmBackend("/models/x", engine_timeout_s=0.2)
    release = threading.Event()

    class HungLLM:                      # stands for an engine whose worker died without answering
        def generate(self, prompts, params, use_tqdm=False):
            release.wait(5)
            return []

    engine.llm = HungLLM()
    with pytest.raises(EngineFailure, match="no answer within"):
        engine._call_engine([{"prompt": "p"}], params=None)
    release.set()


def test_an_engine_error_fails_the_run_code_path():
    engine = VllmBackend("/models/x", engine_timeout_s=5)

    class DeadLLM:
        def generate(self, prompts, params, use_tqdm=False):
            raise RuntimeError("EngineCore died")

    engine.llm = DeadLLM()
    with pytest.raises(EngineFailure, match="EngineCore died"):
        engine._call_engine([{"prompt": "p"}], params=None)


def test_one_engine_per_gpu_in_an_actor():
    stage = build("mllm_score", {"backend": "vllm", "model": "/models/x", "gpus_per_actor": 1, "actors": 4})
    assert (stage.resources.kind, stage.resources.gpus, stage.resources.concurrency) == ("actor", 1, 4)
    default = build("mllm_score", {"backend": "vllm", "model": "/models/x"})
    assert default.resources.gpus == 1.0 and default.resources.kind == "actor"


def test_real_vllm_engine_scores_where_installed():
    pytest.importorskip("vllm", reason="vllm is the `mllm` extra and needs a GPU; not installed here")
    import torch
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    import os
    model = os.environ.get("MMCURATE_VLLM_TEST_MODEL")
    if not model:
        pytest.skip("set MMCURATE_VLLM_TEST_MODEL to a local Qwen2-VL directory")
    engine = VllmBackend(model, engine_options={"max_model_len": 4096, "gpu_memory_utilization": 0.5})
    engine.load()
    reqs = [GenerationRequest(Image.new("RGB", (224, 224), (200, 30, 30)),
                              P.render_chat(P.metric_instruction("itm", "a red square"), engine.family, " "))]
    from curate.mllm.parsing import parse_score
    assert parse_score(engine.generate(reqs, DecodeSpec(3, score_digits=True))[0].text).value is not None
