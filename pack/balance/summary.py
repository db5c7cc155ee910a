"""How balanced a plan is: per-step max/mean ratios of each cost and their summary (report.json)."""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from pack.balance.plan import PackCosts, Plan


@dataclass(frozen=True)
class BalanceSummary:
    """Per-step max/mean of rank costs, summarized over steps, per cost."""
    steps: int
    per_cost: dict  # cost name -> {"max": .., "mean": .., "p99": .., "aggregate": ..}

    def to_dict(self) -> dict:
        return {"steps": self.steps, **self.per_cost}


def step_ratios(plan: Plan, costs: PackCosts) -> dict[str, np.ndarray]:
    """For every cost, the per-step max/mean over ranks of the rank's summed cost."""
    out: dict[str, np.ndarray] = {}
    for name in ("attention", "vit", "vit_patches", "vit_patches_sq", "tokens"):
        c = np.asarray(getattr(costs, name), dtype=np.float64)
        if plan.steps == 0:
            out[name] = np.zeros(0)
            continue
        loads = c[plan.slots].sum(axis=2)  # (steps, ranks)
        mean = loads.mean(axis=1)
        mx = loads.max(axis=1)
        out[name] = np.where(mean > 0, mx / np.where(mean > 0, mean, 1.0), 1.0)
    return out


# Steps whose mean rank load is below this fraction of the average step's are left out of
# ``max_loaded``: a step where one rank has a 64-token thumbnail and the others no image has a ViT
# max/mean of dp_size, but costs nothing.
LOADED_STEP_FRACTION = 0.1


def _r(v: float) -> float:
    return round(float(v), 4)


def summarize(plan: Plan, costs: PackCosts) -> BalanceSummary:
    """Per cost, over steps, of the per-step max/mean ratio: ``max``, ``max_loaded`` (steps carrying at
    least 10% of the average step load), ``p99``, ``mean``; and ``aggregate`` = Σ max / Σ mean, the
    epoch's time at the slowest rank over the ideal time (what balance buys in throughput)."""
    per: dict[str, dict] = {}
    for name, r in step_ratios(plan, costs).items():
        c = np.asarray(getattr(costs, name), dtype=np.float64)
        if r.size:
            loads = c[plan.slots].sum(axis=2)
            step_mean = loads.mean(axis=1)
            agg = float(loads.max(axis=1).sum() / step_mean.sum()) if step_mean.sum() > 0 else 1.0
            loaded = step_mean >= LOADED_STEP_FRACTION * step_mean.mean() if step_mean.mean() > 0 else step_mean >= 0
            per[name] = {"max": _r(r.max()), "max_loaded": _r(r[loaded].max()) if loaded.any() else None,
                         "p99": _r(np.percentile(r, 99)), "mean": _r(r.mean()), "aggregate": _r(agg)}
        else:
            per[name] = {"max": None, "max_loaded": None, "p99": None, "mean": None, "aggregate": None}
    return BalanceSummary(plan.steps, per)
