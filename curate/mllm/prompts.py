"""MLM-Filter's scoring prompts, reproduced verbatim and versioned, and their chat rendering.

Source: ``mlm_filter_scoring_datacomp_batch_inference_v2.py`` in Victorwz/MLM_Filter (the script
Open-Qwen2VL's filter scores come from). Per metric, the user turn is::

    <image>\\n + "Text Caption: {caption}\\n\\n{criteria} A higher score indicates higher level of
    {aspect}. Ensure that ... avoiding any potential bias."

where ``aspect`` is the metric's long name with underscores replaced by spaces, wrapped in the
``qwen_instruct`` (ChatML) conversation with the system message "You are a helpful assistant.",
and a single space appended after the assistant header (their collator appends the space token so
the model starts with the digits). Any change to the texts below must bump ``PROMPT_VERSION``:
the version is recorded with every score so that scores of different prompts are never mixed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PROMPT_VERSION = "mlm-filter-v2/2024"   # the v2 batch-inference script's texts
SYSTEM_MESSAGE = "You are a helpful assistant."
ASSISTANT_PREFIX = " "                 # MLM-Filter appends one space token after "assistant\n"

INSTRUCTION_TEMPLATE = (
    "Text Caption: {caption}\n\n{criteria} A higher score indicates higher level of {aspect}. Ensure that your "
    "scoring is nuanced and uses the entire range from 0 to 100, reflecting the subtle differences. The score "
    "should be given as an integer, with each number between 0 and 100 considered as a potential score, "
    "avoiding the tendency to round to multiples of 5 or 10. Please first output a single line containing the "
    "value indicating the scores. In the subsequent line, please provide a comprehensive explanation of your "
    "evaluation, avoiding any potential bias.")

CRITERIA_ITM = (
    "Please evaluate if the provided text caption accurately represents the main features and objects of the "
    "image. The caption doesn't need to detail every aspect of the image, but it should capture its primary "
    "theme. Rate the overall quality of the text caption's match to the image on a scale of 1-100, considering "
    "the criteria mentioned.")

CRITERIA_ODF = (
    "Please evaluate the text caption to determine if it provides detailed descriptions of objects that align "
    "with the image. Specifically, assess if the caption sufficiently describes the color, size, position, "
    "shape, material, etc., of the objects. Afterward, rate the caption's overall accuracy in capturing object "
    "details from the image on a scale of 1-100, based on the criteria provided.")

CRITERIA_CTQ = (
    "Please evaluate the text caption based on the following criteria: Grammatical Correctness, Diversity of "
    "Vocabulary (e.g., the range and uniqueness of words used), Fluency (e.g., smoothness and natural flow of "
    "sentences), Readability, Length, and Structure. Assign an overall quality score on a scale of 1-100.")

CRITERIA_SU = (
    "Evaluate the given text caption in relation to its corresponding image. Your goal is to determine if the "
    "text caption provides additional semantic information that isn't readily apparent just from the image "
    "itself.\n\nFor example:\n\n"
    "1. If the image mentions \"a man\" but the caption elaborates he is a \"homeless man\" or a "
    "\"businessman,\" then the caption is enriching the semantic context.\n"
    "2. If the caption introduces concepts like the mathematical tangent function, which require in-depth "
    "knowledge to deduce, it is imparting external semantics.\n"
    "3. Captions revealing specific location addresses, festival details, or other nuanced data not easy to "
    "infer from the image also provide external semantic information.\n"
    "4. Directly identifying specific entities in the image such as buildings, people, bird species, animal "
    "breeds, car models, engines, etc., in the caption introduces additional insights.\n"
    "5. Should the image act as a contextual backdrop and the caption describes elements not explicitly "
    "showcased in the image, it has semantic depth.\n"
    "6. Lastly, if the caption depicts relationships between the subjects in the image, which need "
    "commonsense knowledge to understand, it should be considered semantically rich.\n\n"
    "Please assess and determine the extent of semantic enrichment the caption provides over the image. Rate "
    "the text caption's semantic depth on a scale from 1 to 100.")


@dataclass(frozen=True)
class Metric:
    short: str       # column / setting name: itm, odf, ctq, su
    task: str        # MLM-Filter's task name; its spaced form is the prompt's {aspect}
    criteria: str


METRICS: dict[str, Metric] = {
    "itm": Metric("itm", "image_text_matching", CRITERIA_ITM),
    "odf": Metric("odf", "object_detail_fulfillment", CRITERIA_ODF),
    "ctq": Metric("ctq", "caption_text_quality", CRITERIA_CTQ),
    "su": Metric("su", "semantic_understanding", CRITERIA_SU),
}
CUSTOM = "custom"

# Default recaptioning instruction (ours; versioned the same way).
RECAPTION_PROMPT = "Describe this image in one detailed sentence."
RECAPTION_PROMPT_VERSION = "mmcurate-recaption-v1"

Family = Literal["qwen2_vl", "llava"]

# The single image placeholder each model family's processor expands (vLLM expands it itself).
IMAGE_PLACEHOLDER: dict[str, str] = {
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "llava": "<image>",
}


def metric_instruction(metric: str, caption: str, custom_prompt: str | None = None) -> str:
    """The user text after the image for one metric (``custom``: ``custom_prompt`` with {caption})."""
    if metric == CUSTOM:
        if not custom_prompt:
            raise ValueError("metric 'custom' needs custom_prompt")
        return custom_prompt.replace("{caption}", caption)
    m = METRICS[metric]
    return INSTRUCTION_TEMPLATE.format(caption=caption, criteria=m.criteria, aspect=m.task.replace("_", " "))


def render_chat(instruction: str, family: str, assistant_prefix: str = "", system: str = SYSTEM_MESSAGE) -> str:
    """ChatML conversation with the image placeholder first, as MLM-Filter builds it ("<image>\\n" + text)."""
    if family not in IMAGE_PLACEHOLDER:
        raise ValueError(f"family: expected one of {sorted(IMAGE_PLACEHOLDER)}, got {family!r}")
    return (f"<|im_start|>system\n{system}<|im_end|>\n"
            f"<|im_start|>user\n{IMAGE_PLACEHOLDER[family]}\n{instruction}<|im_end|>\n"
            f"<|im_start|>assistant\n{assistant_prefix}")


def prompt_version(metric: str, custom_prompt: str | None = None) -> str:
    """Version recorded with a score: the MLM-Filter version, or a content hash of a custom prompt."""
    if metric != CUSTOM:
        return PROMPT_VERSION
    import hashlib
    return "custom-" + hashlib.sha256((custom_prompt or "").encode()).hexdigest()[:12]
