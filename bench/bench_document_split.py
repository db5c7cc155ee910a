"""Split-and-pack of interleaved documents at L = 8192 and 32768 (#25): how much of an OBELICS-like
corpus reaches the packs with ``overlong: split`` against ``overlong: reject``, and at what fill.

The document-length distribution (``obelics_like``) is fitted to OBELICS' published totals (Laurençon
et al. 2023: 141M documents, 353M images, 115B text tokens, i.e. a mean of 2.5 images and ~816 text
tokens per document, documents of 1 to 30 images) with web-like heavy tails:

* images per document: 1 + geometric with mean 2.5, at most 30;
* text tokens per document: lognormal, median 500 and sigma 1.0 (mean ~824), cut into paragraphs of
  lognormal length (median 60 tokens), the images at random paragraph boundaries;
* image size: lognormal around 640x480 (OBELICS keeps images of 150 px and more a side), counted with
  Qwen2-VL's smart_resize (default max_pixels: at most 1280 tokens an image).

OBELICS' web pages rarely exceed 32768 tokens (a text lognormal this narrow puts ~2e-5 of them there),
so a second, long-document corpus stands for openPangu-VL's interleaved books and parsed PDFs (its 188M
book samples): the same shapes with a text median of 8000 tokens and 8 images a document on average
(at most 200) — most of it longer than 8192, a fair part longer than 32768.

Both policies run the real ``pack`` stage (bin-completion planner) on the same table. A document that
fits is given its modelled length (no text needed: nothing reads it); a document longer than L is
materialised as real text and segments and counted by count_tokens' own code, so the split runs on real
tokens. "content packed" is the share of the corpus's tokens that reach a pack (split: every chunk's
document content; reject: the documents that fit); "chunk overhead" is what the template adds by
repeating its turns once per chunk.
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from curate.base import records as R
from curate.documents.record import build_document
from pack import tokens as T
from pack.packing.stage import PackStage
from run import format_table, quick

N_DOCS = 4_000 if quick() else 20_000
N_BOOKS = 150 if quick() else 400
CONTEXTS = (8192, 32768)
# single-token words (each is one Qwen2 token with its leading space), so paragraph lengths are close
# to the modelled ones before the exact count
WORDS = [" the", " of", " and", " to", " in", " is", " for", " on", " with", " as", " by", " at", " from",
         " harbour", " boat", " water", " light", " city", " house", " road", " time", " year", " people"]


def obelics_like(n: int, seed: int = 0, text_median: float = 500, images_mean: float = 2.5,
                 max_images: int = 30) -> list[dict]:
    """n documents: paragraph token lengths and image sizes in document order (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n_img = np.minimum(rng.geometric(1 / images_mean, n), max_images)
    text = np.clip(np.rint(rng.lognormal(np.log(text_median), 1.0, n)), 20, 400_000).astype(np.int64)
    docs = []
    for i in range(n):
        paras, left = [], int(text[i])
        while left > 0:
            p = int(min(left, max(5, round(rng.lognormal(np.log(60), 0.8)))))
            paras.append(p)
            left -= p
        scale = rng.lognormal(0.0, 0.5, int(n_img[i]))
        aspect = rng.lognormal(0.0, 0.3, int(n_img[i]))
        w = np.maximum(np.rint(640 * scale * np.sqrt(aspect)), 150).astype(np.int64)
        h = np.maximum(np.rint(480 * scale / np.sqrt(aspect)), 150).astype(np.int64)
        slots = np.sort(rng.integers(0, len(paras) + 1, int(n_img[i])))
        parts: list = []
        k = 0
        for j in range(len(paras) + 1):
            while k < len(slots) and slots[k] == j:
                parts.append(("image", int(w[k]), int(h[k])))
                k += 1
            if j < len(paras):
                parts.append(("text", paras[j]))
        docs.append({"parts": parts})
    return docs


def _modelled_length(parts: list, overhead: int) -> int:
    total, prev_text = overhead, False
    for p in parts:
        if p[0] == "text":
            total += p[1] + (1 if prev_text else 0)
            prev_text = True
        else:
            total += int(T.image_tokens(p[1], p[2])) + 2
            prev_text = False
    return total


def corpus_table(docs: list[dict], L: int, tok: T.Tokenizer, template: T.Template, seed: int = 0) -> pa.Table:
    """The pack stage's input: every document with num_tokens and image_tokens; overlong ones as real text."""
    rng = np.random.default_rng(seed + 7)
    overhead = len(T.sample_input_ids({"text": "", "segments": []}, tok, [], template=template))
    rows, long_rows = [], []
    for i, d in enumerate(docs):
        imgs = [p for p in d["parts"] if p[0] == "image"]
        counts = [int(T.image_tokens(p[1], p[2])) for p in imgs]
        refs = [R.image_ref(f"/bench/{i}_{j}.jpg", width=p[1], height=p[2]) for j, p in enumerate(imgs)]
        n = _modelled_length(d["parts"], overhead)
        row = {"key": f"obelics/{i}", "source": "obelics", "category": "interleaved", R.ORDINAL: i,
               R.STATUS: R.KEPT, "image_tokens": counts, "num_tokens": n}
        if n > L:    # materialised: real paragraphs, counted exactly below
            it = iter(refs)
            parts = ["".join(rng.choice(WORDS, p[1])).strip() if p[0] == "text" else next(it) for p in d["parts"]]
            row.update(build_document(parts))
            long_rows.append(len(rows))
        else:
            row.update(text="", images=refs, segments=[{"kind": "image", "start": None, "end": None, "image": j,
                                                        "position": j} for j in range(len(refs))])
        rows.append(row)
    extra = {"image_tokens": pa.list_(pa.int32()), "num_tokens": pa.int64(), "text_tokens": pa.int64(),
             "video_tokens": pa.list_(pa.int32())}
    table = R.rows_to_table(rows, R.schema_with(extra))
    if long_rows:    # the exact counts of the documents that will be split (count_tokens' own code)
        sub = table.take(pa.array(long_rows))
        exact = T.count_rows(sub, tok, sub.column("image_tokens"), None, template).num_tokens
        num = np.asarray(table.column("num_tokens").to_numpy(zero_copy_only=False)).copy()
        num[long_rows] = exact
        table = table.set_column(table.schema.get_field_index("num_tokens"), "num_tokens", pa.array(num))
    return table


def run_policy(table: pa.Table, L: int, overlong: str) -> dict:
    stage = PackStage(context_length=L, overlong=overlong)
    wall, cpu = time.perf_counter(), time.process_time()
    res = stage.run(table)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rep = res.report["packing"]
    total = int(np.sum(table.column("num_tokens").to_numpy(zero_copy_only=False)))
    kept = res.kept
    is_chunk = np.asarray(kept.column("doc_key").is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    whole = int(np.sum(np.asarray(kept.column("num_tokens").to_numpy(zero_copy_only=False))[~is_chunk]))
    chunk_tokens = int(np.sum(np.asarray(kept.column("num_tokens").to_numpy(zero_copy_only=False))[is_chunk]))
    split_docs = set(kept.column("doc_key").drop_null().to_pylist())
    by_key = dict(zip(table.column("key").to_pylist(), table.column("num_tokens").to_pylist()))
    split_original = sum(by_key[k] for k in split_docs)
    rejected = res.dropped
    return {"L": L, "policy": overlong, "docs": table.num_rows,
            "overlong": int(np.sum(np.asarray(table.column("num_tokens").to_numpy(zero_copy_only=False)) > L)),
            "chunks": rep.get("split", {}).get("chunks", 0), "rejected": rejected.num_rows,
            "lost_tokens": total - whole - split_original,
            "content_packed": (whole + split_original) / total, "overhead": chunk_tokens - split_original,
            "packs": rep["packs"], "fill": rep["fill_efficiency"], "wall": wall, "cpu": cpu}


def main() -> None:
    tok = T.load_tokenizer()
    template = T.Template()
    rows = []
    corpora = (("obelics-like", obelics_like(N_DOCS)),
               ("book-like", obelics_like(N_BOOKS, seed=1, text_median=8000, images_mean=8, max_images=200)))
    for name, docs in corpora:
        images = np.mean([sum(p[0] == "image" for p in d["parts"]) for d in docs])
        text = np.mean([sum(p[1] for p in d["parts"] if p[0] == "text") for d in docs])
        print(f"{name}: {len(docs)} documents, mean {images:.2f} images and {text:.0f} text tokens a document")
        for L in CONTEXTS:
            table = corpus_table(docs, L, tok, template)
            for policy in ("reject", "split"):
                r = run_policy(table, L, policy)
                rows.append([name, r["L"], r["policy"], r["docs"], r["overlong"], r["chunks"], r["rejected"],
                             r["lost_tokens"], f"{100 * r['content_packed']:.3f}%", r["overhead"], r["packs"],
                             f"{100 * r['fill']:.3f}%", f"{r['wall']:.2f}", f"{r['cpu']:.2f}"])
    print(format_table(["corpus", "L", "overlong", "docs", "docs > L", "chunks", "rejected", "tokens lost",
                        "content packed", "chunk overhead", "packs", "fill", "wall s", "cpu s"], rows))


if __name__ == "__main__":
    main()
