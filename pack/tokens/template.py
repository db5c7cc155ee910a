"""The layout of a sample as the trainer builds it: the chat template (or a plain pre-training
layout) as text pieces and special tokens, and the input_ids that follow from it.

``render`` lays a record out as a list of text segments and (special token, repeat) pieces;
``sample_input_ids`` turns that into ids. Tests prove the ids equal those of transformers'
processor with ``QWEN2_VL_CHAT_TEMPLATE``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

if TYPE_CHECKING:
    from pack.tokens.tokenizer import Tokenizer

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"

# Special tokens every Qwen2-VL sample uses.
IM_START, IM_END, EOS = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
SPECIAL_TOKENS = (IM_START, IM_END, EOS, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# The chat template of Qwen2-VL-*-Instruct (chat_template.json), used by tests to prove that
# `sample_input_ids` builds the same ids as transformers' processor.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


Piece = str | tuple[str, int]   # text, or (special token, repeat)


@dataclass(frozen=True)
class Template:
    """How a record becomes a token sequence.

    ``chat``: Qwen2-VL's ChatML template (``QWEN2_VL_CHAT_TEMPLATE``): a default system turn unless
    the conversation has one, then ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per turn. A caption
    record becomes a user turn (its images, then ``caption_prompt``) and an assistant turn (the
    caption). ``plain`` (pre-training): the images, then the caption, then ``<|endoftext|>``;
    conversations are joined turn by turn with newlines.

    Images go where ``<image>`` placeholders stand (in order); a record without placeholders gets its
    images at the start of the first user turn (chat) or of the text (plain). Each image is
    ``<|vision_start|>`` + ``<|image_pad|>`` x tokens + ``<|vision_end|>`` (videos: ``<|video_pad|>``).
    """
    kind: Literal["chat", "plain"] = "chat"
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    caption_prompt: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("chat", "plain"):
            raise ValueError(f"template must be 'chat' or 'plain', got {self.kind!r}")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> "Template":
        """The template a `count_tokens` stage used, from its settings (e.g.
        ``context.upstream["count_tokens"]``), so later stages build the very ids that were counted."""
        settings = settings or {}
        return cls(kind=settings.get("template", "chat"),
                   system_prompt=settings.get("system_prompt", DEFAULT_SYSTEM_PROMPT),
                   caption_prompt=settings.get("caption_prompt", "") or "")


class PlaceholderMismatch(ValueError):
    """The record's <image>/<video> placeholders do not match its images/videos."""

    reason = "placeholder_mismatch"


_PLACEHOLDER_RE = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(VIDEO_PLACEHOLDER)})")


def _vision(kind: str, n_tokens: int) -> list[Piece]:
    pad = IMAGE_PAD if kind == IMAGE_PLACEHOLDER else VIDEO_PAD
    return [(VISION_START, 1), (pad, int(n_tokens)), (VISION_END, 1)]


class _Media:
    """Hands out image/video token counts in placeholder order and checks that all are used."""

    def __init__(self, image_counts: Sequence[int], video_counts: Sequence[int]):
        self.queues = {IMAGE_PLACEHOLDER: list(image_counts), VIDEO_PLACEHOLDER: list(video_counts)}
        self.used = {IMAGE_PLACEHOLDER: 0, VIDEO_PLACEHOLDER: 0}

    def take(self, kind: str) -> list[Piece]:
        i = self.used[kind]
        if i >= len(self.queues[kind]):
            raise PlaceholderMismatch(f"more {kind} placeholders than {kind[1:-1]}s ({len(self.queues[kind])})")
        self.used[kind] = i + 1
        return _vision(kind, self.queues[kind][i])


def _expand(content: str, media: _Media) -> list[Piece]:
    out: list[Piece] = []
    for part in _PLACEHOLDER_RE.split(content):
        if part in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
            out += media.take(part)
        elif part:
            out.append(part)
    return out


def _has_placeholder(text: str | None, kind: str) -> bool:
    return bool(text) and kind in text


def render(row: Mapping[str, Any], image_token_counts: Sequence[int] = (),
           video_token_counts: Sequence[int] = (), template: Template = Template()) -> list[Piece]:
    """The sample as the trainer lays it out: text pieces and (special token, repeat) pieces.

    Adjacent text pieces are merged, so every text piece is exactly one stretch of text between two
    special tokens — the unit the tokenizer sees.
    """
    media = _Media(image_token_counts, video_token_counts)
    conv = row.get("conversations") or []
    text = row.get("text") or ""
    pieces: list[Piece] = []
    if template.kind == "chat":
        if conv:
            turns = [(t.get("role") or "user", t.get("content") or "") for t in conv]
        else:
            turns = [("user", None), ("assistant", text)]
        has_ph = {k: any(_has_placeholder(c, k) for _, c in turns) for k in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER)}
        if template.system_prompt is not None and (not turns or turns[0][0] != "system"):
            pieces += [(IM_START, 1), "system\n" + template.system_prompt, (IM_END, 1), "\n"]
        placed_front = False
        for role, content in turns:
            pieces += [(IM_START, 1), role + "\n"]
            if role == "user" and not placed_front:
                placed_front = True
                for kind in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
                    if not has_ph[kind]:
                        for n in media.queues[kind]:
                            pieces += _vision(kind, n)
                        media.used[kind] = len(media.queues[kind])
            if content is None:      # the synthetic user turn of a caption record
                content = template.caption_prompt
            pieces += _expand(content, media)
            pieces += [(IM_END, 1), "\n"]
    else:
        body = "\n".join(t.get("content") or "" for t in conv) if conv else text
        has_ph = {k: _has_placeholder(body, k) for k in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER)}
        for kind in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
            if not has_ph[kind]:
                for n in media.queues[kind]:
                    pieces += _vision(kind, n)
                media.used[kind] = len(media.queues[kind])
        pieces += _expand(body, media)
        pieces.append((EOS, 1))
    for kind in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
        if media.used[kind] != len(media.queues[kind]):
            raise PlaceholderMismatch(f"{media.used[kind]} {kind} placeholders for "
                                      f"{len(media.queues[kind])} {kind[1:-1]}s")
    return _merge_text(pieces)


def _merge_text(pieces: list[Piece]) -> list[Piece]:
    out: list[Piece] = []
    for p in pieces:
        if isinstance(p, str):
            if not p:
                continue
            if out and isinstance(out[-1], str):
                out[-1] = out[-1] + p
                continue
        out.append(p)
    return out


def sample_input_ids(row: Mapping[str, Any], tokenizer: "Tokenizer", image_token_counts: Sequence[int],
                     video_token_counts: Sequence[int] | None = None, *,
                     template: Template | str = "chat") -> list[int]:
    """The input_ids a Qwen2-VL trainer builds for this record (chat template + expanded pads).

    `row` needs ``text`` and/or ``conversations`` (turns of role/content with ``<image>`` /
    ``<video>`` placeholders); `image_token_counts` has one entry per image, in order.
    """
    tpl = template if isinstance(template, Template) else Template(kind=template)
    ids: list[int] = []
    for p in render(row, image_token_counts, video_token_counts or (), tpl):
        if isinstance(p, str):
            ids += tokenizer.encode(p)
        else:
            ids += [tokenizer.token_id(p[0])] * p[1]
    return ids
