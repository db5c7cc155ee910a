"""Token counting from manifest columns, and header probing beside full decoding, one table.

* 1M caption records (one image each, native-resolution sizes; captions drawn from a Zipf law over
  ~41k English words of the Qwen vocabulary, lognormal length, median ~22 words) go through the
  ``count_tokens`` stage's batch step exactly as the pipeline runs it (Qwen2-VL image tokens from
  width/height + chat template + text through the local Qwen tokenizer). Rates are per core: the
  process is pinned to one CPU and CPU seconds are reported next to wall seconds (other work on the
  machine slows wall time, not CPU time). Cold start included: the piece cache starts empty.
* The same counts through the tokenizer alone (HF ``encode_batch`` on fully rendered samples) on a
  subsample, for reference; a spot check asserts both agree with ``sample_input_ids``.
* Width/height from the image header (``curate.media.images.probe``) against a full decode
  (``curate.media.images.decode``) and against the trainer's way (decode + Qwen2-VL image processor), on
  real photographs from scikit-image saved as JPEG/PNG at web sizes.
"""
from __future__ import annotations

import io
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import records as R
from curate.media.images import decode, probe
from distributions import native_resolution_sizes
from pack import tokens as T
from pack.tokens.stage import CountTokensStage
from run import format_table, quick

N = 100_000 if quick() else 1_000_000
HF_SUBSAMPLE = 2_000 if quick() else 5_000


def caption_manifest(n: int, seed: int = 0) -> pa.Table:
    """Caption records as ingest writes them: text + one image reference with width/height."""
    tok = T.load_tokenizer()
    vocab = tok.backend.get_vocab()
    words = [w[1:] for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])
             if w.startswith("\u0120") and len(w) > 2 and w[1:].isascii() and w[1:].isalpha()]
    rng = np.random.default_rng(seed)
    n_words = np.clip(np.rint(rng.lognormal(np.log(22), 0.6, n)), 3, 220).astype(np.int64)
    ranks = np.minimum(rng.zipf(1.15, int(n_words.sum())) - 1, len(words) - 1)
    flat = pa.array(np.asarray(words, dtype=object)[ranks].tolist(), type=pa.large_string())
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(n_words, out=offsets[1:])
    sentences = pc.binary_join(pa.LargeListArray.from_arrays(pa.array(offsets), flat),
                               pa.scalar(" ", pa.large_string()))
    text = pc.binary_join_element_wise(pc.utf8_capitalize(sentences), pa.scalar(".", pa.large_string()),
                                       pa.scalar("", pa.large_string()))
    w, h = native_resolution_sizes(n, seed)
    img = pa.StructArray.from_arrays(
        [pa.array(np.full(n, "file:///images.tar", dtype=object)), pa.array(np.full(n, "x.jpg", dtype=object)),
         pa.array(np.arange(n, dtype=np.int64) * 512), pa.array(np.full(n, 100_000, dtype=np.int64)),
         pa.array(w.astype(np.int32)), pa.array(h.astype(np.int32)), pa.array(np.full(n, "JPEG", dtype=object))],
        fields=list(R.IMAGE_REF))
    images = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), img)
    return pa.table({
        "key": pa.array([f"bench/{i}" for i in range(n)]),
        "text": text.cast(pa.string()),
        "images": images,
        "videos": pa.nulls(n, pa.list_(R.VIDEO_REF)),
        "conversations": pa.nulls(n, pa.list_(R.TURN)),
        R.ORDINAL: pa.array(np.arange(n, dtype=np.int64)),
        R.STATUS: pa.array(np.full(n, R.KEPT, dtype=object), type=pa.string()),
        R.REASON: pa.nulls(n, pa.string()),
        R.DETAIL: pa.nulls(n, pa.string()),
    })


def bench_counting(rows: list[list[object]]) -> float:
    table = caption_manifest(N)
    stage = CountTokensStage()
    stage.setup()
    bs = stage.resources.batch_size
    c0, w0 = time.process_time(), time.perf_counter()
    kept = 0
    for i in range(0, N, bs):
        kept += stage.process_batch(table.slice(i, bs)).kept.num_rows
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    assert kept == N
    rate = N / cpu
    rows.append(["count_tokens stage (image + text + template)", f"{N:,}", f"{cpu:.2f}", f"{wall:.2f}",
                 f"{rate:,.0f}", "target >= 200,000 samples/s per core"])

    # components on their own
    w = np.asarray(pc.struct_field(pc.list_flatten(table.column("images")), "width").to_numpy(zero_copy_only=False))
    h = np.asarray(pc.struct_field(pc.list_flatten(table.column("images")), "height").to_numpy(zero_copy_only=False))
    c0 = time.process_time()
    T.image_tokens(w, h)
    cpu_img = time.process_time() - c0
    rows.append(["image tokens only (smart_resize, vectorised)", f"{N:,}", f"{cpu_img:.3f}", "",
                 f"{N / cpu_img:,.0f}", ""])
    tok = T.load_tokenizer()
    c0 = time.process_time()
    tok.count(table.column("text"))
    cpu_txt = time.process_time() - c0
    rows.append(["caption text only (TextCounter, cold cache)", f"{N:,}", f"{cpu_txt:.2f}", "",
                 f"{N / cpu_txt:,.0f}", "exact: pieces cut at safe spaces"])

    # reference: the tokenizer on fully rendered samples
    sub = table.slice(0, HF_SUBSAMPLE)
    counts = [int(x) for x in T.image_tokens(w[:HF_SUBSAMPLE], h[:HF_SUBSAMPLE])]
    rendered = []
    for text, n_img in zip(sub.column("text").to_pylist(), counts):
        pieces = T.render({"text": text}, [n_img], [], T.Template())
        rendered.append("".join(p if isinstance(p, str) else p[0] * p[1] for p in pieces))
    one_pad = [r.replace(T.IMAGE_PAD * n, T.IMAGE_PAD) for r, n in zip(rendered, counts)]
    c0 = time.process_time()
    tok.backend.encode_batch(one_pad, add_special_tokens=False)
    cpu_one = time.process_time() - c0
    rows.append(["HF encode_batch, rendered, one pad per image (reference)", f"{HF_SUBSAMPLE:,}", f"{cpu_one:.2f}",
                 "", f"{HF_SUBSAMPLE / cpu_one:,.0f}", f"ours {rate / (HF_SUBSAMPLE / cpu_one):.0f}x faster"])
    c0 = time.process_time()
    encs = tok.backend.encode_batch(rendered, add_special_tokens=False)
    cpu_hf = time.process_time() - c0
    rows.append(["HF encode_batch, pads expanded (as the processor does)", f"{HF_SUBSAMPLE:,}", f"{cpu_hf:.2f}", "",
                 f"{HF_SUBSAMPLE / cpu_hf:,.0f}", f"ours {rate / (HF_SUBSAMPLE / cpu_hf):.0f}x faster"])
    # spot check: the stage's counts equal the real tokenization of the rendered sample
    got = stage.process_batch(sub).kept.column("num_tokens").to_pylist()
    assert got == [len(e.ids) for e in encs], "count_tokens disagrees with the tokenizer"
    return rate


def web_images() -> list[tuple[str, bytes]]:
    import skimage.data as data
    from PIL import Image
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "camera", "page"):
        im = Image.fromarray(getattr(data, name)()).convert("RGB")
        for side in (640, 1280, 2048):
            scale = side / max(im.size)
            resized = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
            for fmt in ("JPEG", "PNG") if side == 1280 else ("JPEG",):
                buf = io.BytesIO()
                resized.save(buf, format=fmt, quality=90)
                out.append((f"{name}-{side}.{fmt.lower()}", buf.getvalue()))
    return out


def bench_headers(rows: list[list[object]]) -> float:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    images = web_images()
    reps = 3 if quick() else 10

    def per_image(fn) -> float:
        c0 = time.process_time()
        for _ in range(reps):
            for _, data in images:
                fn(data)
        return (time.process_time() - c0) / (reps * len(images))

    t_probe = per_image(probe)
    t_decode = per_image(lambda d: decode(d))
    proc = Qwen2VLImageProcessorPil()
    reps_proc = 1 if quick() else 2
    c0 = time.process_time()
    for _ in range(reps_proc):
        for _, data in images:
            proc(images=[decode(data)], return_tensors="np")
    t_proc = (time.process_time() - c0) / (reps_proc * len(images))
    for _, data in images:   # same answer both ways
        hd = probe(data)
        grid = proc(images=[decode(data)], return_tensors="np")["image_grid_thw"][0]
        assert T.image_tokens(hd.width, hd.height) == int(np.prod(grid)) // 4
    ratio = t_decode / t_probe
    rows.append([f"header probe (width/height), {len(images)} real JPEG/PNG 640-2048px", f"{len(images)}",
                 f"{t_probe * 1e6:.0f} us/img", "", f"{1 / t_probe:,.0f}", f"{ratio:.0f}x faster than decode (target >= 20x)"])
    rows.append(["full decode to RGB (curate.media.images.decode)", f"{len(images)}", f"{t_decode * 1e3:.2f} ms/img", "",
                 f"{1 / t_decode:,.0f}", ""])
    rows.append(["decode + Qwen2-VL image processor (trainer path)", f"{len(images)}", f"{t_proc * 1e3:.2f} ms/img",
                 "", f"{1 / t_proc:,.0f}", f"header path {t_proc / t_probe:.0f}x faster"])
    return ratio


def main() -> None:
    rows: list[list[object]] = []
    rate = bench_counting(rows)
    ratio = bench_headers(rows)
    print(format_table(["what", "n", "CPU s", "wall s", "per second (one core)", "note"], rows))
    print()
    print(f"targets: counts >= 200,000 samples/s per core: {rate:,.0f} {'MET' if rate >= 200_000 else 'MISSED'}; "
          f"header >= 20x decode: {ratio:.0f}x {'MET' if ratio >= 20 else 'MISSED'}")


if __name__ == "__main__":
    main()
