"""Throughput of the clip_score stage against the bare batched forward of its model.

    python bench/bench_clip.py [--images N] [--repeats R] [--scorers label_text_similarity,clip_vit_b32]

For each scorer it times, on the same machine and the same N real photos (scikit-image and
scikit-learn sample images written as JPEG files):

* bare forward — the model alone on already decoded, resized arrays: ``encode_images`` on batches
  of ``batch_size`` plus ``encode_texts`` of the captions;
* stage — ``ClipScore.process_batch`` on a table of image *references*: read the files, decode
  (JPEG draft scaling), resize/crop in the decode threads, overlapped with the model, and score.

The target is stage >= 90% of bare forward. ``clip_vit_b32`` is CLIP ViT-B/32's architecture with
random weights (no weights ship here; the cost of a forward does not depend on them).
Prints one table: the best of R interleaved timed runs of each, after one warm-up run.
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

# The stage overlaps decoding (threads) with a model that uses every core: a one-core pin would
# measure something else. bench/run.py reads this line.
BENCH_CORES = "all"

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

CAPTIONS = {
    "astronaut": "An astronaut in a white spacesuit posing in front of an American flag.",
    "chelsea": "A tabby cat with striped orange fur looking to the side.",
    "coffee": "A cup of coffee with latte art on a saucer with a spoon.",
    "rocket": "A rocket on the launch pad with a service tower against the sky.",
    "camera": "A black and white photo of a man with a camera on a tripod.",
    "coins": "Many old coins lying on a dark background.",
    "hubble_deep_field": "Hubble deep field image of distant galaxies in space.",
    "immunohistochemistry": "A microscope image of stained tissue cells.",
    "china": "A Chinese temple with a pagoda roof surrounded by trees.",
    "flower": "A close-up of a pink dahlia flower with a bee.",
}


def photos() -> list[tuple[str, np.ndarray]]:
    from skimage import data
    from sklearn.datasets import load_sample_images
    out = [(name, getattr(data, name)()) for name in CAPTIONS if hasattr(data, name)]
    sk = load_sample_images()
    out += [(Path(f).stem, img) for f, img in zip(sk.filenames, sk.images)]
    return out


def build_table(tmp: Path, n: int) -> Any:
    """N rows, each one JPEG file reference + caption (photos cycled at two scales)."""
    from curate.base import records as R
    rows = []
    pics = photos()
    for i in range(n):
        name, arr = pics[i % len(pics)]
        im = Image.fromarray(arr).convert("RGB")
        if (i // len(pics)) % 2:
            im = im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        path = tmp / f"{i:05d}-{name}.jpg"
        path.write_bytes(buf.getvalue())
        row = R.Sample(key=f"b/{i}", source="bench", category="caption", text=CAPTIONS[name], ordinal=i).to_row()
        row["images"] = [R.image_ref(str(path), size=len(buf.getvalue()), width=im.width, height=im.height,
                                     format="JPEG")]
        rows.append(row)
    return R.rows_to_table(rows)


def random_clip_vit_b32(device: str) -> Any:
    """CLIP ViT-B/32's architecture (transformers defaults) with seeded random weights."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    from curate.scoring.base import ImageTransform
    from curate.scoring.clip_hf import HFClipScorer
    words = sorted({w.strip(".,").lower() for c in CAPTIONS.values() for w in c.split()})
    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 49406, "[EOS]": 49407}
    vocab.update({w: i + 2 for i, w in enumerate(words)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]",
                                                       special_tokens=[("[BOS]", 49406), ("[EOS]", 49407)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                        unk_token="[UNK]", model_max_length=77)
    torch.manual_seed(0)
    config = CLIPConfig(text_config={"eos_token_id": 49407, "bos_token_id": 49406, "pad_token_id": 0},
                        vision_config={"patch_size": 32})
    model = CLIPModel(config)
    from curate.scoring.device import default_dtype
    return HFClipScorer.from_objects(model, tokenizer, ImageTransform(), "clip", device, default_dtype(device),
                                     name="clip-vit-b32-random-weights")


def interleaved_best(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best (lowest) seconds of each function over `repeats` runs, interleaved (A B A B ...) after one
    warm-up each. Other processes only ever add time, so the best run is the least disturbed one
    (timeit's rule); interleaving makes load that drifts over time hit both alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def bench_one(label: str, stage: Any, table: Any, repeats: int) -> dict[str, Any]:
    from curate.media.images import read_image_bytes
    from curate.media.decode import decode_rgb
    scorer = stage.scorer
    refs = [r[0] for r in table.column("images").to_pylist()]
    texts = table.column("text").to_pylist()
    arrays = [scorer.prepare_image(decode_rgb(read_image_bytes(r), scorer.transform)) for r in refs]
    unique = sorted(set(texts))
    bs = stage.config.batch_size

    def bare() -> None:
        scorer.encode_texts(unique)
        for k in range(0, len(arrays), bs):
            scorer.encode_images(arrays[k:k + bs]).embeddings.sum().item()   # .item(): wait for the device

    def staged() -> None:
        result = stage.process_batch(table)
        assert result.kept.num_rows == table.num_rows

    t = interleaved_best({"bare": bare, "stage": staged}, repeats)
    n = len(arrays)
    return {"scorer": label, "device": scorer.device, "images": n, "batch": bs, "threads": stage.decode_threads,
            "bare_ips": n / t["bare"], "stage_ips": n / t["stage"], "ratio": t["bare"] / t["stage"]}


def make_stage(backend_settings: dict[str, Any], scorer: Any | None = None) -> Any:
    from curate import base as S
    stage = S.build("clip_score", backend_settings)
    if scorer is None:
        stage.ensure_setup()                              # loads the model as an actor would
    else:
        stage.scorer, stage._is_setup = scorer, True      # a model built in memory (no weights on disk)
    return stage


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=None, help="rows in the batch (default: 32 on CPU, 1024 else)")
    parser.add_argument("--batch-size", type=int, default=None, help="model batch (default: 16 on CPU, 128 else)")
    parser.add_argument("--repeats", type=int, default=int(os.environ.get("BENCH_CLIP_REPEATS", 7)))
    parser.add_argument("--scorers", default=os.environ.get("BENCH_CLIP_SCORERS", "label_text_similarity,clip_vit_b32"))
    parser.add_argument("--decode-threads", type=int, default=None, help="default: one per CPU core")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from curate.scoring.device import pick_device
    device = pick_device("auto")
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    on_cpu = device == "cpu"
    quick = os.environ.get("MMCURATE_BENCH_QUICK") == "1"
    images = args.images or int(os.environ.get("BENCH_CLIP_IMAGES", (16 if quick else 32) if on_cpu else 1024))
    repeats = 3 if quick and "BENCH_CLIP_REPEATS" not in os.environ else args.repeats
    common = {"batch_size": args.batch_size or (16 if on_cpu else 128), "decode_threads": args.decode_threads,
              "device": device}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        table = build_table(Path(tmp), images)
        for name in [s.strip() for s in args.scorers.split(",") if s.strip()]:
            if name == "label_text_similarity":
                stage = make_stage({"backend": "label_text_similarity", **common})
            elif name == "clip_vit_b32":
                stage = make_stage({"backend": "hf_clip", "model_path": "<in-memory>", **common},
                                   random_clip_vit_b32(device))
            else:
                raise SystemExit(f"unknown scorer {name!r}")
            results.append(bench_one(name, stage, table, repeats))
    from run import format_table
    print(f"clip_score: stage vs bare batched forward ({os.cpu_count()} CPU cores, torch {torch.__version__}; "
          f"best of {repeats} interleaved runs; target ratio >= 0.90)")
    print(format_table(["scorer", "device", "images", "batch", "decode threads", "bare img/s", "stage img/s", "ratio"],
                       [[r["scorer"], r["device"], r["images"], r["batch"], r["threads"], f"{r['bare_ips']:.1f}",
                         f"{r['stage_ips']:.1f}", f"{r['ratio']:.2f}" + ("" if r["ratio"] >= 0.9 else " (<0.90)")]
                        for r in results]))
    return results


if __name__ == "__main__":
    main()
