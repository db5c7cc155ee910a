"""Fill numbers of a packing plan (``PackStats``) and the trivial lower bound on packs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PackStats:
    """Fill numbers of a plan: the report of the `pack` stage uses these."""
    items: int
    packs: int
    capacity: int
    tokens: int
    lower_bound: int          # ceil(tokens / capacity): no plan can use fewer packs

    @property
    def fill(self) -> float:
        return self.tokens / (self.packs * self.capacity) if self.packs else 1.0

    @property
    def padding(self) -> float:
        return 1.0 - self.fill

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "packs": self.packs, "capacity": self.capacity, "tokens": self.tokens,
                "lower_bound": self.lower_bound, "fill": round(self.fill, 6), "padding": round(self.padding, 6),
                "packs_over_lower_bound": self.packs - self.lower_bound}


def pack_stats(lengths: Any, bins: np.ndarray, capacity: int) -> PackStats:
    lengths = np.asarray(lengths, dtype=np.int64)
    tokens = int(lengths.sum())
    packs = int(bins.max()) + 1 if bins.size else 0
    return PackStats(int(lengths.size), packs, int(capacity), tokens, -(-tokens // capacity) if tokens else 0)


def lower_bound(lengths: Any, capacity: int) -> int:
    """ceil(sum / capacity): no plan uses fewer bins."""
    total = int(np.asarray(lengths, dtype=np.int64).sum())
    return -(-total // capacity) if total else 0
