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

from curate.base.records import DOCUMENT_PARAGRAPH_JOIN
from curate.documents.record import document_parts

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
    images at the start of the first user turn (chat) or of the text (plain). An interleaved document
    (a row with ``segments``, no conversation) is laid out in document order: its paragraphs with
    ``DOCUMENT_PARAGRAPH_JOIN`` between two consecutive ones, each image's block at its position,
    nothing added next to an image (what transformers' chat template makes of a content list of text
    and image items); chat: a user turn with ``caption_prompt``, then the document as the assistant
    turn (its text trained, like a caption); plain: the document, then ``<|endoftext|>``. Each image is
    ``<|vision_start|>`` + ``<|image_pad|>`` x tokens + ``<|vision_end|>`` (videos: ``<|video_pad|>``).
    """
    kind: Literal["chat", "plain"] = "chat"
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    caption_prompt: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("chat", "plain"):
            raise ValueError(f"template must be 'chat' or 'plain', got {self.kind!r}")


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


def is_document(row: Mapping[str, Any]) -> bool:
    """A row laid out as an interleaved document: it has ``segments`` and no conversation."""
    return row.get("segments") is not None and not row.get("conversations")


def _document_content(row: Mapping[str, Any], media: _Media) -> list[Piece]:
    """A document's pieces in order; its image segments must name the images in order (as
    ``build_document`` and ``remove_images`` keep them), each exactly once."""
    out: list[Piece] = []
    after_text = False
    for kind, value in document_parts(row.get("text"), row.get("segments")):
        if kind == "text":
            if after_text:
                out.append(DOCUMENT_PARAGRAPH_JOIN)
            out.append(value)
            after_text = True
        else:
            if value != media.used[IMAGE_PLACEHOLDER]:
                raise PlaceholderMismatch(f"document image segment names image {value}, expected "
                                          f"{media.used[IMAGE_PLACEHOLDER]} (segments out of order)")
            out += media.take(IMAGE_PLACEHOLDER)
            after_text = False
    return out


def _has_placeholder(text: str | None, kind: str) -> bool:
    return bool(text) and kind in text


class _Layout:
    """Pieces in order, each with whether the trainer computes the loss on it (its label)."""

    def __init__(self) -> None:
        self.pieces: list[Piece] = []
        self.trained: list[bool] = []

    def add(self, *pieces: Piece, trained: bool = False) -> None:
        self.pieces += pieces
        self.trained += [trained] * len(pieces)

    def add_content(self, pieces: Sequence[Piece], trained: bool) -> None:
        """Turn content: its text is trained when the turn is; vision tokens never are."""
        for p in pieces:
            self.add(p, trained=trained and isinstance(p, str))

    def add_front_media(self, media: _Media, has_ph: Mapping[str, bool]) -> None:
        """Images/videos of a record without placeholders, where the template puts them."""
        for kind in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
            if not has_ph[kind]:
                for n in media.queues[kind]:
                    self.add(*_vision(kind, n))
                media.used[kind] = len(media.queues[kind])


def _chat_layout(row: Mapping[str, Any], media: _Media, template: Template) -> _Layout:
    """ChatML. Labels follow Qwen2-VL's fine-tuning recipe (qwen-vl-finetune): an assistant turn is
    trained on everything after ``<|im_start|>assistant\\n`` — its content, ``<|im_end|>`` and the
    newline; system and user turns and all vision tokens are not."""
    conv = row.get("conversations") or []
    document = is_document(row)
    if conv:
        turns = [(t.get("role") or "user", t.get("content") or "") for t in conv]
    else:
        turns = [("user", None), ("assistant", row.get("text") or "")]
    has_ph = {k: any(_has_placeholder(c, k) for _, c in turns) for k in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER)}
    if document:     # a document's images stand at their positions; its text has no placeholders
        has_ph = {IMAGE_PLACEHOLDER: True, VIDEO_PLACEHOLDER: False}
    out = _Layout()
    if template.system_prompt is not None and (not turns or turns[0][0] != "system"):
        out.add((IM_START, 1), "system\n" + template.system_prompt, (IM_END, 1), "\n")
    placed_front = False
    for role, content in turns:
        out.add((IM_START, 1), role + "\n")
        if role == "user" and not placed_front:
            placed_front = True
            out.add_front_media(media, has_ph)
        if content is None:      # the synthetic user turn of a caption record
            content = template.caption_prompt
        trained = role == "assistant"
        body = _document_content(row, media) if document and role == "assistant" else _expand(content, media)
        out.add_content(body, trained)
        out.add((IM_END, 1), "\n", trained=trained)
    return out


def _plain_layout(row: Mapping[str, Any], media: _Media) -> _Layout:
    """Pre-training layout: images, then the text (trained), then ``<|endoftext|>`` (trained)."""
    conv = row.get("conversations") or []
    body = "\n".join(t.get("content") or "" for t in conv) if conv else (row.get("text") or "")
    out = _Layout()
    if is_document(row):
        out.add_front_media(media, {IMAGE_PLACEHOLDER: True, VIDEO_PLACEHOLDER: False})
        out.add_content(_document_content(row, media), trained=True)
        out.add((EOS, 1), trained=True)
        return out
    out.add_front_media(media, {k: _has_placeholder(body, k) for k in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER)})
    out.add_content(_expand(body, media), trained=True)
    out.add((EOS, 1), trained=True)
    return out


def _layout(row: Mapping[str, Any], image_token_counts: Sequence[int], video_token_counts: Sequence[int],
            template: Template) -> _Layout:
    media = _Media(image_token_counts, video_token_counts)
    out = _chat_layout(row, media, template) if template.kind == "chat" else _plain_layout(row, media)
    for kind in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
        if media.used[kind] != len(media.queues[kind]):
            raise PlaceholderMismatch(f"{media.used[kind]} {kind} placeholders for "
                                      f"{len(media.queues[kind])} {kind[1:-1]}s")
    return out


def render(row: Mapping[str, Any], image_token_counts: Sequence[int] = (),
           video_token_counts: Sequence[int] = (), template: Template = Template()) -> list[Piece]:
    """The sample as the trainer lays it out: text pieces and (special token, repeat) pieces.

    Adjacent text pieces are merged, so every text piece is exactly one stretch of text between two
    special tokens — the unit the tokenizer sees.
    """
    return [p for p, _ in render_labelled(row, image_token_counts, video_token_counts, template)]


TrainedSpans = list[tuple[int, int]] | bool   # text: trained character ranges; special token: trained


def render_labelled(row: Mapping[str, Any], image_token_counts: Sequence[int] = (),
                    video_token_counts: Sequence[int] = (), template: Template = Template()
                    ) -> list[tuple[Piece, TrainedSpans]]:
    """``render``'s pieces, each with what is trained: for a text piece the character ranges of the
    trained text (a merged piece may be partly trained, e.g. ``"assistant\\n" + answer``), for a
    special token whether it is."""
    lay = _layout(row, image_token_counts, video_token_counts, template)
    out: list[tuple[Piece, TrainedSpans]] = []
    for p, trained in zip(lay.pieces, lay.trained):
        if not isinstance(p, str):
            out.append((p, trained))
            continue
        if not p:
            continue
        if out and isinstance(out[-1][0], str):
            prev, spans = out[-1]
            assert isinstance(spans, list)
            out[-1] = (prev + p, spans + ([(len(prev), len(prev) + len(p))] if trained else []))
        else:
            out.append((p, [(0, len(p))] if trained else []))
    return out


def sample_input_ids(row: Mapping[str, Any], tokenizer: "Tokenizer", image_token_counts: Sequence[int],
                     video_token_counts: Sequence[int] | None = None, *,
                     template: Template | str = "chat") -> list[int]:
    """The input_ids a Qwen2-VL trainer builds for this record (chat template + expanded pads).

    `row` needs ``text`` and/or ``conversations`` (turns of role/content with ``<image>`` /
    ``<video>`` placeholders); `image_token_counts` has one entry per image, in order.
    """
    return sample_ids_and_labels(row, tokenizer, image_token_counts, video_token_counts, template=template)[0]


class SpecialTokenInText(ValueError):
    """Text of a record contains (or encodes to) a control token of the template: turn markers,
    end-of-text, vision markers or pads. Such text would inject chat turns or image pads without
    images, so the sample is rejected by name. Other special tokens stay legal in data — Qwen2-VL's
    grounding format writes ``<|box_start|>`` / ``<|object_ref_start|>`` in the text on purpose."""

    reason = "special_token_in_text"


CONTROL_TOKEN_PATTERN = "|".join(re.escape(t) for t in SPECIAL_TOKENS)


def control_token_in(text: str | None) -> str | None:
    """The first control-token string in `text`, or None."""
    m = re.search(CONTROL_TOKEN_PATTERN, text or "")
    return m.group(0) if m else None


def sample_ids_and_labels(row: Mapping[str, Any], tokenizer: "Tokenizer", image_token_counts: Sequence[int],
                          video_token_counts: Sequence[int] | None = None, *,
                          template: Template | str = "chat") -> tuple[list[int], list[bool]]:
    """``sample_input_ids`` and, per token, whether the loss is computed on it.

    A text token is trained when its characters overlap a trained range (the rule of transformers'
    ``return_assistant_tokens_mask``). Text never encodes to a template control token: a record
    whose text does raises ``SpecialTokenInText`` (count_tokens rejects such records first).
    """
    tpl = template if isinstance(template, Template) else Template(kind=template)
    control = tokenizer.control_ids()
    ids: list[int] = []
    trained: list[bool] = []
    for piece, spans in render_labelled(row, image_token_counts, video_token_counts or (), tpl):
        if not isinstance(piece, str):
            ids += [tokenizer.token_id(piece[0])] * piece[1]
            trained += [bool(spans)] * piece[1]
            continue
        piece_ids, offsets = tokenizer.encode_with_offsets(piece)
        bad = control.intersection(piece_ids)
        if bad:
            raise SpecialTokenInText(f"text encodes to control token id(s) {sorted(bad)}")
        assert isinstance(spans, list)
        ids += piece_ids
        trained += [any(a < e and s < b for a, b in spans) for s, e in offsets]
    return ids, trained
