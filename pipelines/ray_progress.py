"""Progress counters of a Ray run: one small actor holds the rows and bytes each pass has done,
added per batch by the tasks (without waiting) and read by the driver's progress thread."""
from __future__ import annotations

from typing import Any


class _Tallies:
    """A Ray actor holding the rows and bytes done of each pass, added per batch by its tasks."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}

    def add(self, key: str, rows: int, nbytes: int) -> None:
        done = self.counts.setdefault(key, [0, 0])
        done[0] += rows
        done[1] += nbytes

    def read(self, key: str) -> tuple[int, int]:
        rows, nbytes = self.counts.get(key, (0, 0))
        return rows, nbytes


class RayCounter:
    """A pass's counter on the _Tallies actor: workers add without waiting (one call per batch), the
    driver's progress thread reads it."""

    def __init__(self, actor: Any, key: str):
        self.actor, self.key = actor, key

    def add(self, rows: int, nbytes: int = 0) -> None:
        if rows or nbytes:
            self.actor.add.remote(self.key, rows, nbytes)

    def read(self) -> tuple[int, int]:
        import ray
        return tuple(ray.get(self.actor.read.remote(self.key), timeout=10))   # type: ignore[return-value]
