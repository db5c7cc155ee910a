"""Token counting from metadata agrees with what the trainer's own processor and tokenizer build."""
from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

import pack
from curate.base import records as R
from curate.media.images import probe
from pack import tokens as T
from pack.tokens import batch as tokens_batch, template as tokens_template, text_counter as tokens_text_counter

# MindVL's SFT max_pixels and test-time min_pixels, plus the processor defaults.
PIXEL_SETTINGS = [(T.MIN_PIXELS, T.MAX_PIXELS)] + \
    [(mn * 28 * 28, mx * 28 * 28) for mn in (4, 16, 32, 64) for mx in (1280, 3072, 4096)]


def _ref_smart_resize():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    return smart_resize


def _processor(min_pixels: int, max_pixels: int):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)


# --- images -----------------------------------------------------------------------------------

def test_smart_resize_matches_transformers_on_random_sizes():
    ref = _ref_smart_resize()
    rng = np.random.default_rng(0)
    h = np.concatenate([rng.integers(1, 200, 1500), rng.integers(1, 8000, 2500), np.exp(rng.uniform(0, 9.5, 1000)).astype(int) + 1])
    w = np.concatenate([rng.integers(1, 200, 1500), rng.integers(1, 8000, 2500), np.exp(rng.uniform(0, 9.5, 1000)).astype(int) + 1])
    keep = np.maximum(h, w) / np.minimum(h, w) <= 200
    h, w = h[keep], w[keep]
    for mn, mx in PIXEL_SETTINGS:
        rh, rw = T.smart_resize(h, w, min_pixels=mn, max_pixels=mx)
        expected = np.array([ref(int(a), int(b), min_pixels=mn, max_pixels=mx) for a, b in zip(h, w)])
        assert np.array_equal(rh, expected[:, 0]) and np.array_equal(rw, expected[:, 1])
    # scalars give ints, on every branch (plain rounding, shrink to max_pixels, grow to min_pixels)
    for h, w in ((720, 1280), (5000, 3000), (10, 12)):
        assert T.smart_resize(h, w) == ref(h, w)
    assert T.smart_resize(np.array([[720, 5000]]), 1280)[0].shape == (1, 2)
    assert isinstance(T.smart_resize(720, 1280)[0], int)


def test_extreme_aspect_ratio_and_bad_sizes_raise_like_the_processor():
    with pytest.raises(ValueError, match="aspect ratio"):
        T.image_tokens(4000, 10)
    with pytest.raises(ValueError, match="aspect ratio"):
        T.image_tokens(np.array([100, 4000]), np.array([100, 10]))
    with pytest.raises(ValueError, match="positive"):
        T.image_tokens(0, 10)


def _real_images() -> list[tuple[str, bytes]]:
    import skimage.data as data
    out = []
    for name in ("astronaut", "camera", "coffee", "chelsea", "rocket", "hubble_deep_field", "page", "text",
                 "clock", "coins", "logo", "retina"):
        arr = getattr(data, name)()
        im = Image.fromarray(arr)
        if im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        buf = io.BytesIO()
        im.save(buf, format="PNG" if name in ("logo", "page") else "JPEG", quality=85)
        out.append((name, buf.getvalue()))
    return out


@pytest.mark.parametrize("min_pixels,max_pixels", [(T.MIN_PIXELS, T.MAX_PIXELS), (4 * 784, 1280 * 784),
                                                   (64 * 784, 4096 * 784), (16 * 784, 256 * 784)])
def test_tokens_from_headers_match_image_grid_thw_on_real_images(min_pixels, max_pixels):
    proc = _processor(min_pixels, max_pixels)
    images = _real_images()
    headers = [probe(data) for _, data in images]
    ours = T.image_tokens(np.array([h.width for h in headers]), np.array([h.height for h in headers]),
                          min_pixels=min_pixels, max_pixels=max_pixels)
    decoded = [Image.open(io.BytesIO(data)).convert("RGB") for _, data in images]
    grid = proc(images=decoded, return_tensors="np")["image_grid_thw"]
    assert np.array_equal(ours, grid.prod(axis=1) // 4)
    gh, gw = T.image_grid([h.width for h in headers], [h.height for h in headers],
                          min_pixels=min_pixels, max_pixels=max_pixels)
    assert np.array_equal(np.stack([gh, gw], axis=1), grid[:, 1:])


def test_tokens_match_processor_calls_on_random_size_images():
    rng = np.random.default_rng(7)
    proc = _processor(T.MIN_PIXELS, 256 * 784)   # a small max keeps the processor cheap
    sizes = [(int(rng.integers(8, 700)), int(rng.integers(8, 700))) for _ in range(300)]
    sizes = [(w, h) for w, h in sizes if max(w, h) / min(w, h) <= 200]
    imgs = [Image.new("RGB", (w, h), (int(w) % 255, 0, 0)) for w, h in sizes]
    grid = np.concatenate([proc(images=imgs[i:i + 50], return_tensors="np")["image_grid_thw"]
                           for i in range(0, len(imgs), 50)])
    ours = T.image_tokens(np.array([w for w, _ in sizes]), np.array([h for _, h in sizes]), max_pixels=256 * 784)
    assert np.array_equal(ours, grid.prod(axis=1) // 4)


def test_fixed_tokens_mode():
    assert T.fixed_image_tokens(3, 144) == 432
    assert T.fixed_image_tokens(np.array([0, 1, 2]), 729).tolist() == [0, 729, 1458]
    with pytest.raises(ValueError):
        T.fixed_image_tokens(1, 0)


# --- video ------------------------------------------------------------------------------------

def _video_reference(duration: float, fps: float, width: int, height: int, s: T.VideoSettings) -> int:
    """qwen-vl-utils smart_nframes + transformers' capped per-frame budget, written out scalar."""
    ref = _ref_smart_resize()
    total = max(round(duration * fps), 1)
    ff = s.temporal_patch_size
    min_frames = math.ceil(s.min_frames / ff) * ff
    max_frames = math.floor(min(s.max_frames, total) / ff) * ff
    n = total / fps * s.sample_fps
    n = min(min(max(n, min_frames), max_frames), total)
    n = math.floor(n / ff) * ff
    budget = max(min(s.max_pixels, s.total_pixels * ff // n), int(s.min_pixels * 1.05))
    rh, rw = ref(height, width, factor=28, min_pixels=s.min_pixels, max_pixels=budget)
    return (n // ff) * (rh // 28) * (rw // 28)


def test_video_tokens_follow_the_reference_and_shrink_frames_as_they_multiply():
    s = T.VideoSettings()
    rng = np.random.default_rng(1)
    dur = rng.uniform(1, 1200, 400).round(2)
    fps = rng.choice([24.0, 25.0, 29.97, 30.0, 60.0], 400)
    w = rng.integers(160, 3840, 400)
    h = rng.integers(120, 2160, 400)
    ours = T.video_tokens(dur, fps, w, h, s)
    assert ours.tolist() == [_video_reference(float(a), float(b), int(c), int(d), s) for a, b, c, d in zip(dur, fps, w, h)]
    # longer video: more frames, but fewer tokens per frame once the total budget binds
    frames = T.video_frames([10.0, 600.0], [30.0, 30.0], s)
    per_frame = T.video_tokens([10.0, 600.0], [30.0, 30.0], 1920, 1080, s) / (frames // 2)
    assert frames[1] > frames[0] and per_frame[1] < per_frame[0]
    assert isinstance(T.video_tokens(10.0, 30.0, 640, 480), int)
    with pytest.raises(ValueError, match="too short"):
        T.video_tokens(0.02, 30.0, 640, 480)


# --- text ---------------------------------------------------------------------------------------

_ALPHABET = st.sampled_from(list("ab Z9.,'-\n\t\r ") + [" ", "  ", "\u00a0", "\u3000", "\u2003", "\u2028", "\u0085",
                                                         "\u0301", "\u0338", "<", ">", "|", "é", "e\u0301", "数",
                                                         "字", "😀", "\u200b", "\x1c", "'s", "'LL", "123",
                                                         "<|im_end|>", "<|image_pad|>", "<think>", "\x00"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_ALPHABET, max_size=40).map("".join), min_size=1, max_size=30))
def test_fast_counter_equals_tokenizer_on_adversarial_text(tok, texts):
    assert tok.count(texts).tolist() == [len(tok.encode(t)) for t in texts]


_DIGITS = st.sampled_from(list("0123456789(),.-_'\"xa ") + ["\u0301", "\u0338", "\u20e3", "\u0663", "\u00b2",
                                                          "\u00bd", "\uff11", "\n", "\t", "  ", "\u00a0", "é", "数",
                                                          "<|box_start|>", "<|box_end|>", "<|object_ref_end|>",
                                                          "'s", "'d", "<think>"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_DIGITS, max_size=40).map("".join), min_size=1, max_size=30))
def test_fast_counter_cuts_next_to_digits_exactly(tok, texts):
    """Coordinates and numbers are cut next to ASCII digits (TextCounter._digits_alone): still exact."""
    assert tok.count(texts).tolist() == [len(tok.encode(t)) for t in texts]
    assert tok._counter.digits_alone


def test_fast_counter_on_sliced_arrays_nulls_and_many_rows(tok):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "  sat", "on\n", "a", "mat.", "\u00a0x", "数字", "naïve", "it's", "(ok)", "\t"]
    texts = [" ".join(rng.choice(words, rng.integers(0, 30))) for _ in range(3000)]
    texts[5] = None
    arr = pa.array(texts, type=pa.string())
    sliced = arr.slice(17, 2000)
    want = [len(tok.encode(t or "")) for t in sliced.to_pylist()]
    assert tok.count(sliced).tolist() == want
    assert tok.count(pa.chunked_array([sliced.slice(0, 700), sliced.slice(700)])).tolist() == want
    counter = T.TextCounter(tok.backend)
    counter.ROWS_PER_PASS = 128          # many passes, cache reused across them
    assert counter.count(sliced).tolist() == want


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.none(), st.lists(st.sampled_from(["<image>", "<video>", "<ima", "ge>", "<", "x",
                                                              "<imagE>", "é"]), max_size=6).map("".join)),
                max_size=12), st.integers(0, 3))
def test_placeholder_scan_matches_substring_search(texts, cut):
    arr = tokens_text_counter._to_large_string(pa.array(texts, type=pa.string())).slice(min(cut, len(texts)))
    want = [("<image>" in t) or ("<video>" in t) for t in arr.to_pylist()]
    assert tokens_batch._contains_placeholder(arr).tolist() == want


def test_counter_counts_whole_texts_for_tokenizers_it_cannot_split():
    from tokenizers import Tokenizer, models, pre_tokenizers
    backend = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    counter = T.TextCounter(backend)
    assert not counter.splittable
    assert counter.count(["a b  c", "", None]).tolist() == [3, 0, 0]


def test_load_tokenizer_without_tokenizer_json_goes_through_transformers(tmp_path, tok):
    import shutil
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(T.shipped_tokenizer_dir() / name, tmp_path / name)
    slow_dir = T.load_tokenizer(tmp_path)
    text = "Hello <|im_start|>world  \n\n é 数字 <|image_pad|> it's"
    assert slow_dir.encode(text) == tok.encode(text)
    assert slow_dir.count([text]).tolist() == [len(tok.encode(text))]


def test_load_tokenizer_from_directory_and_shipped(tmp_path, tok):
    assert tok.token_id(T.IMAGE_PAD) == 151655
    again = T.load_tokenizer(T.shipped_tokenizer_dir())
    assert again.encode("hello world") == tok.encode("hello world")
    with pytest.raises(FileNotFoundError):
        T.load_tokenizer(tmp_path / "missing")
    with pytest.raises(KeyError):
        tok.token_id("<|no_such_token|>")


# --- layout: the trainer's input_ids ---------------------------------------------------------

def _trainer_ids(hf_tok, messages, grids) -> list[int]:
    """What Qwen2VLProcessor does: render the chat template, expand each <|image_pad|> to
    grid.prod() // merge**2 copies, tokenize."""
    text = hf_tok.apply_chat_template(messages, chat_template=T.QWEN2_VL_CHAT_TEMPLATE, tokenize=False)
    parts = text.split(T.IMAGE_PAD)
    assert len(parts) == len(grids) + 1
    full = parts[0] + "".join(T.IMAGE_PAD * (int(np.prod(g)) // 4) + p for g, p in zip(grids, parts[1:]))
    return hf_tok(full, add_special_tokens=False)["input_ids"]


def _content(text: str) -> list[dict]:
    out = []
    for part in tokens_template._PLACEHOLDER_RE.split(text):
        if part == T.IMAGE_PLACEHOLDER:
            out.append({"type": "image"})
        elif part:
            out.append({"type": "text", "text": part})
    return out


CONVERSATIONS = [
    [{"role": "user", "content": "<image>What is in the picture?"}, {"role": "assistant", "content": "A cat on a mat."}],
    [{"role": "user", "content": "Compare <image> and <image>.\n"}, {"role": "assistant", "content": " Left is darker. "},
     {"role": "user", "content": "\n\nWhy?"}, {"role": "assistant", "content": "\nLighting:  more  shadow.\n"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>\n描述这张图片"},
     {"role": "assistant", "content": "一只猫。 😀"}],
]


@pytest.mark.parametrize("conv", CONVERSATIONS)
def test_sample_input_ids_equal_the_processor_path(tok, hf_tok, conv):
    proc = _processor(T.MIN_PIXELS, 256 * 784)
    n_img = sum(t["content"].count(T.IMAGE_PLACEHOLDER) for t in conv)
    imgs = [Image.new("RGB", (120 + 97 * i, 90 + 31 * i)) for i in range(n_img)]
    grids = proc(images=imgs, return_tensors="np")["image_grid_thw"] if imgs else []
    messages = [{"role": t["role"], "content": _content(t["content"])} for t in conv]
    want = _trainer_ids(hf_tok, messages, grids)
    counts = [int(T.image_tokens(im.width, im.height, max_pixels=256 * 784)) for im in imgs]
    got = T.sample_input_ids({"conversations": conv}, tok, counts)
    assert got == want
    # a caption record is a user turn with its images and an assistant turn with the caption
    cap = T.sample_input_ids({"text": "A red car.", "images": [{}] * n_img}, tok, counts)
    cap_msgs = [{"role": "user", "content": [{"type": "image"}] * n_img},
                {"role": "assistant", "content": [{"type": "text", "text": "A red car."}]}]
    assert cap == _trainer_ids(hf_tok, cap_msgs, grids)


def test_plain_template_and_placeholders(tok):
    pad, vs, ve, eos = (tok.token_id(x) for x in (T.IMAGE_PAD, T.VISION_START, T.VISION_END, T.EOS))
    ids = T.sample_input_ids({"text": "two cats"}, tok, [3, 2], template="plain")
    assert ids == [vs, pad, pad, pad, ve, vs, pad, pad, ve] + tok.encode("two cats") + [eos]
    ids = T.sample_input_ids({"text": "left <image> right"}, tok, [2], template="plain")
    assert ids == tok.encode("left ") + [vs, pad, pad, ve] + tok.encode(" right") + [eos]
    vpad = tok.token_id(T.VIDEO_PAD)
    ids = T.sample_input_ids({"text": "<video>clip"}, tok, [], [3], template="plain")
    assert ids == [vs, vpad, vpad, vpad, ve] + tok.encode("clip") + [eos]
    with pytest.raises(T.PlaceholderMismatch):
        T.sample_input_ids({"text": "<image> <image>"}, tok, [5], template="plain")
    with pytest.raises(T.PlaceholderMismatch):
        T.sample_input_ids({"conversations": [{"role": "assistant", "content": "x"}]}, tok, [5])
    with pytest.raises(ValueError):
        T.Template(kind="llama")


def _rows_for_counting() -> tuple[list[dict], list[list[int]], list[list[int]]]:
    rng = np.random.default_rng(5)
    caps = ["A dog.", "\n\nLeading newlines", "  two spaces", "", None, "emoji 😀 and 数字", "x" * 300,
            "tab\tand\u00a0nbsp", " <|box_start|>(1,2),(3,4)<|box_end|> legal special", "ends with space "]
    rows, imgs, vids = [], [], []
    for i in range(400):
        kind = i % 5
        n_img = int(rng.integers(0, 4))
        counts = [int(x) for x in rng.integers(1, 300, n_img)]
        vcounts: list[int] = []
        if kind == 0 or kind == 1:
            rows.append({"text": caps[i % len(caps)], "conversations": None})
        elif kind == 2:
            ph = " ".join(["<image>"] * n_img)
            rows.append({"text": f"interleaved {ph} text {caps[i % len(caps)] or ''}", "conversations": None})
        elif kind == 3:
            conv = [dict(c) for c in CONVERSATIONS[i % len(CONVERSATIONS)]]
            n_img = sum(t["content"].count("<image>") for t in conv)
            counts = [int(x) for x in rng.integers(1, 300, n_img)]
            rows.append({"text": None, "conversations": conv})
        else:
            vcounts = [int(rng.integers(10, 900))]
            rows.append({"text": caps[i % len(caps)], "conversations": None})
        imgs.append(counts)
        vids.append(vcounts)
    return rows, imgs, vids


@pytest.mark.parametrize("template", [T.Template("chat"), T.Template("plain"),
                                      T.Template("chat", system_prompt=None, caption_prompt="Describe.")])
def test_counted_lengths_equal_tokenized_lengths(tok, template):
    rows, imgs, vids = _rows_for_counting()
    table = pa.table({"text": [r["text"] for r in rows],
                      "conversations": pa.array([r["conversations"] for r in rows], type=pa.list_(R.TURN))})
    res = T.count_rows(table, tok, pa.array(imgs, type=pa.list_(pa.int32())),
                       pa.array(vids, type=pa.list_(pa.int32())), template)
    for i, (row, ic, vc) in enumerate(zip(rows, imgs, vids)):
        assert res.error[i] is None
        ids = T.sample_input_ids(row, tok, ic, vc, template=template)
        assert res.num_tokens[i] == len(ids), (i, row)
        assert res.text_tokens[i] == len(ids) - sum(ic) - sum(vc)


def test_count_rows_reports_placeholder_mismatch(tok):
    table = pa.table({"text": ["<image> <image>", "fine"]})
    res = T.count_rows(table, tok, pa.array([[4], [4]], type=pa.list_(pa.int32())), None, T.Template())
    assert res.error == ["placeholder_mismatch", None]
    assert res.num_tokens[1] == len(T.sample_input_ids({"text": "fine"}, tok, [4]))


def test_public_api_is_exported():
    assert pack.image_tokens(1280, 720) == T.image_tokens(1280, 720) == 1196
    assert pack.smart_resize(720, 1280) == (728, 1288)
    assert pack.load_tokenizer is T.load_tokenizer and pack.sample_input_ids is T.sample_input_ids
    assert pack.video_tokens is T.video_tokens


def test_labels_train_assistant_turns_in_chat_and_text_in_plain(tok):
    """Chat: only what follows '<|im_start|>assistant\\n' (answer, <|im_end|>, newline); plain: the text
    and <|endoftext|>; vision tokens never."""
    row = {"conversations": [{"role": "user", "content": "<image>What is it?"},
                             {"role": "assistant", "content": "A cat."}]}
    ids, trained = T.sample_ids_and_labels(row, tok, [3])
    picked = [i for i, t in zip(ids, trained) if t]
    assert picked == tok.encode("A cat.") + [tok.token_id(T.IM_END)] + tok.encode("\n")
    ids, trained = T.sample_ids_and_labels({"text": "two cats"}, tok, [2], template="plain")
    assert [i for i, t in zip(ids, trained) if t] == tok.encode("two cats") + [tok.token_id(T.EOS)]
    assert not any(t for i, t in zip(ids, trained) if i in (tok.token_id(T.IMAGE_PAD), tok.token_id(T.VISION_START)))
    cap_ids, cap_trained = T.sample_ids_and_labels({"text": "A red car."}, tok, [2])
    assert [i for i, t in zip(cap_ids, cap_trained) if t] == tok.encode("A red car.") + \
        [tok.token_id(T.IM_END)] + tok.encode("\n")
