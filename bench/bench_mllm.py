"""Throughput of the mllm_score stage against the bare backend's batched generate, same inputs.

    python bench/bench_mllm.py [--samples N] [--batch B] [--repeats R]

On the tiny random Qwen2-VL (``demo_data.tiny_mllm``; the cost of a forward does not depend on
the weights) and N synthetic JPEG files with captions, one metric (su, Open-Qwen2VL's), digit-
constrained greedy decoding of 3 tokens, it times:

* bare batched generate — what a user would write with transformers: images already decoded in
  memory, prompts already rendered; per batch of B one image-processor call, one tokenizer call,
  one ``model.generate`` with the same digit grammar;
* stage — ``MllmScore.process_batch`` on a table of image *references*: read and decode the files,
  preprocess each image alone (per-sample isolation), render prompts, generate in batches of B,
  parse, threshold, build the Arrow columns;
* per-sample generate — the bare path with one request per call (Data-Juicer's pattern), as the
  peer reference.

Prints wall and CPU seconds (best of R interleaved runs after a warm-up) and ratios; the target is
stage >= 0.9 of bare batched generate.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

WORDS = "red blue green cat dog house tree car road sky river bridge city night".split()


def write_inputs(tmp: Path, n: int) -> tuple[Any, list[Image.Image], list[str]]:
    """N JPEG files and a table referencing them; also the decoded images and captions."""
    import pyarrow as pa
    from curate.base import records as R
    rng = np.random.default_rng(0)
    rows, images, captions = [], [], []
    for i in range(n):
        w, h = int(rng.integers(200, 640)), int(rng.integers(200, 480))
        arr = (np.linspace(0, 255, w)[None, :, None] + rng.normal(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        path = tmp / f"img{i:04d}.jpg"
        path.write_bytes(buf.getvalue())
        caption = " ".join(rng.choice(WORDS, size=int(rng.integers(4, 30))))
        images.append(Image.open(path).convert("RGB"))
        captions.append(caption)
        rows.append({"key": f"bench/{i}", "source": "bench", "category": "caption", "text": caption,
                     "images": [{"uri": str(path), "member": None, "offset": -1, "size": -1, "width": w,
                                 "height": h, "format": "JPEG"}],
                     R.ORDINAL: i, R.STATUS: R.KEPT})
    table = R.conform(pa.Table.from_pylist(rows), R.BASE_SCHEMA)
    return table, images, captions


def bare_generate(engine: Any, images: list[Image.Image], prompts: list[str], batch: int) -> list[str]:
    """Plain transformers: one processor call, one tokenizer call, one generate per batch."""
    import torch
    from transformers import LogitsProcessorList
    from curate.mllm.backend_hf import DigitGrammar
    out: list[str] = []
    merge = engine.image_processor.merge_size ** 2
    for s in range(0, len(images), batch):
        vision = engine.image_processor(images=images[s:s + batch], return_tensors="pt")
        texts = [p.replace("<|image_pad|>", "<|image_pad|>" * (int(g.prod()) // merge))
                 for p, g in zip(prompts[s:s + batch], vision["image_grid_thw"])]
        enc = engine.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        n = enc["input_ids"].shape[1]
        grammar = LogitsProcessorList([DigitGrammar(n, engine.digit_ids, engine.stop_ids)])
        with torch.inference_mode():
            ids = engine.model.generate(**enc, **vision, max_new_tokens=3, do_sample=False, logits_processor=grammar,
                                        pad_token_id=engine.tokenizer.pad_token_id, eos_token_id=engine.stop_ids)
        out += engine.tokenizer.batch_decode(ids[:, n:], skip_special_tokens=True)
    return out


def interleaved_best(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, float]]:
    """Best (wall, cpu) seconds of each function over `repeats` interleaved rounds, after a warm-up."""
    for fn in fns.values():
        fn()
    best = {k: (float("inf"), float("inf")) for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - w, time.process_time() - c
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from run import format_table, quick
    from curate.mllm import prompts as P
    from demo_data.tiny_mllm import build_tiny_qwen2vl
    from curate.base import build
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=8 if quick() else 32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1 if quick() else 3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = str(build_tiny_qwen2vl(tmp / "tiny-qwen2vl"))
        table, images, captions = write_inputs(tmp, args.samples)
        stage = build("mllm_score", {"backend": "transformers", "model": model, "device": "cpu",
                                     "batch_size": args.batch, "metrics": ["su"], "thresholds": {"su": 85}})
        stage.ensure_setup()
        engine = stage.engine
        prompts = [P.render_chat(P.metric_instruction("su", c), "qwen2_vl", P.ASSISTANT_PREFIX) for c in captions]
        fns = {"bare batched generate": lambda: bare_generate(engine, images, prompts, args.batch),
               "stage (files -> scores)": lambda: stage.process_batch(table),
               "per-sample generate (Data-Juicer pattern)": lambda: bare_generate(engine, images, prompts, 1)}
        best = interleaved_best(fns, args.repeats)
    bare_wall, bare_cpu = best["bare batched generate"]
    rows = [[name, args.samples, f"{wall:.2f}", f"{cpu:.2f}", f"{args.samples / wall:.1f}",
             f"{bare_wall / wall:.2f}", f"{bare_cpu / cpu:.2f}"] for name, (wall, cpu) in best.items()]
    import torch
    print(f"mllm_score (su, digits, tiny Qwen2-VL) vs bare batched generate, batch {args.batch}, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores")
    print(format_table(["path", "samples", "wall s", "cpu s", "samples/s", "ratio wall", "ratio cpu"], rows))
    return {k: {"wall_s": v[0], "cpu_s": v[1]} for k, v in best.items()}


if __name__ == "__main__":
    main()
