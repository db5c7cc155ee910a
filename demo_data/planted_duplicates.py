"""A planted near-duplicate set with known answers, for tests and ``bench/bench_dedup.py``.

Images: real photos that ship inside scikit-image / scikit-learn (nothing is downloaded), plus left
and right halves of the larger ones as extra distinct bases. Each base gets its duplicates
(re-encoded at JPEG quality 40, resized to 60%, cropped 2% all round (8% of the area), cropped 3% off one side and
re-encoded at 75) and a look-alike control that is *not* a duplicate (its mirror image: same
content, colours and texture statistics, different layout).

Captions: template captions from word lists (seeded). Each base gets duplicates (a typo, one word
inserted, punctuation and case changed, one word replaced) and a look-alike control (same template,
three content words changed: "A red car in the garden next to a tall lamp" vs "A red kite in the
market next to a small lamp": same sentence shape, another scene).

``truth`` gives every row a group id: duplicates share their base's id, controls have their own.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "hubble_deep_field", "page",
          "immunohistochemistry", "retina", "brick", "grass", "gravel", "moon", "text", "clock", "cell",
          "colorwheel")
HALVED = ("astronaut", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry", "camera", "cell")


@dataclass(frozen=True)
class Planted:
    key: str
    truth: str          # group id: rows with the same truth are duplicates of each other
    kind: str           # original | <edit name> | control
    text: str | None = None
    image: bytes | None = None


def _jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def base_images() -> list[tuple[str, Image.Image]]:
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images
    out = []
    for name in PHOTOS:
        arr = getattr(skdata, name)()
        im = Image.fromarray(arr).convert("RGB")
        out.append((name, im))
        if name in HALVED:
            w, h = im.size
            out.append((f"{name}-left", im.crop((0, 0, w // 2, h))))
            out.append((f"{name}-right", im.crop((w // 2, 0, w, h))))
    for i, arr in enumerate(load_sample_images().images):
        out.append((f"sklearn-{i}", Image.fromarray(arr).convert("RGB")))
    return out


def image_variants(im: Image.Image) -> dict[str, bytes]:
    w, h = im.size
    return {
        "original": _jpeg(im),
        "jpeg_q40": _jpeg(im, 40),
        "resized_60": _jpeg(im.resize((max(1, int(w * 0.6)), max(1, int(h * 0.6))), Image.Resampling.BICUBIC)),
        "crop_2pct": _jpeg(im.crop((int(w * 0.02), int(h * 0.02), w - int(w * 0.02), h - int(h * 0.02)))),
        "crop_3pct_side_q75": _jpeg(im.crop((int(w * 0.03), 0, w, h)), 75),
        "control": _jpeg(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
    }


def planted_images() -> list[Planted]:
    rows = []
    for name, im in base_images():
        for kind, data in image_variants(im).items():
            truth = f"{name}:control" if kind == "control" else name
            rows.append(Planted(f"img/{name}/{kind}", truth, kind, image=data))
    return rows


ADJ = ["red", "small", "old", "wooden", "bright", "tall", "quiet", "shiny", "broken", "green", "wet", "striped",
       "dusty", "golden", "narrow", "frozen", "crowded", "empty", "painted", "rusty", "tiny", "huge", "silver",
       "purple", "ancient", "modern", "sleepy", "noisy", "colourful", "faded"]
NOUN = ["car", "dog", "house", "bicycle", "boat", "teapot", "guitar", "lamp", "horse", "bridge", "kite", "chair",
        "umbrella", "tractor", "violin", "lighthouse", "suitcase", "parrot", "windmill", "sofa", "camera", "tent",
        "clock", "piano", "statue", "fountain", "bus", "ladder", "basket", "owl"]
PLACE = ["beach", "garden", "kitchen", "market", "station", "forest", "harbour", "library", "street", "field",
         "desert", "museum", "airport", "village", "canyon", "rooftop", "bakery", "island", "stadium", "valley"]
TEMPLATES = [
    "A {a1} {n1} standing in the {p} next to a {a2} {n2}.",
    "Close-up photo of a {a1} {n1} on a {a2} {n2} in the {p}.",
    "Two {n1}s and a {a2} {n2} at the {p} on a {a1} afternoon.",
    "The {a1} {n1} was left near the {p}, beside an old {a2} {n2}.",
    "View of the {p} with a {a1} {n1} and a {a2} {n2} in the background.",
]


def _caption(rng: np.random.Generator, template: str) -> tuple[str, dict[str, str]]:
    words = {"a1": rng.choice(ADJ), "a2": rng.choice(ADJ), "n1": rng.choice(NOUN), "n2": rng.choice(NOUN),
             "p": rng.choice(PLACE)}
    return template.format(**words), words


def caption_edits(text: str, rng: np.random.Generator) -> dict[str, str]:
    words = text.split()
    i = int(rng.integers(1, len(words) - 1))
    w = words[i]
    typo = w[:1] + w[2:3] + w[1:2] + w[3:] if len(w) > 3 else w + w[-1]
    inserted = words[:i] + ["very"] + words[i:]
    replaced = words[:i] + [rng.choice(["lovely", "large", "single", "nice"])] + words[i + 1:]
    return {
        "typo": " ".join(words[:i] + [typo] + words[i + 1:]),
        "word_inserted": " ".join(inserted),
        "punct_case": text.upper().rstrip(".") + " !",
        "word_replaced": " ".join(replaced),
    }


def planted_captions(n_bases: int = 60, seed: int = 7) -> list[Planted]:
    rng = np.random.default_rng(seed)
    rows: list[Planted] = []
    seen: set[str] = set()
    b = 0
    while b < n_bases:
        template = TEMPLATES[b % len(TEMPLATES)]
        text, words = _caption(rng, template)
        if text in seen:
            continue
        seen.add(text)
        rows.append(Planted(f"txt/{b:03d}/original", f"t{b}", "original", text=text))
        for kind, edited in caption_edits(text, rng).items():
            rows.append(Planted(f"txt/{b:03d}/{kind}", f"t{b}", kind, text=edited))
        alt = dict(words, n1=rng.choice([x for x in NOUN if x != words["n1"]]),
                   a2=rng.choice([x for x in ADJ if x != words["a2"]]), p=rng.choice([x for x in PLACE if x != words["p"]]))
        rows.append(Planted(f"txt/{b:03d}/control", f"t{b}:control", "control", text=template.format(**alt)))
        b += 1
    return rows


def pair_scores(truth: list[str], predicted: list[str]) -> tuple[float, float]:
    """Pairwise precision and recall of a predicted grouping against the truth (1.0 when empty)."""
    from collections import Counter
    def pairs(labels: list[str]) -> int:
        return sum(c * (c - 1) // 2 for c in Counter(labels).values())
    true_pairs, pred_pairs = pairs(truth), pairs(predicted)
    both = pairs([f"{t}\x00{p}" for t, p in zip(truth, predicted)])
    precision = both / pred_pairs if pred_pairs else 1.0
    recall = both / true_pairs if true_pairs else 1.0
    return precision, recall


def write_images(rows: list[Planted], directory: Path) -> list[dict]:
    """Write the images to files and return image references for records (width/height from the header)."""
    from curate.base import records as R
    directory.mkdir(parents=True, exist_ok=True)
    refs = []
    for r in rows:
        path = directory / (r.key.replace("/", "__") + ".jpg")
        path.write_bytes(r.image or b"")
        with Image.open(io.BytesIO(r.image or b"")) as im:
            w, h = im.size
        refs.append(R.image_ref(str(path), size=len(r.image or b""), width=w, height=h, format="JPEG"))
    return refs
