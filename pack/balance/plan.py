"""Data-parallel balance: which pack goes to which (global step, rank, micro-batch).

Why: openPangu-VL moved packing offline because online packing gave data-parallel ranks different
numbers of packs; and with any-resolution images the ViT work differs wildly between packs of equal
token count ("balanced encoder data parallelism"). In synchronous data parallelism every global step
waits for its slowest rank, so what matters is the balance *inside each step*, not over the epoch.

The plan guarantees, by construction, that every rank gets exactly ``micro_batches`` packs in every
global step (hence equal totals). It then minimizes, per step, ``max(rank cost) / mean(rank cost)``
for two costs that vary between packs of the same (static, padded) shape:

* ``attention`` — text attention in the LLM with variable-length attention: sum over segments of
  length² (the linear layers cost the same for every pack: every pack is ``context_length`` tokens).
* ``vit`` — the vision encoder, run per image with varlen attention: for ``p`` patches an image costs
  ``p + p² / (6·vit_hidden)`` (linear FLOPs ~24·p·h², attention FLOPs ~4·p²·h per layer). The raw
  sums of patches and of squared patches are reported too.

Method (deterministic for the same numpy; near-linear plus bounded local search):

1. Costs are normalized by their means and compared in log space (the metric is a ratio), with
   values far below the mean treated alike (a thumbnail's ViT cost vs none costs no time).
2. Steps are formed from packs that are alike in both costs — fixed-size microaggregation (MDAV) in
   chunks along a Hilbert curve (``group_steps``). Alike packs balance whatever the rank assignment;
   with one micro-batch per rank this is the only lever.
3. Inside a step, packs go to ranks by a greedy longest-processing-time rule with ``micro_batches``
   slots per rank, then pairwise swaps between ranks while they lower the step's worst ratio.
4. Steps whose worst ratio is still above target exchange single packs with the steps nearest to them
   (bounded number of passes; every candidate scored at once, O(G² · K) per pair of steps).
5. The step order is shuffled with the seed so that training does not see packs sorted by cost.

Measured (bench/bench_balance.py, ~12k packs per distribution, dp × micro-batches 8×1, 8×4, 32×2):
the mean per-step max/mean is <= 1.011 for attention and ViT on all three bench distributions, the
epoch aggregate (Σ max / Σ mean) <= 1.013; with 4 micro-batches per rank even the worst step is
<= 1.019. With one micro-batch per rank (and 32×2 on native-res) the worst steps stay above target
(1.05-1.5): a step of single packs cannot be better balanced than its packs are alike.

Leftover packs (``N mod (dp_size × micro_batches)``) follow a policy, never silently:
``drop`` (the lowest-fill packs are left out and their samples reported), ``carry_over`` (the same
packs are left out of the ranks and written aside for a later run), ``pad_with_repeats`` (the last
step is completed with second copies of the fullest packs; those samples are seen twice).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from pack.balance.groups import group_steps, log_coordinates, normalize

LeftoverPolicy = Literal["drop", "carry_over", "pad_with_repeats"]
LEFTOVER_POLICIES: tuple[str, ...] = ("drop", "carry_over", "pad_with_repeats")
COST_NAMES: tuple[str, ...] = ("attention", "vit")


@dataclass(frozen=True)
class CostModel:
    """How image tokens translate into ViT work.

    Qwen2-VL-style encoders merge 2×2 patches into one LLM token (``patches_per_image_token=4``); the
    ViT hidden size sets where its attention starts to dominate its linear layers.
    """
    patches_per_image_token: float = 4
    vit_hidden: int = 1280


@dataclass(frozen=True)
class PackCosts:
    """Per-pack cost components, one entry per pack."""
    tokens: np.ndarray          # used (non-padding) tokens
    attention: np.ndarray       # sum of squared segment lengths
    vit_patches: np.ndarray     # sum of image patches
    vit_patches_sq: np.ndarray  # sum of squared image patches
    vit: np.ndarray             # patches + patches² / (6 · vit_hidden)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def matrix(self) -> np.ndarray:
        """The balanced costs as an (N, 2) float matrix: attention, vit."""
        return np.stack([self.attention, self.vit], axis=1).astype(np.float64)

    def take(self, idx: np.ndarray) -> "PackCosts":
        return PackCosts(*(getattr(self, f)[idx] for f in
                           ("tokens", "attention", "vit_patches", "vit_patches_sq", "vit")))


def pack_costs(segment_lengths: Sequence[Sequence[int]], image_tokens: Sequence[Sequence[int]],
               model: CostModel = CostModel()) -> PackCosts:
    """Costs of packs given each pack's segment lengths and the token counts of all its images."""
    if len(segment_lengths) != len(image_tokens):
        raise ValueError("segment_lengths and image_tokens must have one entry per pack")
    n = len(segment_lengths)
    tokens = np.zeros(n, dtype=np.int64)
    attention = np.zeros(n, dtype=np.float64)
    patches = np.zeros(n, dtype=np.float64)
    patches_sq = np.zeros(n, dtype=np.float64)
    for i, (segs, imgs) in enumerate(zip(segment_lengths, image_tokens)):
        s = np.asarray(segs, dtype=np.float64)
        p = np.asarray(imgs, dtype=np.float64) * model.patches_per_image_token
        tokens[i] = int(s.sum())
        attention[i] = float(np.dot(s, s))
        patches[i] = float(p.sum())
        patches_sq[i] = float(np.dot(p, p))
    vit = patches + patches_sq / (6.0 * model.vit_hidden)
    return PackCosts(tokens, attention, patches, patches_sq, vit)


@dataclass
class Plan:
    """Assignment of packs to (step, rank, micro-batch).

    ``slots[s, r, m]`` is the index of the pack that rank ``r`` trains on in micro-batch ``m`` of
    global step ``s``. With ``pad_with_repeats`` a pack index can appear twice; ``repeat[s, r, m]`` is
    True for the second occurrence (in step, rank, micro-batch order). ``leftover`` lists the packs that
    are in no slot (``drop`` and ``carry_over``).
    """
    dp_size: int
    micro_batches: int
    slots: np.ndarray
    repeat: np.ndarray
    leftover: np.ndarray
    policy: str
    method: str = "balanced"

    @property
    def steps(self) -> int:
        return int(self.slots.shape[0])

    @property
    def global_batch(self) -> int:
        return self.dp_size * self.micro_batches

    def rank_packs(self, rank: int) -> np.ndarray:
        """Pack indices of one rank in training order (step, then micro-batch)."""
        return self.slots[:, rank, :].reshape(-1)


def choose_items(tokens: np.ndarray, global_batch: int, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """Which pack indices fill the slots (repeats allowed) and which are left over.

    drop / carry_over leave out the ``N mod global_batch`` packs with the fewest tokens (ties: the later
    pack), so the fewest samples are lost. pad_with_repeats adds second copies of the fullest packs.
    """
    if policy not in LEFTOVER_POLICIES:
        raise ValueError(f"leftover policy {policy!r} is not one of {LEFTOVER_POLICIES}")
    n = int(tokens.shape[0])
    rest = n % global_batch
    all_idx = np.arange(n, dtype=np.int64)
    if rest == 0:
        return all_idx, np.zeros(0, dtype=np.int64)
    # fewest tokens first, later index first among equals
    by_fill = np.lexsort((-all_idx, tokens))
    if policy == "pad_with_repeats":
        extra = global_batch - rest
        fullest = by_fill[::-1]
        reps = np.resize(fullest, extra) if n else np.zeros(0, dtype=np.int64)
        return np.concatenate([all_idx, reps]), np.zeros(0, dtype=np.int64)
    left = np.sort(by_fill[:rest])
    keep = np.setdiff1d(all_idx, left, assume_unique=True)
    return keep, left


def ratios_of_loads(loads: np.ndarray) -> np.ndarray:
    """max/mean over ranks per cost column for (..., ranks, K) loads; 0/0 counts as balanced (1)."""
    mean = loads.mean(axis=-2)
    mx = loads.max(axis=-2)
    return np.where(mean > 0, mx / np.where(mean > 0, mean, 1.0), 1.0)


def step_ratio(loads: np.ndarray) -> float:
    """Worst max/mean over cost columns of one step's (ranks, K) load matrix."""
    return float(ratios_of_loads(loads).max())


def assign_step(x: np.ndarray, dp_size: int, micro_batches: int, max_swaps: int = 64) -> np.ndarray:
    """Split one step's rows (dp_size × micro_batches of them) over ranks: returns (dp_size, mb) row
    indices. Greedy longest-processing-time with micro_batches slots per rank, then improving swaps."""
    g = x.shape[0]
    if micro_batches == 1:
        return np.arange(g).reshape(dp_size, 1)
    mean = x.mean(axis=0) * micro_batches
    xs = x / np.where(mean > 0, mean, 1.0)  # a perfectly balanced rank has load 1 in every column
    order = np.lexsort((np.arange(g), -xs.max(axis=1)))
    loads = np.zeros((dp_size, x.shape[1]))
    count = np.zeros(dp_size, dtype=np.int64)
    members = np.zeros((dp_size, micro_batches), dtype=np.int64)
    for i in order:
        trial = (loads + xs[i]).max(axis=1)
        trial[count >= micro_batches] = np.inf
        r = int(np.argmin(trial))
        members[r, count[r]] = i
        count[r] += 1
        loads[r] += xs[i]
    improve_by_swaps(xs, members, max_swaps)
    return members


def _score(rel: np.ndarray) -> np.ndarray:
    """Lexicographic-ish step score from relative loads (..., ranks, K): worst load, then spread."""
    return rel.max(axis=(-2, -1)) + 1e-6 * np.square(rel - 1.0).sum(axis=(-2, -1))


def improve_by_swaps(xs: np.ndarray, members: np.ndarray, max_swaps: int) -> None:
    """Swap rows between the most loaded rank and any other rank while the step score drops (in place).

    Loads are taken relative to the step's mean rank load, so the score is the step's max/mean ratio.
    All (other rank, slot, slot) candidates are scored at once with numpy.
    """
    dp, mb = members.shape
    target = xs[members].sum(axis=1).mean(axis=0)  # unchanged by swaps inside the step
    xs = xs / np.where(target > 0, target, 1.0)
    loads = xs[members].sum(axis=1)  # (dp, K), balanced = 1
    current = float(_score(loads))
    for _ in range(max_swaps):
        worst = int(np.argmax(loads.max(axis=1)))
        # delta[r, a, b, k]: change of `worst`'s load when its slot a takes rank r's slot b
        delta = xs[members][:, None, :, :] - xs[members[worst]][None, :, None, :]
        trial = np.broadcast_to(loads, (dp, mb, mb, dp, loads.shape[1])).copy()
        ar = np.arange(dp)
        trial[ar, :, :, worst, :] += delta
        trial[ar, :, :, ar, :] -= delta
        scores = _score(trial)
        scores[worst] = np.inf
        best = np.unravel_index(int(np.argmin(scores)), scores.shape)
        if scores[best] >= current - 1e-12:
            return
        r, a, b = (int(v) for v in best)
        members[worst, a], members[r, b] = members[r, b], members[worst, a]
        loads = xs[members].sum(axis=1)
        current = float(_score(loads))


def plan_balanced(costs: PackCosts, dp_size: int, micro_batches: int = 1, leftover: str = "drop",
                  seed: int = 0, shuffle_steps: bool = True, refine_passes: int = 3,
                  target: float = 1.02) -> Plan:
    """The balanced plan (see module docstring). Deterministic for equal inputs and seed."""
    _check_sizes(dp_size, micro_batches)
    g = dp_size * micro_batches
    items, left = choose_items(costs.tokens, g, leftover)
    x = normalize(costs.matrix()[items]) if items.size else np.zeros((0, 2))
    steps = group_steps(x, g)
    layout = np.stack([steps[s][assign_step(x[steps[s]], dp_size, micro_batches)]
                       for s in range(steps.shape[0])]) if steps.size else np.zeros((0, dp_size, micro_batches),
                                                                                     dtype=np.int64)
    layout = refine_between_steps(x, layout, refine_passes, target)
    slots = items[layout]
    if shuffle_steps and slots.shape[0] > 1:
        perm = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED])).permutation(slots.shape[0])
        slots = slots[perm]
    slots = np.sort(slots, axis=2)  # micro-batch order inside a rank: by pack index (any order balances)
    return Plan(dp_size, micro_batches, slots, _mark_repeats(slots), left, leftover, "balanced")


def refine_between_steps(x: np.ndarray, layout: np.ndarray, passes: int, target: float,
                         neighbours: int = 8) -> np.ndarray:
    """Exchange single packs between a step above ``target`` and the steps nearest to it (by centroid
    in log coordinates) when that lowers the worse of the two steps' scores. Bounded: ``passes`` sweeps
    over the steps above target. Returns the new (steps, dp, mb) layout of row indices."""
    layout = layout.copy()
    n_steps, dp, mb = layout.shape
    if passes <= 0 or n_steps < 2:
        return layout
    mean = x.mean(axis=0) * mb
    xs = x / np.where(mean > 0, mean, 1.0)
    u = log_coordinates(x)
    loads = xs[layout].sum(axis=2)                      # (steps, dp, K)
    scores = ratios_of_loads(loads).max(axis=1)
    for _ in range(passes):
        changed = False
        ratios = ratios_of_loads(loads).max(axis=1)
        bad = np.flatnonzero(ratios > target)
        bad = bad[np.lexsort((bad, -ratios[bad]))]
        centroids = u[layout.reshape(n_steps, -1)].mean(axis=1)
        for s in bad.tolist():
            near = np.argsort(np.square(centroids - centroids[s]).sum(axis=1), kind="stable")[1:neighbours + 1]
            for t in near.tolist():
                swap = _best_swap(xs, layout[s], layout[t], loads[s], loads[t])
                if swap is None:
                    continue
                (ra, a, rb, b), new_score = swap
                if new_score >= max(scores[s], scores[t]) - 1e-9:
                    continue
                layout[s, ra, a], layout[t, rb, b] = layout[t, rb, b], layout[s, ra, a]
                for v in (s, t):
                    if mb > 1:
                        improve_by_swaps(xs, layout[v], 16)
                    loads[v] = xs[layout[v]].sum(axis=1)
                    scores[v] = ratios_of_loads(loads[v]).max()
                    centroids[v] = u[layout[v].reshape(-1)].mean(axis=0)
                changed = True
                if ratios_of_loads(loads[s]).max() <= target:
                    break
        if not changed:
            break
    return layout


def _excluding_max(loads: np.ndarray) -> np.ndarray:
    """(dp, K): for every rank, the per-column max over the *other* ranks (top-2 trick)."""
    dp = loads.shape[0]
    if dp == 1:
        return np.full_like(loads, -np.inf)
    order = np.argsort(-loads, axis=0, kind="stable")
    top1 = np.take_along_axis(loads, order[:1], axis=0)[0]
    top2 = np.take_along_axis(loads, order[1:2], axis=0)[0]
    out = np.broadcast_to(top1, loads.shape).copy()
    out[order[0], np.arange(loads.shape[1])] = top2
    return out


def _swap_ratio(loads: np.ndarray, ranks: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Worst max/mean of one step after adding ``delta`` (..., K) to the load of rank ``ranks`` (...)."""
    dp = loads.shape[0]
    excl = _excluding_max(loads)[ranks]              # (..., K)
    new_rank = loads[ranks] + delta                  # (..., K)
    new_max = np.maximum(excl, new_rank)
    new_mean = loads.mean(axis=0) + delta / dp
    ratio = np.where(new_mean > 1e-12, new_max / np.where(new_mean > 1e-12, new_mean, 1.0), 1.0)
    return ratio.max(axis=-1)


def _best_swap(xs: np.ndarray, ls: np.ndarray, lt: np.ndarray, loads_s: np.ndarray,
               loads_t: np.ndarray) -> tuple[tuple[int, int, int, int], float] | None:
    """Best single exchange of a row of step s (rank ra, slot a) with a row of step t (rb, b), scored
    by the worse of the two steps' new max/mean ratios. All candidates at once, O(G² · K)."""
    dp, mb = ls.shape
    g = dp * mb
    xa = xs[ls].reshape(g, -1)                        # rows leaving s
    xb = xs[lt].reshape(g, -1)                        # rows leaving t
    delta = xb[None, :, :] - xa[:, None, :]           # (ga, gb, K): change of s's rank load
    rank_of = np.repeat(np.arange(dp), mb)
    ra = np.broadcast_to(rank_of[:, None], (g, g))
    rb = np.broadcast_to(rank_of[None, :], (g, g))
    score = np.maximum(_swap_ratio(loads_s, ra, delta), _swap_ratio(loads_t, rb, -delta))
    i = int(np.argmin(score))
    a_i, b_i = divmod(i, g)
    return (a_i // mb, a_i % mb, b_i // mb, b_i % mb), float(score.flat[i])


def plan_round_robin(costs: PackCosts, dp_size: int, micro_batches: int = 1, leftover: str = "drop") -> Plan:
    """Baseline: packs in their given order dealt to ranks in turn (what an online loader does)."""
    _check_sizes(dp_size, micro_batches)
    g = dp_size * micro_batches
    items, left = choose_items(costs.tokens, g, leftover)
    slots = items.reshape(-1, micro_batches, dp_size).transpose(0, 2, 1).copy()
    return Plan(dp_size, micro_batches, slots, _mark_repeats(slots), left, leftover, "round_robin")


def _check_sizes(dp_size: int, micro_batches: int) -> None:
    if dp_size < 1:
        raise ValueError(f"dp_size must be >= 1, got {dp_size}")
    if micro_batches < 1:
        raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")


def _mark_repeats(slots: np.ndarray) -> np.ndarray:
    flat = slots.reshape(-1)
    seen: set[int] = set()
    rep = np.zeros(flat.shape[0], dtype=bool)
    for i, p in enumerate(flat.tolist()):
        if p in seen:
            rep[i] = True
        seen.add(p)
    return rep.reshape(slots.shape)
