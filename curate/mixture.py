"""Mixture: make the kept data match the recipe's ratios, by samples or by tokens.

The seeds fix data mixtures per training stage (MindVL's per-stage tables, multimodal:text 8:2 or
1:1). Offline we can only *down*-sample to a ratio without inventing data, so the largest total that
satisfies every ratio is kept: T = min_g W_g / r_g, group g keeps about r_g * T of its weight.
Which samples are kept is decided by a seeded hash of the key — independent of row order and of
how Ray split the data — so the same recipe and seed always select the same samples.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa

from curate.base import records as R
from curate.base import Resources, Stage, register


def seeded_rank(keys: list[str], seed: int) -> np.ndarray:
    """A permutation key per sample: blake2b(seed, key) as uint64 — stable across runs and machines."""
    salt = seed.to_bytes(8, "little", signed=True)
    return np.array([int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8, key=salt).digest(), "little")
                     for k in keys], dtype=np.uint64)


@register
class MixtureStage(Stage):
    name = "mixture"
    description = "Down-sample groups (categories or sources) to the recipe's mixture ratios, by samples or tokens."
    requires = ("key", "source", "category")
    resources = Resources(cpus=1)
    global_columns = ("source", "category", "num_tokens")

    @dataclass
    class Config:
        by: Literal["category", "source"] = "category"
        unit: Literal["samples", "tokens"] = "samples"
        ratios: dict[str, float] = field(default_factory=dict)
        tolerance: float = field(default=1e-6, metadata={"doc": "allowed deviation of the ratio sum from 1"})

    def validate_config(self) -> None:
        r = self.config.ratios
        if not r:
            raise ValueError("ratios: at least one ratio is needed")
        if any((not isinstance(v, (int, float))) or v <= 0 for v in r.values()):
            raise ValueError("ratios: every ratio must be a positive number")
        total = float(sum(r.values()))
        if abs(total - 1.0) > self.config.tolerance:
            raise ValueError(f"ratios: ratios sum to {total:g}, not 1")

    def decide(self, table: pa.Table) -> pa.Table:
        cfg = self.config
        groups = table.column(cfg.by).to_pylist()
        if cfg.unit == "tokens":
            if "num_tokens" not in table.column_names or table.column("num_tokens").null_count == table.num_rows:
                raise ValueError("mixture by tokens needs num_tokens: put count_tokens before the mixture")
            weight = np.asarray(table.column("num_tokens").fill_null(0).to_numpy(zero_copy_only=False), dtype=np.float64)
        else:
            weight = np.ones(table.num_rows)
        ranks = seeded_rank(table.column("key").to_pylist(), self.context.seed)
        group_arr = np.array(groups, dtype=object)
        totals = {g: float(weight[group_arr == g].sum()) for g in cfg.ratios}
        feasible = [totals[g] / r for g, r in cfg.ratios.items() if totals[g] > 0]
        scale = min(feasible) if feasible else 0.0
        reasons: list[str | None] = [None] * table.num_rows
        achieved: dict[str, float] = {}
        for g in sorted(set(groups)):
            idx = np.flatnonzero(group_arr == g)
            if g not in cfg.ratios:
                for i in idx:
                    reasons[i] = "mixture:unlisted_group"
                continue
            budget = cfg.ratios[g] * scale
            order = idx[np.argsort(ranks[idx], kind="stable")]
            cum = np.cumsum(weight[order])
            # keep the prefix whose weight fits the budget (at least the first item when budget > 0)
            n_keep = int(np.searchsorted(cum, budget * (1 + 1e-9), side="right"))
            for i in order[n_keep:]:
                reasons[i] = "mixture:downsampled"
            achieved[g] = float(cum[n_keep - 1]) if n_keep else 0.0
        kept_total = sum(achieved.values()) or 1.0
        self.report = {"mixture": {
            "by": cfg.by, "unit": cfg.unit, "target": dict(cfg.ratios),
            "available": totals, "kept": achieved,
            "achieved": {g: round(v / kept_total, 4) for g, v in achieved.items()},
        }}
        return pa.table({
            R.ORDINAL: table.column(R.ORDINAL),
            R.STATUS: pa.array([R.KEPT if r is None else R.REJECTED for r in reasons], type=pa.string()),
            R.REASON: pa.array(reasons, type=pa.string()),
            R.DETAIL: pa.array([None] * table.num_rows, type=pa.string()),
        })
