"""The transformers engine: batched greedy ``generate`` for Qwen2-VL-style and LLaVA-style models.

Everything comes from the local model directory (``local_files_only``): the model class from
``config.json``'s ``model_type``, the tokenizer, and the PIL image processor built from
``preprocessor_config.json`` (the torchvision-based processors are avoided: torchvision is not a
dependency). The prompt's single image placeholder is expanded here to the number of vision
tokens the image processor reports, which is what the model's forward checks.

Per-request isolation: each image is preprocessed alone, so an image the vision tower refuses
(Qwen2-VL: aspect ratio over 200) becomes that request's ``error``; the model then runs on the
valid requests only, in sub-batches of ``batch_size`` sorted by prompt length (less padding).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from curate.mllm.backend_base import DecodeSpec, Generation, GenerationBackend, GenerationRequest
from curate.mllm.parsing import DIGITS, allowed_next
from curate.mllm.prompts import IMAGE_PLACEHOLDER

# model_type in config.json -> (transformers model class, PIL image processor class, family)
MODEL_TYPES: dict[str, tuple[str, str, str]] = {
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLImageProcessorPil", "qwen2_vl"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2VLImageProcessorPil", "qwen2_vl"),
    "llava": ("LlavaForConditionalGeneration", "CLIPImageProcessorPil", "llava"),
}


def model_type_of(model_dir: str) -> str:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"model: {model_dir!r} has no config.json (a local model directory is required)")
    model_type = json.loads(path.read_text()).get("model_type", "")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model: model_type {model_type!r} in {path} is not one of {sorted(MODEL_TYPES)}")
    return model_type


@dataclass(frozen=True)
class ModelBundle:
    model: Any
    tokenizer: Any
    image_processor: Any
    family: str


def pil_processor_class(name: str) -> Any:
    """transformers 5 names the PIL image processors ``...Pil``; in 4.x the unsuffixed class is the
    PIL/numpy one (vLLM may pin a 4.x transformers). Neither needs torchvision."""
    import transformers
    return getattr(transformers, name, None) or getattr(transformers, name.removesuffix("Pil"))


@functools.lru_cache(maxsize=2)
def load_bundle(model_dir: str, device: str, dtype_name: str) -> ModelBundle:
    """Model, tokenizer and image processor of a local directory, loaded once per process: two
    stages of one recipe on the same model (mllm_score, then recaption) share one copy."""
    import transformers
    from transformers import AutoTokenizer
    from curate.scoring.device import resolve_dtype
    model_cls, proc_cls, family = MODEL_TYPES[model_type_of(model_dir)]
    image_processor = pil_processor_class(proc_cls).from_pretrained(model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    tokenizer.padding_side = "left"
    dtype_key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model = getattr(transformers, model_cls).from_pretrained(
        model_dir, local_files_only=True, **{dtype_key: resolve_dtype(dtype_name, device)}).to(device).eval()
    return ModelBundle(model, tokenizer, image_processor, family)


def processor_max_pixels(image_processor: Any) -> int | None:
    """Most pixels the processor keeps: Qwen2-VL's size["longest_edge"] (max_pixels), CLIP's crop."""
    size = dict(getattr(image_processor, "size", None) or {})
    if type(image_processor).__name__.startswith("Qwen2VL") and size.get("longest_edge"):
        return int(size["longest_edge"])       # a pixel count for Qwen2-VL (its max_pixels)
    crop = dict(getattr(image_processor, "crop_size", None) or {})
    if "height" in crop and "width" in crop:
        return int(crop["height"]) * int(crop["width"])
    return None


class DigitGrammar:
    """A transformers logits processor: each row may only continue an integer 0..100, then stop."""

    def __init__(self, prompt_len: int, digit_ids: dict[int, str], stop_ids: Sequence[int]):
        self.prompt_len = prompt_len
        self.digit_ids = digit_ids
        self.id_of = {d: i for i, d in digit_ids.items()}
        self.stop_ids = list(stop_ids)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch
        mask = torch.full_like(scores, float("-inf"))
        for row, generated in enumerate(input_ids[:, self.prompt_len:].tolist()):
            chars = [self.digit_ids.get(t) for t in generated]
            if any(c is None for c in chars):        # finished (stop or pad): leave the row alone
                mask[row] = 0.0
                continue
            digits, may_stop = allowed_next("".join(chars))
            allowed = [self.id_of[d] for d in digits] + (self.stop_ids if may_stop else [])
            mask[row, allowed] = 0.0
        return scores + mask


class TransformersBackend(GenerationBackend):
    def __init__(self, model: str, family: str | None = None, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 8, **_: Any):
        self.model_id = model
        self.model_dir = model
        self.requested_family = family
        self.device_pref = device
        self.dtype_name = dtype
        self.batch_size = batch_size
        self.model: Any = None

    def load(self) -> None:
        from curate.scoring.device import pick_device
        self.device = pick_device(self.device_pref)
        bundle = load_bundle(self.model_dir, self.device, self.dtype_name)
        if self.requested_family and self.requested_family != bundle.family:
            raise ValueError(f"family: {self.model_dir} is a {bundle.family} model, not {self.requested_family}")
        self.family = bundle.family
        self.model, self.tokenizer, self.image_processor = bundle.model, bundle.tokenizer, bundle.image_processor
        self.input_pixels = processor_max_pixels(self.image_processor)
        self.digit_ids = self._single_token_digits()
        self.stop_ids = sorted({i for i in (self.tokenizer.eos_token_id,
                                            self.tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                            self.tokenizer.convert_tokens_to_ids("<|endoftext|>"))
                                if isinstance(i, int) and i >= 0})

    def _single_token_digits(self) -> dict[int, str]:
        ids = {}
        for d in DIGITS:
            enc = self.tokenizer.encode(d, add_special_tokens=False)
            if len(enc) != 1:
                raise ValueError(f"tokenizer of {self.model_dir} does not write digit {d!r} as one token")
            ids[enc[0]] = d
        return ids

    # --- per-request preparation ------------------------------------------------------------------
    def prepare(self, request: GenerationRequest) -> tuple[dict[str, Any], str] | Generation:
        """Pixel tensors and the expanded prompt of one request, or the Generation saying why not."""
        try:
            vision = self.image_processor(images=[request.image], return_tensors="pt")
        except ValueError as exc:   # e.g. Qwen2-VL's smart_resize: aspect ratio over 200
            return Generation("", "image:unsupported_by_model", f"{type(exc).__name__}: {exc}"[:300])
        placeholder = IMAGE_PLACEHOLDER[self.family]
        if request.prompt.count(placeholder) != 1:
            raise ValueError(f"prompt must contain exactly one {placeholder!r}")
        return dict(vision), request.prompt.replace(placeholder, self._expanded(vision))

    def _expanded(self, vision: Any) -> str:
        if self.family == "qwen2_vl":
            n = int(vision["image_grid_thw"][0].prod()) // (self.image_processor.merge_size ** 2)
            return "<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>"
        cfg = self.model.config
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        extra = 1 if getattr(cfg, "vision_feature_select_strategy", "default") == "full" else 0
        return "<image>" * (side * side + extra)

    # --- generation --------------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest], spec: DecodeSpec) -> list[Generation]:
        out: list[Generation | None] = [None] * len(requests)
        ready: list[tuple[int, dict[str, Any], str, int]] = []
        for i, req in enumerate(requests):
            prepared = self.prepare(req)
            if isinstance(prepared, Generation):
                out[i] = prepared
                continue
            vision, prompt = prepared
            ready.append((i, vision, prompt, len(prompt)))
        ready.sort(key=lambda r: (r[3], r[0]))
        for start in range(0, len(ready), self.batch_size):
            chunk = ready[start:start + self.batch_size]
            for (i, *_), text in zip(chunk, self.generate_prepared([(v, p) for _, v, p, _ in chunk], spec)):
                out[i] = Generation(text)
        return [g if g is not None else Generation("", "engine:no_output") for g in out]

    def generate_prepared(self, items: Sequence[tuple[dict[str, Any], str]], spec: DecodeSpec) -> list[str]:
        """One padded ``model.generate`` call on prepared requests (also the benchmark's bare baseline)."""
        import torch
        enc = self.tokenizer([p for _, p in items], return_tensors="pt", padding=True, add_special_tokens=False)
        vision = {k: torch.cat([v[k] for v, _ in items]) for k in items[0][0]}
        inputs = {**enc, **vision}
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs and self.model.dtype != torch.float32:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        prompt_len = enc["input_ids"].shape[1]
        processors = None
        if spec.score_digits:
            from transformers import LogitsProcessorList
            processors = LogitsProcessorList([DigitGrammar(prompt_len, self.digit_ids, self.stop_ids)])
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=spec.max_new_tokens, do_sample=False,
                                      logits_processor=processors, pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=self.stop_ids)
        return self.tokenizer.batch_decode(ids[:, prompt_len:].cpu(), skip_special_tokens=True)

    def close(self) -> None:
        self.model = None
