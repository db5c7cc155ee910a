"""Mixture targets: the recipe's ratios turned into one target share per *leaf group*.

The seeds publish mixtures at two levels — MindVL's Table 11 gives six category shares and, inside
each category, one line per dataset. A leaf group is therefore either

* ``"category/source"`` — a source named in ``within[category]`` (second level), or
* ``"category"`` — a category listed in ``ratios`` without a ``within`` entry (all its sources), or
* ``"source"`` — a source listed in ``ratios`` when the mixture is flat ``by: source``.

Its target share of the whole mixture is ``ratio(category) * weight(source) / sum(weights in category)``.
Second-level numbers are *weights* (normalised within their category) because the seeds publish
counts whose percentages do not add up (Table 11's dataset lines sum to 56.13% under a 55.81% caption
subtotal). First-level ratios must sum to 1 unless ``normalize`` says they are weights too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

UNLISTED = ""  # label of rows that belong to no listed group


@dataclass(frozen=True)
class Targets:
    """Leaf groups with their target share (sum 1) and repeat cap, plus how leaves roll up to level 1."""
    by: str
    shares: dict[str, float]        # leaf -> share of the whole mixture
    level1: dict[str, float]        # level-1 group (category or source) -> share
    parent: dict[str, str]          # leaf -> its level-1 group
    max_repeat: dict[str, float]    # leaf -> cap on copies per sample (1: no up-sampling)

    @property
    def two_level(self) -> bool:
        return any(leaf != parent for leaf, parent in self.parent.items())

    def label_rows(self, categories: list[str], sources: list[str]) -> np.ndarray:
        """The leaf label of every row (UNLISTED for rows that no ratio names)."""
        out = np.empty(len(sources), dtype=object)
        for i, (cat, src) in enumerate(zip(categories, sources)):
            out[i] = self.label(cat, src)
        return out

    def label(self, category: str, source: str) -> str:
        if self.by == "source":
            return source if source in self.shares else UNLISTED
        leaf = f"{category}/{source}"
        if leaf in self.shares:
            return leaf
        return category if category in self.shares else UNLISTED


def check_weights(name: str, weights: Mapping[str, Any]) -> None:
    if not weights:
        raise ValueError(f"{name}: at least one ratio is needed")
    for key, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name}.{key}: every ratio must be a positive number, got {value!r}")


def build_targets(by: str, ratios: Mapping[str, float], within: Mapping[str, Mapping[str, float]],
                  normalize: bool, tolerance: float, max_repeat: float | Mapping[str, float]) -> Targets:
    """Validate the settings and compute every leaf's share; raises ValueError naming the setting."""
    check_weights("ratios", ratios)
    total = float(sum(ratios.values()))
    if not normalize and abs(total - 1.0) > tolerance:
        raise ValueError(f"ratios: ratios sum to {total:g}, not 1 (set normalize: true if they are weights)")
    if within and by != "category":
        raise ValueError("within: a second level (sources within a category) needs by: category")
    level1 = {g: float(r) / total for g, r in ratios.items()}
    shares: dict[str, float] = {}
    parent: dict[str, str] = {}
    for group, share in level1.items():
        sub = within.get(group)
        if not sub:
            shares[group], parent[group] = share, group
            continue
        check_weights(f"within.{group}", sub)
        sub_total = float(sum(sub.values()))
        for source, w in sub.items():
            leaf = f"{group}/{source}"
            shares[leaf], parent[leaf] = share * float(w) / sub_total, group
    unknown = set(within) - set(ratios)
    if unknown:
        raise ValueError(f"within: categories {sorted(unknown)} have no ratio in ratios")
    return Targets(by, shares, level1, parent, _caps(max_repeat, parent))


def _caps(max_repeat: float | Mapping[str, float], parent: Mapping[str, str]) -> dict[str, float]:
    """Per-leaf cap: a number for every group, or a mapping by source, category or '*' (default 1)."""
    if isinstance(max_repeat, Mapping):
        caps = {}
        for key, value in max_repeat.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
                raise ValueError(f"max_repeat.{key}: must be a number >= 1, got {value!r}")
        for leaf, group in parent.items():
            source = leaf.split("/", 1)[1] if "/" in leaf else leaf
            caps[leaf] = float(max_repeat.get(source, max_repeat.get(group, max_repeat.get("*", 1.0))))
        return caps
    if isinstance(max_repeat, bool) or not isinstance(max_repeat, (int, float)) or max_repeat < 1:
        raise ValueError(f"max_repeat: must be a number >= 1, got {max_repeat!r}")
    return {leaf: float(max_repeat) for leaf in parent}
