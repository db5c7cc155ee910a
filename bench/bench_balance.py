"""Data-parallel balance of packed shards: per-step max/mean rank cost, balanced plan vs round robin.

For each of the three bench distributions (bench/distributions.py) samples are packed with the
default planner (pack.packing.plan_packs), then the packs are scheduled onto ``dp_size`` ranks with
``micro_batches`` packs per rank per global step by

* ``round-robin``: packs in the planner's order dealt to ranks in turn (an online loader);
* ``rr-shuffled``: the same after a seeded shuffle (an online loader with shuffling);
* ``balanced``: pack.balance.plan.plan_balanced (what the ``shards`` stage writes).

Costs (pack.balance.plan): ``attention`` = sum of squared segment lengths (LLM varlen attention; every
pack has the same padded length, so the LLM's linear layers cost the same), ``vit`` = patches +
patches^2 / (6 * 1280) per image (Qwen2-VL: 4 patches per image token). Per global step the ratio is
max over ranks / mean over ranks; the table gives its mean, p99 and max over steps, ``max*`` (max
over steps carrying at least 10% of the average step's load: a near-empty ViT step has a huge
ratio and costs nothing) and ``aggr`` = sum of step maxima / sum of step means (the epoch time at
the slowest rank over the ideal). The issue's target is <= 1.02.

sft-mix is text only: its ViT cost is 0 everywhere (ratio 1 by definition).
"""
from __future__ import annotations

import time

import numpy as np

from distributions import DISTRIBUTIONS, caption_like, native_resolution_sizes, sft_mix
from pack.balance import plan as B
from pack.balance import summary as BS
from pack.packing import plan_packs
from pack.tokens import image_tokens
from run import format_table, quick

TARGET_PACKS = 3_000 if quick() else 12_000
CONFIGS = ((8, 1), (8, 4), (32, 2)) if not quick() else ((8, 1), (8, 4))


def samples(name: str, n: int, capacity: int, seed: int = 0) -> tuple[np.ndarray, list[list[int]]]:
    """Lengths and per-sample image token lists for `n` samples of a distribution."""
    if name == "caption-like":
        lengths = caption_like(n, seed)
        return lengths, [[144]] * n
    if name == "native-res":
        w, h = native_resolution_sizes(n, seed)
        img = image_tokens(w, h).astype(np.int64)
        rng = np.random.default_rng(seed + 1)
        text = np.maximum(np.rint(rng.lognormal(np.log(200), 0.8, n)).astype(np.int64), 1)
        lengths = np.minimum(img + text, capacity)
        img = np.minimum(img, lengths)
        return lengths, [[int(t)] for t in img]
    if name == "sft-mix":
        return sft_mix(n, seed), [[] for _ in range(n)]
    raise KeyError(name)


def packed_costs(name: str, capacity: int) -> tuple[B.PackCosts, float]:
    probe_lengths, _ = samples(name, 20_000, capacity, seed=123)
    per_pack = capacity / float(np.mean(probe_lengths))
    n = int(TARGET_PACKS * per_pack * 0.98)
    lengths, imgs = samples(name, n, capacity)
    bins = plan_packs(lengths, capacity)
    order = np.lexsort((np.arange(n), bins))
    segs: list[list[int]] = [[] for _ in range(int(bins.max()) + 1)]
    pimgs: list[list[int]] = [[] for _ in range(int(bins.max()) + 1)]
    for i in order.tolist():
        segs[bins[i]].append(int(lengths[i]))
        pimgs[bins[i]] += imgs[i]
    costs = B.pack_costs(segs, pimgs)
    fill = float(costs.tokens.sum()) / (len(segs) * capacity)
    return costs, fill


def shuffled_round_robin(costs: B.PackCosts, dp: int, mb: int, seed: int = 0) -> B.Plan:
    perm = np.random.default_rng(seed).permutation(len(costs))
    plan = B.plan_round_robin(costs.take(perm), dp, mb)
    plan.slots = perm[plan.slots]
    plan.leftover = perm[plan.leftover]
    return plan


def fmt(d: dict) -> str:
    return f"{d['mean']:.3f}/{d['p99']:.3f}/{d['max']:.3f}/{d['max_loaded']:.3f}/{d['aggregate']:.3f}"


def main() -> None:
    rows = []
    for dist in DISTRIBUTIONS:
        costs, fill = packed_costs(dist.name, dist.capacity)
        for dp, mb in CONFIGS:
            plans = {}
            t0 = time.perf_counter()
            plans["balanced"] = B.plan_balanced(costs, dp, mb, seed=0)
            t_bal = time.perf_counter() - t0
            plans["round-robin"] = B.plan_round_robin(costs, dp, mb)
            plans["rr-shuffled"] = shuffled_round_robin(costs, dp, mb)
            for method, plan in plans.items():
                s = BS.summarize(plan, costs).per_cost
                rows.append([dist.name, dist.capacity, len(costs), f"{fill:.4f}", f"{dp}x{mb}", plan.steps, method,
                             fmt(s["attention"]), fmt(s["vit"]),
                             f"{t_bal:.1f}" if method == "balanced" else ""])
    print(format_table(
        ["distribution", "L", "packs", "fill", "dp x mb", "steps", "method",
         "attention mean/p99/max/max*/aggr", "vit mean/p99/max/max*/aggr", "plan s"], rows))
    print("\nper-step ratio = max over ranks / mean over ranks of the rank's summed cost in that global step; "
          "target <= 1.02")


if __name__ == "__main__":
    main()
