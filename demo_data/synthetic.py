"""A synthetic corpus for the seeds' recipes: every source a recipe names, with that name and category.

    python -m demo_data.synthetic recipes/mindvl_warmup.yaml [--rows 3000] [--base .]

The seeds' datasets (Caption-CN-Rawcaption, UMG-en, PubTables-zh, DataComp-Medium, ...) are not
downloadable here, so each recipe runs on stand-ins: one parquet file per source at the path the
recipe gives, with real images (a small pool of JPEGs of the sizes such data has, referenced by path,
so token counts vary like the real thing) and captions, conversations or text whose lengths depend on
the category (OCR pages are long, captions short).

Source sizes are chosen to exercise the mixture: a source gets ``share x rows x skew`` samples with
``skew`` in {0.4, 1, 2.5} by a hash of its name — some sources must be down-sampled, others repeated.
``join_annotations`` files named by the recipe are written too (an id list for bool columns, scores
for numeric columns, spread around the recipe's threshold). Deterministic: same recipe, rows and seed
give the same files.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curate.filters.annotations import parse_condition
from curate.mixture.targets import build_targets
from pipelines.recipe import Recipe, load

IMAGE_SIZES = ((224, 224), (336, 448), (512, 384), (640, 480), (800, 600), (1024, 768), (1280, 720),
               (448, 1344), (1600, 1200), (300, 900), (960, 960), (2048, 1536))
WORDS = ("red blue green small large old new cat dog house tree car road sky river bridge city night table chart "
         "page text sign screen button menu graph axis value formula proof circuit cell region box person").split()
TEXT_WORDS = {"caption": (5, 60), "grounding": (10, 50), "ocr": (80, 500), "table_chart": (60, 400),
              "stem": (40, 300), "gui": (20, 120), "interleaved": (100, 600), "vqa": (20, 200),
              "conversation": (40, 300), "text": (50, 900), "video": (20, 100)}
SKEWS = (0.4, 1.0, 2.5)
MIN_ROWS = 6


def _stable(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def image_pool(root: Path) -> list[str]:
    """JPEG files of typical sizes (gradient + noise: cheap to encode, pleasant as thumbnails)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(IMAGE_SIZES):
        path = root / f"img-{w}x{h}.jpg"
        if not path.exists():
            rng = np.random.default_rng(i)
            x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
            y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
            arr = np.stack([255 * x * np.ones_like(y), 255 * y * np.ones_like(x), 128 + 0 * x * y], axis=-1)
            arr = (arr + rng.normal(0, 12, arr.shape)).clip(0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=70)
            path.write_bytes(buf.getvalue())
        paths.append(str(path.resolve()))
    return paths


def source_rows(recipe: Recipe, rows: int) -> dict[str, int]:
    """Samples per source: its target share times `rows`, skewed so that the mixture has work to do."""
    shares: dict[str, float] = {}
    m = recipe.mixture or next((s.settings for s in recipe.stages if s.name == "mixture"), None)
    if m:
        t = build_targets(m.get("by", "category"), m["ratios"], m.get("within", {}), m.get("normalize", False),
                          m.get("tolerance", 1e-6), m.get("max_repeat", 1.0))
        for spec in recipe.sources:
            leaf = t.label(spec.category, spec.name)
            if leaf:
                siblings = [s for s in recipe.sources if t.label(s.category, s.name) == leaf]
                shares[spec.name] = t.shares[leaf] / len(siblings)
    out = {}
    for spec in recipe.sources:
        share = shares.get(spec.name, 1.0 / len(recipe.sources))
        out[spec.name] = max(MIN_ROWS, int(round(share * rows * SKEWS[_stable(spec.name) % len(SKEWS)])))
    return out


def _text(rng: np.random.Generator, category: str) -> str:
    lo, hi = TEXT_WORDS.get(category, (10, 80))
    return " ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi))))


def document_table(name: str, n: int, images: list[str], rng: np.random.Generator) -> pa.Table:
    """An ``obelics`` source: per document aligned ``texts`` / ``images`` lists (2-8 paragraphs, 1-4
    images between them, OBELICS' layout), the page URL as metadata."""
    uids = [f"{name}-{i:06d}" for i in range(n)]
    texts, refs = [], []
    for _ in range(n):
        parts: list[tuple[str | None, str | None]] = [(_text(rng, "caption"), None)
                                                      for _ in range(int(rng.integers(2, 9)))]
        for _ in range(int(rng.integers(1, 5))):
            parts.insert(int(rng.integers(len(parts) + 1)), (None, images[int(rng.integers(len(images)))]))
        texts.append([t for t, _ in parts])
        refs.append([i for _, i in parts])
    return pa.table({"uid": uids, "texts": texts, "images": refs,
                     "url": [f"https://example.org/{name}/{i}.html" for i in range(n)]})


def source_table(name: str, category: str, n: int, images: list[str], seed: int, format: str = "parquet") -> pa.Table:
    """One source: uid, image path (none for text), caption text or a two-turn conversation; for an
    ``obelics`` source, interleaved documents (``document_table``)."""
    rng = np.random.default_rng([seed, _stable(name) % (1 << 32)])
    if format == "obelics":
        return document_table(name, n, images, rng)
    uids = [f"{name}-{i:06d}" for i in range(n)]
    has_image = category != "text"
    image_col = [images[int(rng.integers(len(images)))] if has_image else None for _ in range(n)]
    url_col = [f"https://example.org/{name}/{i}.jpg" if has_image else None for i in range(n)]
    if category in ("vqa", "conversation", "gui") or category == "text" and name.lower().endswith("-sft"):
        convs = [[{"from": "human", "value": _text(rng, "vqa")[:200]}, {"from": "gpt", "value": _text(rng, category)}]
                 for _ in range(n)]
        return pa.table({"uid": uids, "image": image_col, "url": url_col, "conversations": convs})
    return pa.table({"uid": uids, "image": image_col, "url": url_col, "text": [_text(rng, category) for _ in range(n)]})


def annotation_table(settings: dict[str, Any], keys: list[str], seed: int) -> pa.Table:
    """Values for a join_annotations file: bool columns become an id list (only listed ids, ~35%),
    numeric columns are spread around the recipe's threshold so roughly half pass."""
    rng = np.random.default_rng([seed, _stable(settings["path"]) % (1 << 32)])
    columns: dict[str, str] = settings.get("columns", {})
    thresholds = {c.column: c.value for c in map(parse_condition, settings.get("keep_if", []))
                  if isinstance(c.value, (int, float)) and not isinstance(c.value, bool)}
    data: dict[str, list] = {settings.get("key_field", "key"): list(keys)}
    listed = np.ones(len(keys), dtype=bool)
    for col, typ in columns.items():
        if typ == "bool":
            flags = rng.random(len(keys)) < 0.35
            listed &= flags
            data[col] = [True] * len(keys)
        elif typ in ("float", "int"):
            centre = float(thresholds.get(col, 0.5))
            vals = centre * (0.6 + 0.8 * rng.random(len(keys)))
            data[col] = [int(v) if typ == "int" else round(float(v), 4) for v in vals]
        else:
            data[col] = [f"{col}-{i}" for i in range(len(keys))]
    table = pa.table(data)
    return table.filter(pa.array(listed))


def generate(recipe: Recipe, base: Path, rows: int = 3000, seed: int = 0) -> dict[str, int]:
    """Write every source (and annotation file) of `recipe` under `base`; returns rows per source."""
    counts = source_rows(recipe, rows)
    keys_by_source: dict[str, list[str]] = {}
    pools: dict[Path, list[str]] = {}
    for spec in recipe.sources:
        path = base / spec.path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Images live inside the source's folder: references may not leave a source's root.
        if path.parent not in pools:
            pools[path.parent] = image_pool(path.parent / "_images")
        table = source_table(spec.name, spec.category, counts[spec.name], pools[path.parent], seed, spec.format)
        pq.write_table(table, path)
        keys_by_source[spec.name] = table.column("uid").to_pylist()
    for st in recipe.stages:
        if st.name != "join_annotations":
            continue
        scope = st.settings.get("sources") or [s.name for s in recipe.sources]
        keys = [k for s in scope for k in keys_by_source.get(s, [])]
        path = base / st.settings["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        table = annotation_table(st.settings, keys, seed)
        if str(path).endswith(".jsonl"):
            path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
        else:
            pq.write_table(table, path)
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", nargs="+")
    ap.add_argument("--rows", type=int, default=3000, help="about how many samples per recipe")
    ap.add_argument("--base", default=".", help="directory the recipe's relative paths start from")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for path in args.recipe:
        counts = generate(load(path), Path(args.base), args.rows, args.seed)
        print(f"{path}: {len(counts)} sources, {sum(counts.values())} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
