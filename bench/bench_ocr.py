"""OCR intersection on a planted corpus: each engine's word accuracy, the intersection's precision and
recall, and throughput per core of each bare engine and of the ``ocr`` stage.

    python bench/bench_ocr.py            # bench/run.py pins it to one core (per-core numbers)

Corpus (rendered here with PIL, ground truth known): lines of words from a fixed vocabulary in four
DejaVu fonts, at 16/24/36 px, rotated 0/3/-8 degrees, with Gaussian noise 0/25, on white or gradient
backgrounds; plus text-free images (colour blobs and scikit-image photos without text).

Word scores are bag-of-words against the truth after ``word_key`` normalisation (NFKC, case,
punctuation): precision = words written that are in the truth / words written; recall = truth words
found / truth words. Words an engine writes on a text-free image are all false positives.

Throughput: bare engines are timed on decoded images, back to back (first engine, then the second,
per image); the stage runs ``process_batch`` on a table of PNG *files* (read, probe, decode, both
engines, matching, columns). Target: stage >= 0.9 of the bare pair. The sweep at the end re-matches
the bare engines' own readings under other settings (no engine re-run) to show why the defaults are
what they are.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

VOCAB = ("market street station coffee bread open daily north south exit invoice total number payment "
         "within days river bridge museum garden hotel parking entrance library office price sale fresh "
         "water city center road bank school hospital library closed monday friday 2024 15 300 47").split()
FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf")


def corpus(quick: bool) -> list[tuple[str, Image.Image, list[str]]]:
    from demo_data.text_images import TextSpec, render, text_free
    rng = np.random.default_rng(7)
    sizes, angles, noises = (16, 24, 36), (0.0, 3.0, -8.0), (0.0, 25.0)
    combos = [(f, s, a, n) for f in FONTS for s in sizes for a in angles for n in noises]
    picked = [combos[i] for i in rng.permutation(len(combos))[: (8 if quick else 30)]]
    out = []
    for k, (font, size, angle, noise) in enumerate(picked):
        lines = tuple(" ".join(rng.choice(VOCAB, size=int(rng.integers(2, 5)))) for _ in range(int(rng.integers(1, 4))))
        spec = TextSpec(lines, font=font, font_size=size, angle=angle, noise=noise,
                        background="gradient" if k % 3 == 0 else "white", seed=k)
        out.append((f"text{k:02d}_{font[:-4]}_{size}px_{angle:g}deg_n{noise:g}", render(spec), " ".join(lines).split()))
    out += [(f"blobs{k}", text_free(100 + k), []) for k in range(1 if quick else 3)]
    import skimage
    photos = ("coffee.png", "chelsea.png") if quick else ("coffee.png", "chelsea.png", "coins.png", "astronaut.png")
    for name in photos:
        out.append((name, Image.open(os.path.join(os.path.dirname(skimage.__file__), "data", name)).convert("RGB"), []))
    return out


def score(written: list[str], truth: list[str]) -> tuple[int, int, int]:
    """(correct, written, truth) word counts, bag-of-words on comparison keys."""
    from curate.ocr.normalize import word_key
    w = Counter(k for k in (word_key(x) for x in written) if k)
    t = Counter(k for k in (word_key(x) for x in truth) if k)
    return sum((w & t).values()), sum(w.values()), sum(t.values())


def pr(c: tuple[int, int, int]) -> tuple[str, str]:
    p = c[0] / c[1] if c[1] else 1.0
    r = c[0] / c[2] if c[2] else 1.0
    return f"{p:.3f}", f"{r:.3f}"


def add(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[int, int, int]:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def file_table(items: list, tmp: Path):
    """A table of PNG *file* references: the stage reads and decodes them itself."""
    from curate.base import records as R
    rows = []
    for i, (key, im, _) in enumerate(items):
        path = tmp / f"{key}.png"
        im.save(path)
        rows.append(R.Sample(key=f"b/{key}", source="b", category="ocr", ordinal=i,
                             images=[R.image_ref(str(path), width=im.size[0], height=im.size[1])]).to_row())
    return R.rows_to_table(rows)


def bare_pass(items: list, engines: tuple) -> tuple[list, list[tuple[float, float]]]:
    """Each engine alone on each decoded image, back to back; (wall, cpu) seconds per engine."""
    readings, spent = [], [[0.0, 0.0], [0.0, 0.0]]
    for _, im, _ in items:
        pair = []
        for e, engine in enumerate(engines):
            w0, c0 = time.perf_counter(), time.process_time()
            pair.append(engine.read(im, 600))
            spent[e][0] += time.perf_counter() - w0
            spent[e][1] += time.process_time() - c0
        readings.append(pair)
    return readings, [tuple(x) for x in spent]


def main() -> None:
    from run import format_table, quick
    from curate.ocr.lines import agreed_lines
    from curate.ocr.matching import MatchSettings, match_words
    from curate.base import build
    items = corpus(quick())
    stage = build("ocr", {"min_agreed_words": 0, "min_agreement": 0.0})
    stage.ensure_setup()
    first, second = stage.engines
    first.read(items[0][1], 60), second.read(items[0][1], 60)          # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        table = file_table(items, Path(tmp))
        best = {"first": (1e9, 1e9), "second": (1e9, 1e9), "stage": (1e9, 1e9)}
        for _ in range(2 if quick() else 3):                            # interleaved, best of R
            readings, spent = bare_pass(items, (first, second))
            w0, c0 = time.perf_counter(), time.process_time()
            res = stage.run(table, batch_size=len(items))
            spent.append((time.perf_counter() - w0, time.process_time() - c0))
            for name, t in zip(("first", "second", "stage"), spent):
                best[name] = (min(best[name][0], t[0]), min(best[name][1], t[1]))
    wall = [best["first"][0], best["second"][0]]
    cpu = [best["first"][1], best["second"][1]]
    stage_wall, stage_cpu = best["stage"]
    out = {r["key"][2:]: r for r in res.concat().to_pylist()}
    tot = {"first": (0, 0, 0), "second": (0, 0, 0), "intersection": (0, 0, 0)}
    for (key, _, truth), (ra, rb) in zip(items, readings):
        tot["first"] = add(tot["first"], score([w.text for w in ra.words], truth))
        tot["second"] = add(tot["second"], score([w.text for w in rb.words], truth))
        tot["intersection"] = add(tot["intersection"], score((out[key]["ocr_text"] or "").split(), truth))
    n = len(items)
    bare_pair = n / (wall[0] + wall[1])
    rows_out = [
        [f"{first.name} alone", *pr(tot["first"]), f"{n / wall[0]:.2f}", f"{n / cpu[0]:.2f}", ""],
        [f"{second.name} alone", *pr(tot["second"]), f"{n / wall[1]:.2f}", f"{n / cpu[1]:.2f}", ""],
        ["both bare, back to back", "", "", f"{bare_pair:.2f}", f"{n / (cpu[0] + cpu[1]):.2f}", "1.00 / 1.00"],
        ["ocr stage (intersection)", *pr(tot["intersection"]), f"{n / stage_wall:.2f}", f"{n / stage_cpu:.2f}",
         f"{(n / stage_wall) / bare_pair:.2f} / {(cpu[0] + cpu[1]) / stage_cpu:.2f}"],
    ]
    text_imgs = sum(1 for _, _, t in items if t)
    print(f"ocr: {n} images ({text_imgs} with text, {n - text_imgs} text-free), "
          f"{sum(len(t) for _, _, t in items)} truth words; one core")
    print(format_table(["reader", "word precision", "word recall", "img/s (wall)", "img/s (cpu)",
                        "vs bare pair (wall / cpu)"], rows_out))
    print()
    sweep = []
    for sim in (0.6, 0.8, 1.0):
        for fold in (False, True):
            s = MatchSettings(0.5, sim, fold)
            c = (0, 0, 0)
            for (_, _, truth), (ra, rb) in zip(items, readings):
                lines = agreed_lines(ra, rb, match_words(ra.words, rb.words, s), "first", fold)
                c = add(c, score(" ".join(line.text for line in lines).split(), truth))
            sweep.append([f"{sim:g}", str(fold), *pr(c)])
    print("intersection under other matching settings (min_box_overlap 0.5; same engine readings):")
    print(format_table(["min_text_similarity", "fold_lookalikes", "precision", "recall"], sweep))


if __name__ == "__main__":
    main()
