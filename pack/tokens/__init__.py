"""Sequence lengths from metadata: image/video tokens from sizes, text tokens from a real tokenizer.

Why: packing needs the exact length of every sample *as the trainer builds it*, for millions of
samples, without decoding a single image. One job per module:

* ``vision`` — Qwen2-VL's image/video token arithmetic (``smart_resize``, ``image_tokens``,
  ``video_tokens``).
* ``tokenizer`` — loading a local tokenizer (``load_tokenizer``, ``Tokenizer``).
* ``text_counter`` — exact, fast text counts for Arrow columns (``TextCounter``).
* ``template`` — the chat/plain layout of a record and its ids (``Template``, ``render``,
  ``sample_input_ids``).
* ``batch`` — counting whole batches without building ids (``count_rows``).

This package re-exports the public names, so ``from pack import tokens as T; T.image_tokens(...)``
is the one way in.
"""
from __future__ import annotations

from pack.tokens.batch import RowCounts, count_rows
from pack.tokens.template import (CONTROL_TOKEN_PATTERN, DEFAULT_SYSTEM_PROMPT, EOS, IM_END, IM_START, IMAGE_PAD, IMAGE_PLACEHOLDER,
                                  QWEN2_VL_CHAT_TEMPLATE, SPECIAL_TOKENS, VIDEO_PAD, VIDEO_PLACEHOLDER,
                                  VISION_END, VISION_START, Piece, PlaceholderMismatch, SpecialTokenInText,
                                  Template, control_token_in, render, render_labelled, sample_ids_and_labels,
                                  sample_input_ids)
from pack.tokens.text_counter import TextCounter
from pack.tokens.tokenizer import Tokenizer, load_tokenizer, shipped_tokenizer_dir
from pack.tokens.vision import (IMAGE_FACTOR, MAX_ASPECT_RATIO, MAX_PIXELS, MERGE_SIZE, MIN_PIXELS, PATCH_SIZE,
                                TEMPORAL_PATCH_SIZE, VIDEO_MAX_FRAMES, VIDEO_MAX_PIXELS, VIDEO_MIN_FRAMES,
                                PIXEL_BUDGETS, VIDEO_MIN_PIXELS, VIDEO_SAMPLE_FPS, VIDEO_TOTAL_PIXELS,
                                VideoSettings, fixed_image_tokens, frame_max_pixels, image_grid, image_tokens, smart_resize, video_frames,
                                video_grid, video_tokens)

__all__ = [
    "CONTROL_TOKEN_PATTERN", "DEFAULT_SYSTEM_PROMPT", "EOS", "IM_END", "IM_START", "IMAGE_FACTOR", "IMAGE_PAD", "IMAGE_PLACEHOLDER",
    "MAX_ASPECT_RATIO", "MAX_PIXELS", "MERGE_SIZE", "MIN_PIXELS", "PATCH_SIZE", "PIXEL_BUDGETS", "QWEN2_VL_CHAT_TEMPLATE",
    "SPECIAL_TOKENS", "TEMPORAL_PATCH_SIZE", "VIDEO_MAX_FRAMES", "VIDEO_MAX_PIXELS", "VIDEO_MIN_FRAMES",
    "VIDEO_MIN_PIXELS", "VIDEO_PAD", "VIDEO_PLACEHOLDER", "VIDEO_SAMPLE_FPS", "VIDEO_TOTAL_PIXELS",
    "VISION_END", "VISION_START", "Piece", "PlaceholderMismatch", "RowCounts", "SpecialTokenInText", "Template",
    "TextCounter", "Tokenizer", "VideoSettings", "control_token_in", "count_rows", "fixed_image_tokens", "frame_max_pixels", "image_grid", "image_tokens",
    "load_tokenizer", "render", "render_labelled", "sample_ids_and_labels", "sample_input_ids",
    "shipped_tokenizer_dir", "smart_resize", "video_frames", "video_grid", "video_tokens",
]
