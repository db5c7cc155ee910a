"""Dedup: planted-set precision/recall per stage against the peers' settings, signatures/s per core
against datasketch, pHash images/s against a full decode, and the global step's time and memory.

Peers, re-implemented from their source where they do not install here (labelled "re-impl."):

* Data-Juicer ``document_minhash_deduplicator`` / ``ray_bts_minhash_deduplicator``: lowercase,
  whitespace tokens, 5-token shingles, 256 permutations (datasketch's MinHash with sha1, which is
  what DJ calls), Jaccard 0.7 with bands x rows from ``optimal_param`` (FP/FN weights 0.5/0.5),
  every bucket pair an edge, no verification. DJ image dedup: equal pHash strings (distance 0).
* NeMo Curator fuzzy dedup: raw text, 24-character n-grams, 260 hashes as 20 bands x 13 rows,
  bucket members chained, no verification. NeMo has no perceptual image dedup (its image path is
  semantic dedup on embeddings), so it has no image row.
* datasketch ``MinHash`` (installed): the signature speed baseline, per text and ``bulk``.

The planted set is ``demo_data.planted_duplicates``: captions with small edits vs look-alike captions,
images re-encoded / resized / cropped vs mirrored look-alikes. The chained set is
``curate.dedup.chained``: chains of images (one translucent shape added per step) and of captions
(one word replaced per step), where single-linkage groups remove rows far from every survivor.

Before / after (issue #28): ``MMCURATE_DEDUP_BASELINE=/path/to/an/older/checkout`` runs the chained
and planted measurements and the signature / global-step speeds once more with that checkout's
``curate`` (in a subprocess, same pinning) and prints both side by side.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.base import records as R
from curate import base as S
from curate.base.global_data import InlineData
from curate.dedup import minhash as M
from curate.dedup import normalize as N
from curate.dedup import phash as P
from demo_data import planted_duplicates as PL
from curate.dedup.base import ROWS_PER_PARTITION
from curate.dedup.components import components
from curate.dedup.star_components import oriented, star_components
from curate.dedup.lsh import band_rows, bucket_edges
from chain_measures import chained_module, image_table, near_kept
from run import format_table, quick

SIG_TEXTS = 4_000 if quick() else 20_000
HERE = Path(__file__).resolve().parent
GLOBAL_ROWS = (20_000, 80_000) if quick() else (100_000, 400_000)
GRAPH_ROWS = (200_000,) if quick() else (200_000, 2_000_000)


def cpu_wall(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def groups_from_signatures(sigs: np.ndarray, bands: int, rows: int, verify_at: float | None) -> list[str]:
    n = sigs.shape[0]
    bucket, member = band_rows(np.arange(n), M.band_keys(sigs, bands, rows))
    verify = (lambda a, b: np.ones(a.shape[0], bool)) if verify_at is None else \
        (lambda a, b: M.estimated_jaccard(sigs[a], sigs[b]) >= verify_at)
    e = bucket_edges(bucket, member, verify, max_bucket_size=10**9)
    return [str(x) for x in components(n, e.src, e.dst)]


def dj_signatures(texts: list[str], num_perm: int = 256) -> np.ndarray:
    from datasketch import MinHash
    out = []
    for t in texts:
        tokens = t.lower().split()
        shingles = {" ".join(tokens[i:i + 5]).encode() for i in range(max(0, len(tokens) - 4))}
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch(list(shingles))
        out.append(m.hashvalues.astype(np.uint32))
    return np.stack(out)


def text_rows() -> list[list[object]]:
    rows = PL.planted_captions()
    truth = [r.truth for r in rows]
    texts = [r.text for r in rows]
    table = R.rows_to_table([{"key": r.key, "source": "s", "category": "caption", "text": r.text,
                              R.ORDINAL: i, R.STATUS: R.KEPT} for i, r in enumerate(rows)])
    out = []
    res = S.build("text_dedup").run(table)
    got = {r["key"]: r["dup_group"] for r in pa.concat_tables([res.kept, res.dropped]).to_pylist()}
    out.append(["mmcurate text_dedup (char 5-gram, 128, J>=0.6, verified)",
                *PL.pair_scores(truth, [got[r.key] for r in rows])])
    b, r = M.choose_bands(0.7, 256, 0.5, 0.5)
    out.append([f"Data-Juicer re-impl. (word 5-shingle, 256, {b}x{r}, J 0.7)",
                *PL.pair_scores(truth, groups_from_signatures(dj_signatures(texts), b, r, None))])
    nemo_sigs, _ = M.signatures(texts, 24, M.Permutations.make(260, 42))
    out.append(["NeMo re-impl. (char 24-gram, 260, 20x13)",
                *PL.pair_scores(truth, groups_from_signatures(nemo_sigs, 20, 13, None))])
    return [[name, f"{p:.3f}", f"{rc:.3f}"] for name, p, rc in out]


def image_rows() -> list[list[object]]:
    import tempfile
    from pathlib import Path
    rows = PL.planted_images()
    truth = [r.truth for r in rows]
    with tempfile.TemporaryDirectory() as d:
        refs = PL.write_images(rows, Path(d))
        table = R.rows_to_table([{"key": r.key, "source": "s", "category": "caption", "images": [ref],
                                  R.ORDINAL: i, R.STATUS: R.KEPT} for i, (r, ref) in enumerate(zip(rows, refs))])
        out = []
        for name, settings in (("mmcurate image_dedup (pHash, Hamming<=12, LSH)", {}),
                               ("Data-Juicer re-impl. (equal pHash)", {"max_distance": 0, "bits_per_band": 64})):
            res = S.build("image_dedup", settings).run(table)
            got = {x["key"]: x["dup_group"] for x in pa.concat_tables([res.kept, res.dropped]).to_pylist()}
            p, rc = PL.pair_scores(truth, [got[r.key] for r in rows])
            out.append([name, f"{p:.3f}", f"{rc:.3f}"])
    kinds = Counter(r.kind for r in rows)
    return out, kinds


def caption_corpus(n: int) -> list[str]:
    base = [r.text for r in PL.planted_captions(n_bases=200, seed=11)]
    rng = np.random.default_rng(0)
    return [f"{base[i % len(base)]} {int(rng.integers(1e6))}" for i in range(n)]


def signature_rows() -> list[list[object]]:
    texts = caption_corpus(SIG_TEXTS)
    fuzzy = [N.fuzzy_text(t) for t in texts]
    perms = M.Permutations.make(128, 42)
    rows = []
    _, c, w = cpu_wall(lambda: [M.signatures(fuzzy[i:i + 1024], 5, perms) for i in range(0, len(fuzzy), 1024)])
    ours = len(texts) / c
    rows.append(["mmcurate (char 5-gram, 128 perm, batches of 1024)", f"{len(texts) / w:,.0f}", f"{ours:,.0f}", "1.00"])
    from datasketch import MinHash
    grams = [[t[i:i + 5].encode() for i in range(len(t) - 4)] for t in fuzzy]

    def per_text():
        for g in grams:
            m = MinHash(num_perm=128)
            m.update_batch(g)
    _, c, w = cpu_wall(per_text)
    rows.append(["datasketch MinHash.update_batch (same 5-grams, 128)", f"{len(texts) / w:,.0f}",
                 f"{len(texts) / c:,.0f}", f"{ours / (len(texts) / c):.1f}x"])
    _, c, w = cpu_wall(lambda: MinHash.bulk(grams, num_perm=128))
    rows.append(["datasketch MinHash.bulk (same 5-grams, 128)", f"{len(texts) / w:,.0f}", f"{len(texts) / c:,.0f}",
                 f"{ours / (len(texts) / c):.1f}x"])
    _, c, w = cpu_wall(lambda: dj_signatures(texts))
    rows.append(["Data-Juicer re-impl. (word 5-shingle, 256, datasketch)", f"{len(texts) / w:,.0f}",
                 f"{len(texts) / c:,.0f}", f"{ours / (len(texts) / c):.1f}x"])
    nemo = M.Permutations.make(260, 42)
    _, c, w = cpu_wall(lambda: [M.signatures(texts[i:i + 1024], 24, nemo) for i in range(0, len(texts), 1024)])
    rows.append(["NeMo settings on our engine (24-gram, 260; NeMo runs on GPU)", f"{len(texts) / w:,.0f}",
                 f"{len(texts) / c:,.0f}", f"{ours / (len(texts) / c):.1f}x"])
    return rows


def phash_rows() -> list[list[object]]:
    import io
    from PIL import Image
    from scipy.fft import dctn
    imgs = [r.image for r in PL.planted_images() if r.kind == "original"]
    imgs = imgs * (2 if quick() else 6)
    _, c, w = cpu_wall(lambda: P.phash_batch(np.stack([P.thumbnail(b) for b in imgs])))
    ours = len(imgs) / c

    def full_decode():   # imagehash.phash: full decode, LANCZOS to 32x32, DCT, 8x8 above median
        for b in imgs:
            px = np.asarray(Image.open(io.BytesIO(b)).convert("L").resize((32, 32), Image.Resampling.LANCZOS), float)
            low = dctn(px, type=2)[:8, :8]
            _ = low > np.median(low)
    _, c2, w2 = cpu_wall(full_decode)
    return [["mmcurate pHash (JPEG draft decode, batched DCT)", f"{len(imgs) / w:,.0f}", f"{ours:,.0f}", "1.00"],
            ["imagehash.phash re-impl. (full decode)", f"{len(imgs) / w2:,.0f}", f"{len(imgs) / c2:,.0f}",
             f"{ours / (len(imgs) / c2):.1f}x"]]


def global_rows() -> list[list[object]]:
    """global_step of text_dedup (inline) on synthetic signatures: 10% of rows are near copies of another row."""
    return [global_rows_for(n) for n in GLOBAL_ROWS]


def global_rows_for(n: int) -> list[object]:
    """One row of the global-step table."""
    run = global_step_run(n)
    return [f"{n:,}", f"{run['wall']:.2f}", f"{run['cpu']:.2f}", f"{run['removed']:,} / {n // 10:,}",
            f"{run['rss_mb']:,.0f}", f"{run['candidates']:,}"]


def global_step_run(n: int) -> dict[str, float]:
    """text_dedup's global step on n rows, 10% near copies (est. Jaccard ~0.84) of another row."""
    rng = np.random.default_rng(n)
    sigs = rng.integers(0, 2**32, (n, 128), dtype=np.uint32)
    src = 2 * rng.choice(n // 2, n // 10, replace=False)   # even rows are copied into the next (odd) row
    dst = src + 1
    sigs[dst] = sigs[src]
    sigs[dst, :20] = rng.integers(0, 2**32, (dst.shape[0], 20), dtype=np.uint32)   # J ~ 0.84
    col = pa.FixedSizeListArray.from_arrays(pa.array(sigs.ravel()), 128)
    keys = [f"s/{i:08d}" for i in range(n)]
    table = pa.table({"key": keys, R.ORDINAL: np.arange(n), "source": ["s"] * n,
                      "text_hash": [f"{i:032x}" for i in range(n)], "text_minhash": col,
                      "dup_quality": np.ones(n)})
    stage = S.build("text_dedup")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    chunks = [table.slice(i, 65_536) for i in range(0, n, 65_536)]
    steps = []
    dec, c, w = cpu_wall(lambda: steps.append(stage.global_step(InlineData(chunks))) or steps[-1].decisions.gather())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    removed = int((np.asarray(dec.column(R.STATUS).to_pylist()) != R.KEPT).sum())
    return {"wall": w, "cpu": c, "removed": removed, "rss_mb": max(rss, rss0) / 1024,
            "candidates": steps[-1].report["dedup"]["candidates"]}


def duplicate_graph(n: int, paths: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The graph a dedup of n rows with ~10% duplicates builds: groups of Zipf-like sizes (2 to 2,000)
    as stars (exact buckets and LSH anchors link members to one row), 5% of the groups bridged to
    another one (a row near two groups); members scattered over the corpus. ``paths``: every other
    group a path instead (edits of edits, each link found in another bucket): the slow case."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(n).astype(np.int64)
    sizes = np.minimum(2000, np.maximum(2, (rng.pareto(1.2, n // 40) + 1).astype(np.int64)))
    sizes = sizes[np.cumsum(sizes) <= n // 10]
    src, dst, start = [], [], 0
    for g, size in enumerate(sizes):
        members = np.sort(ids[start:start + size])
        start += size
        if paths and g % 2:
            src.append(members[:-1]); dst.append(members[1:])
        else:
            src.append(np.full(size - 1, members[0])); dst.append(members[1:])
    src, dst = np.concatenate(src), np.concatenate(dst)
    bridges = rng.choice(src.shape[0], max(1, sizes.shape[0] // 20), replace=False)
    return np.concatenate([src, src[bridges]]), np.concatenate([dst, rng.permutation(dst)[:bridges.shape[0]]])


def components_rows() -> list[list[object]]:
    """Distributed components (large/small-star rounds on InlineData, the partitions the dedup uses)
    against scipy's connected_components on the same edges in one process."""
    out = []
    for n, paths in [(n, paths) for n in GRAPH_ROWS for paths in (False, True)]:
        src, dst = duplicate_graph(n, paths)
        table = oriented(src, dst)
        chunks = [table.slice(i, 65_536) for i in range(0, table.num_rows, 65_536)]
        (labels, rounds), c, w = cpu_wall(lambda: star_components(InlineData(chunks), max(1, -(-n // ROWS_PER_PARTITION))))
        got = pa.concat_tables(labels.tables)
        components(2, np.array([0]), np.array([1]))          # scipy imported before the clock starts
        ref, c2, w2 = cpu_wall(lambda: components(n, src, dst))
        node = np.asarray(got.column(R.ORDINAL)); comp = np.asarray(got.column("_component"))
        assert np.array_equal(ref[node], comp), "distributed components differ from scipy"
        out.append([f"{n:,}", "stars + paths" if paths else "stars", f"{table.num_rows:,}", rounds, f"{w:.2f}", f"{table.num_rows / c:,.0f}",
                    f"{table.num_rows / c2:,.0f}", f"{c / c2:.0f}x"])
    return out


def chain_measures() -> dict[str, object]:
    """Chained and planted corpora through image_dedup and text_dedup (whatever ``curate`` is on the
    path), signatures/s per core and the text global step's rows/s per core."""
    CH = chained_module()
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as d:
        links = CH.image_chains(chains=4, length=24, seed=0)
        res = S.build("image_dedup").run(image_table([(x.key, x.image) for x in links], Path(d)), batch_size=64)
        out["image chained"] = near_kept("image_dedup", res)
        planted = PL.planted_images()
        res = S.build("image_dedup").run(image_table([(x.key, x.image) for x in planted], Path(d)), batch_size=64)
        got = {x["key"]: x["dup_group"] for x in pa.concat_tables([res.kept, res.dropped]).to_pylist()}
        out["image planted"] = {**near_kept("image_dedup", res), **dict(zip(
            ("pair_precision", "pair_recall"), PL.pair_scores([x.truth for x in planted], [got[x.key] for x in planted])))}
    for name, links in (("text chained", CH.caption_chains(chains=2, length=20, seed=0)),
                        ("text chained long", CH.caption_chains(chains=20, length=40, seed=5))):
        table = R.rows_to_table([{"key": x.key, "source": "s", "category": "caption", "text": x.text,
                                  R.ORDINAL: i, R.STATUS: R.KEPT} for i, x in enumerate(links)])
        out[name] = near_kept("text_dedup", S.build("text_dedup").run(table))
    planted = PL.planted_captions()
    table = R.rows_to_table([{"key": x.key, "source": "s", "category": "caption", "text": x.text,
                              R.ORDINAL: i, R.STATUS: R.KEPT} for i, x in enumerate(planted)])
    res = S.build("text_dedup").run(table)
    got = {x["key"]: x["dup_group"] for x in pa.concat_tables([res.kept, res.dropped]).to_pylist()}
    out["text planted"] = {**near_kept("text_dedup", res), **dict(zip(
        ("pair_precision", "pair_recall"), PL.pair_scores([x.truth for x in planted], [got[x.key] for x in planted])))}
    fuzzy = [N.fuzzy_text(t) for t in caption_corpus(SIG_TEXTS)]
    perms = M.Permutations.make(128, 42)
    _, c, _ = cpu_wall(lambda: [M.signatures(fuzzy[i:i + 1024], 5, perms) for i in range(0, len(fuzzy), 1024)])
    out["signatures/s per core"] = len(fuzzy) / c
    n = GLOBAL_ROWS[-1]
    out["global step rows/s per core"] = n / global_step_run(n)["cpu"]
    return out


def chain_table() -> str:
    ours = chain_measures()
    baseline = os.environ.get("MMCURATE_DEDUP_BASELINE")
    before = None
    if baseline:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([baseline, str(HERE)]))
        env.pop("MMCURATE_DEDUP_BASELINE")
        proc = subprocess.run([sys.executable, __file__, "--chain-json"], env=env, cwd=baseline, capture_output=True,
                              text=True, check=True)
        before = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = []
    for corpus in ("image chained", "image planted", "text chained", "text chained long", "text planted"):
        for label, part in (("before", before), ("after", ours)):
            if part is None:
                continue
            m = part[corpus]
            far = m["farthest"]
            rows.append([corpus, label, m["rows"], m["kept"], m["removed"], f"{m['precision']:.3f}", m["beyond"],
                         "-" if far is None else (far if isinstance(far, int) else f"{far:.2f}"),
                         f"{m['pair_recall']:.3f}" if "pair_recall" in m else "-"])
    speed = [[what, *([f"{before[what]:,.0f}"] if before else []), f"{ours[what]:,.0f}",
              f"{ours[what] / before[what]:.2f}" if before else "-"]
             for what in ("signatures/s per core", "global step rows/s per core")]
    return (format_table(["corpus", "code", "rows", "kept", "removed", "precision (near a kept row)",
                          "removed beyond threshold of named", "farthest from named", "planted pair recall"], rows)
            + "\n\n" + format_table(["speed", *(["before"] if before else []), "after", "after / before"], speed))


def main() -> None:
    if "--chain-json" in sys.argv:
        print(json.dumps(chain_measures()))
        return
    print("chained and planted near-duplicates: removed rows within the threshold of a kept row "
          "(issue #28; image <= 12 bits, text est. Jaccard >= 0.6)")
    print(chain_table())
    print()
    print("planted captions: precision / recall of duplicate pairs")
    print(format_table(["method", "precision", "recall"], text_rows()))
    rows, kinds = image_rows()
    print(f"\nplanted images ({dict(kinds)}): precision / recall of duplicate pairs")
    print(format_table(["method", "precision", "recall"], rows))
    print(f"\nMinHash signatures of {SIG_TEXTS:,} captions")
    print(format_table(["method", "sig/s wall", "sig/s per core (CPU)", "mmcurate is"], signature_rows()))
    print("\npHash of planted originals (photos up to 1411x1411)")
    print(format_table(["method", "img/s wall", "img/s per core (CPU)", "mmcurate is"], phash_rows()))
    print("\nconnected components of a duplicate graph (10% of rows in chains and stars, 5% of groups bridged)")
    print(format_table(["rows", "groups", "edges", "rounds", "wall s", "edges/s per core", "scipy edges/s per core",
                        "CPU vs scipy"], components_rows()))
    print("\ntext_dedup global step, inline (bucket rows, shuffle by bucket, verified chained edges, "
          "components, join by _ordinal, shuffle by component, survivors; up to 200k rows all in one "
          "reduce call); peak RSS is the whole process's")
    print(format_table(["rows", "wall s", "CPU s", "removed / planted", "peak RSS MB", "candidates"], global_rows()))


if __name__ == "__main__":
    main()
