"""Cluster-balanced sampling on a planted corpus, embed throughput, k-means fit/assign speed.

    python bench/bench_cluster.py          # MMCURATE_BENCH_QUICK=1 for a smaller run

1. **Planted corpus** (``demo_data/planted_clusters.py``): 3 dominant concepts hold 90% of the rows, 300
   rare ones (Zipf sizes, many singletons) the rest. Cluster it (two levels, Vo et al. resampling), keep
   30%, and report the dominant concepts' share of what is kept and how many distinct concepts survive,
   for several alpha/beta, against uniform random sampling of the same size.
2. **embed vs the bare model**: the ``embed`` stage on image *references* (read, decode, resize in
   threads, overlapped with the model) against EfficientNet-Lite0's bare batched forward on already
   prepared arrays (target >= 0.9), best of interleaved runs; the wall ratio and the CPU-time ratio
   (the latter is what a shared, loaded machine cannot distort much).
3. **k-means per core**: fitting (faiss k-means + resampling steps) and assignment (faiss top-2 +
   exact float64 rescoring) in rows per second on one thread, against faiss alone (plain
   ``faiss.Kmeans.train``; ``IndexFlatL2.search`` top-1) in the same run.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The embed stage overlaps decode threads with a model that uses every core (as bench_clip); the k-means
# part pins faiss to one thread itself. bench/run.py reads this line.
BENCH_CORES = "all"

import numpy as np  # noqa: E402

QUICK = os.environ.get("MMCURATE_BENCH_QUICK") == "1"
SETTINGS = [(0.0, 0.0), (0.0, 0.5), (0.0, 1.0), (0.5, 0.0), (0.5, 1.0), (1.0, 0.0)]


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process, all threads)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def planted_table() -> list[list[Any]]:
    from curate.cluster.kmeans import FitSettings, assign, draw_fit_sample, fit_hierarchy, seeded_hash
    from demo_data.planted_clusters import kept_summary, planted_corpus
    from curate.cluster.sampling import AllocationSettings, allocate_tree, choose_in_leaves, level_totals
    pc = planted_corpus(n=6000 if QUICK else 20000, dim=32, dominant=3, rare=300, seed=0)
    x = pc.embeddings
    keys = [f"k/{i}" for i in range(len(x))]
    hashes = seeded_hash(keys, 0)
    target = int(0.3 * len(x))
    rng = np.random.default_rng(0)
    uniform = np.zeros(len(x))
    uniform[rng.choice(len(x), target, replace=False)] = 1
    share, concepts = kept_summary(pc.concept, pc.dominant, uniform)
    total = len(np.unique(pc.concept))
    rows = [["uniform random", "-", "-", "-", target, f"{share:.3f}", f"{concepts}/{total}"]]
    for steps in (0, 3):
        h = fit_hierarchy(x[draw_fit_sample(hashes, len(x))], FitSettings(levels=(300, 30), resampling_steps=steps))
        paths, dists = assign(x, h)
        totals = level_totals(paths.astype(np.int64), dists.astype(np.float64), np.ones(len(x), dtype=np.int64))
        for alpha, beta in SETTINGS:
            quotas = allocate_tree(totals, target, AllocationSettings(alpha, beta, 1, 0))
            rep = choose_in_leaves(paths[:, -1].astype(np.int64), dists[:, -1], np.ones(len(x), dtype=np.int64),
                                   hashes, quotas[-1], "random")
            share, concepts = kept_summary(pc.concept, pc.dominant, rep)
            rows.append(["cluster_sample", steps, alpha, beta, int(rep.sum()), f"{share:.3f}", f"{concepts}/{total}"])
    return rows


def interleaved_best(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, float]]:
    """Best (wall, cpu) of each function over `repeats` interleaved runs after one warm-up each."""
    for fn in fns.values():
        fn()
    best: dict[str, tuple[float, float]] = {k: (float("inf"), float("inf")) for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _, w, c = timed(fn)
            if w < best[name][0]:
                best[name] = (w, c)
    return best


def embed_row(table: Any, device: str, threads: int, bs: int) -> list[Any]:
    import torch
    from curate import base as S
    from curate.media.images import read_image_bytes
    from curate.media.decode import decode_rgb
    n = table.num_rows
    stage = S.build("embed", {"modality": "image", "batch_size": bs, "device": device, "cpu_threads": threads,
                              "decode_threads": threads})
    stage.ensure_setup()
    emb = stage.embedder
    arrays = [emb.prepare_image(decode_rgb(read_image_bytes(r[0]), emb.transform))
              for r in table.column("images").to_pylist()]

    def bare() -> None:
        for k in range(0, len(arrays), bs):
            emb.embed_images(arrays[k:k + bs])       # returns numpy: waits for the device

    def staged() -> None:
        assert stage.process_batch(table).kept.num_rows == n

    t = interleaved_best({"bare": bare, "stage": staged}, 3 if QUICK else 5)
    ratio = t["bare"][0] / t["stage"][0]
    return [f"embed image (offline Lite0), {torch.get_num_threads()} torch thread(s)", device, n, bs,
            f"{n / t['bare'][0]:.1f}", f"{n / t['stage'][0]:.1f}", f"{t['bare'][1] / n * 1000:.0f}",
            f"{t['stage'][1] / n * 1000:.0f}", f"{ratio:.2f}" + ("" if ratio >= 0.9 else " (<0.90)"),
            f"{t['bare'][1] / t['stage'][1]:.2f}"]


def embed_table() -> list[list[Any]]:
    from bench_clip import build_table
    from curate.scoring.device import pick_device
    device = pick_device("auto")
    n = 16 if QUICK else (32 if device == "cpu" else 1024)
    bs = 16 if device == "cpu" else 128
    with tempfile.TemporaryDirectory() as tmp:
        table = build_table(Path(tmp), n)
        thread_counts = [os.cpu_count() or 1, 1] if device == "cpu" else [os.cpu_count() or 1]
        return [embed_row(table, device, threads, bs) for threads in thread_counts]


def kmeans_table() -> list[list[Any]]:
    import faiss
    from curate.cluster.kmeans import FitSettings, assign, fit_hierarchy
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    n, d, k = (20000, 128, 100) if QUICK else (50000, 256, 256)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = []
    s = FitSettings(levels=(k, k // 10), niter=20, resampling_steps=3)
    h, w, c = timed(lambda: fit_hierarchy(x, s))
    km = faiss.Kmeans(d, k, niter=20, seed=0, spherical=True, max_points_per_centroid=n)
    _, w0, c0 = timed(lambda: km.train(x))
    rows.append([f"fit {n}x{d}, levels ({k}, {k // 10}), 3 resampling steps", f"{n / w:,.0f}", f"{c:.2f}",
                 f"faiss Kmeans k={k}: {n / w0:,.0f} rows/s, {c0:.2f} s CPU", f"{w / w0:.2f}x the time"])
    _, w, c = timed(lambda: assign(x, h))
    index = faiss.IndexFlatL2(d)
    index.add(h.centroids[0])
    _, w0, c0 = timed(lambda: index.search(x, 1))
    rows.append([f"assign {n} rows to {k} leaves + path", f"{n / w:,.0f}", f"{c:.2f}",
                 f"faiss search top-1: {n / w0:,.0f} rows/s, {c0:.2f} s CPU", f"{w / w0:.2f}x the time"])
    return rows


def main() -> None:
    from run import format_table
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print("1. planted corpus (3 dominant concepts = 90% of rows, 300 rare), keep 30%; "
          "resampling = Vo et al. steps per level")
    print(format_table(["sampler", "resampling", "alpha", "beta", "kept", "dominant share", "concepts kept"],
                       planted_table()))
    print()
    print(f"2. embed stage vs bare batched forward ({os.cpu_count()} cores; best of interleaved runs; target >= 0.90)")
    print(format_table(["what", "device", "images", "batch", "bare img/s", "stage img/s", "bare CPU ms/img",
                        "stage CPU ms/img", "wall ratio", "CPU ratio"], embed_table()))
    print()
    print("3. k-means on one core (faiss threads = 1), against faiss alone in the same run")
    print(format_table(["step", "rows/s", "CPU s", "peer", "cost vs peer"], kmeans_table()))


if __name__ == "__main__":
    main()
