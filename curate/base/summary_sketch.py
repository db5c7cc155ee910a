"""Mergeable summaries for report.json: what a stage's ``summary_partial`` returns per batch of kept rows.

Why: a stage's report numbers (score percentiles per source, OCR coverage, problem codes) used to
reach the driver as one row per kept sample — 10-30 bytes a row, 10-30 GB at 10^9 rows. A summary is
instead a small table of ``(group, metric, value, count)`` rows, computed on the workers per batch
and merged (``merge``) in any order and any grouping, so the driver holds O(stages x groups x bins):

* a **counter** is a row with a null ``value``: ``count`` is the tally (codes per source, rows read,
  samples below a threshold). Exact at any size.
* a **distribution** is one row per distinct value with its multiplicity (NaN/missing values are
  counted under a null value). Exact while a (group, metric) holds at most ``EXACT_LIMIT`` values:
  its percentiles and mean are then numpy's over the very same multiset, so report.json shows what
  it showed when every value came to the driver. Past ``EXACT_LIMIT`` values the values are rounded
  to ``MANTISSA_BITS`` significant bits (a log-scale histogram, idempotent), which bounds the bins to
  ``2**MANTISSA_BITS`` per power of two spanned: a percentile or mean is then within a relative
  error of ``2**-(MANTISSA_BITS + 1)`` (1.2e-4: +-0.0001 on a score of 0.8) of the exact one.

Determinism: whether a (group, metric) is rounded depends only on its total count (a partial is
rounded only when it alone holds more than EXACT_LIMIT values, and then so does the total), and the
rounding of each value does not depend on the others, so the result is the same for every batching,
partitioning and merge order.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCHEMA = pa.schema([("group", pa.string()), ("metric", pa.string()), ("value", pa.float64()), ("count", pa.int64())])
EXACT_LIMIT = 50_000
MANTISSA_BITS = 12


def empty() -> pa.Table:
    return SCHEMA.empty_table()


def counters(groups: Sequence[str] | pa.Array | pa.ChunkedArray, metric: str,
             weights: np.ndarray | None = None) -> pa.Table:
    """Per distinct group, the rows of `groups` (or the sum of their `weights`) under `metric`."""
    g = _strings(groups)
    table = pa.table({"group": g, "w": pa.array(np.ones(len(g), np.int64) if weights is None
                                                 else np.asarray(weights, dtype=np.int64))})
    sums = table.group_by("group", use_threads=False).aggregate([("w", "sum")])
    n = sums.num_rows
    return pa.table({"group": sums.column("group"), "metric": pa.array([metric] * n, pa.string()),
                     "value": pa.nulls(n, pa.float64()), "count": sums.column("w_sum").cast(pa.int64())},
                    schema=SCHEMA)


def counter(group: str, metric: str, count: int) -> pa.Table:
    return pa.table({"group": [group], "metric": [metric], "value": pa.nulls(1, pa.float64()), "count": [int(count)]},
                    schema=SCHEMA)


def distribution(groups: Sequence[str] | pa.Array | pa.ChunkedArray, metric: str,
                 values: np.ndarray | pa.Array | pa.ChunkedArray) -> pa.Table:
    """Per group, the multiplicity of each value (NaN and null: a null value), under `metric`."""
    v = np.asarray(values.to_numpy(zero_copy_only=False) if isinstance(values, (pa.Array, pa.ChunkedArray))
                   else values, dtype=np.float64)
    table = pa.table({"group": _strings(groups), "value": pa.array(v, mask=np.isnan(v))})
    hist = table.group_by(["group", "value"], use_threads=False).aggregate([([], "count_all")])
    n = hist.num_rows
    return pa.table({"group": hist.column("group"), "metric": pa.array([metric] * n, pa.string()),
                     "value": hist.column("value"), "count": hist.column("count_all")}, schema=SCHEMA)


def merge(parts: pa.Table) -> pa.Table:
    """One row per (group, metric, value): counts summed; a (group, metric) holding more than
    EXACT_LIMIT values is rounded (module docstring). Associative and order-free."""
    if parts.num_rows == 0:
        return empty()
    merged = _sum(parts)
    totals = merged.filter(pc.is_valid(merged.column("value"))).group_by(["group", "metric"], use_threads=False) \
        .aggregate([("count", "sum")])
    big = totals.filter(pc.greater(totals.column("count_sum"), EXACT_LIMIT))
    if big.num_rows == 0:
        return merged
    over = set(zip(big.column("group").to_pylist(), big.column("metric").to_pylist()))
    hit = np.fromiter(((g, m) in over for g, m in zip(merged.column("group").to_pylist(),
                                                      merged.column("metric").to_pylist())), bool, merged.num_rows)
    values = np.asarray(merged.column("value").to_numpy(zero_copy_only=False), dtype=np.float64)
    rounded = np.where(hit, round_values(values), values)
    return _sum(merged.set_column(2, "value", pa.array(rounded, mask=np.isnan(rounded))))


def round_values(values: np.ndarray) -> np.ndarray:
    """Each value to MANTISSA_BITS significant bits (round half to even; idempotent; 0, inf, NaN kept)."""
    mant, exp = np.frexp(values)
    scale = float(2 ** (MANTISSA_BITS + 1))
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(values), np.ldexp(np.round(mant * scale) / scale, exp), values)


def as_partials(table: pa.Table, partial: Callable[[pa.Table], pa.Table]) -> pa.Table:
    """`table` when it is summary rows already, else ``partial(table)``: ``Stage.summarize`` gets merged
    partials from the runner, and kept rows when called directly (notebooks, ``stage.run(...).kept``)."""
    if table.num_columns == 0 or ("metric" in table.column_names and "count" in table.column_names):
        return table if table.num_columns else empty()   # no columns: no partial came (no kept rows)
    return partial(table)


def _sum(parts: pa.Table) -> pa.Table:
    hist = parts.group_by(["group", "metric", "value"], use_threads=False).aggregate([("count", "sum")])
    out = pa.table({"group": hist.column("group"), "metric": hist.column("metric"), "value": hist.column("value"),
                    "count": hist.column("count_sum")}, schema=SCHEMA)
    return out.sort_by([("group", "ascending"), ("metric", "ascending"), ("value", "ascending")])


def _strings(groups: Sequence[str] | pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(groups, pa.ChunkedArray):
        groups = groups.combine_chunks()
    arr = groups if isinstance(groups, pa.Array) else pa.array(list(groups), pa.string())
    return pc.fill_null(arr.cast(pa.string()), "")


class Summary:
    """The merged summary, read by group and metric (what ``Stage.summarize`` gets, via ``read``)."""

    def __init__(self, parts: pa.Table):
        table = merge(parts.select(SCHEMA.names).cast(SCHEMA)) if parts.num_rows else empty()
        self._rows: dict[tuple[str, str], tuple[int, list[tuple[float, int]]]] = {}
        for g, m, v, c in zip(*(table.column(n).to_pylist() for n in SCHEMA.names)):
            missing, values = self._rows.setdefault((g, m), (0, []))
            if v is None:
                self._rows[(g, m)] = (missing + c, values)
            else:
                values.append((v, c))

    def groups(self, metric: str | None = None) -> list[str]:
        return sorted({g for g, m in self._rows if metric is None or m == metric})

    def count(self, group: str, metric: str) -> int:
        """A counter's tally (a distribution's: its missing values)."""
        return self._rows.get((group, metric), (0, []))[0]

    def counts(self, group: str, prefix: str) -> dict[str, int]:
        """{name: tally} of the counters named `prefix` + name in `group`."""
        return {m[len(prefix):]: c for (g, m), (c, _) in sorted(self._rows.items())
                if g == group and m.startswith(prefix) and c}

    def distribution(self, group: str, metric: str) -> "Distribution":
        return Distribution(self._rows.get((group, metric), (0, []))[1])


class Distribution:
    """Values with multiplicities (ascending), exact or rounded (module docstring)."""

    def __init__(self, pairs: Iterable[tuple[float, int]]):
        pairs = sorted(pairs)
        self.values = np.asarray([v for v, _ in pairs], dtype=np.float64)
        self.counts = np.asarray([c for _, c in pairs], dtype=np.int64)
        self.size = int(self.counts.sum())
        self.exact = self.size <= EXACT_LIMIT

    def expanded(self) -> np.ndarray:
        return np.repeat(self.values, self.counts)

    def percentile(self, q: float) -> float:
        if self.exact:
            return float(np.percentile(self.expanded(), q))
        rank = q / 100.0 * (self.size - 1)
        lo, hi = int(math.floor(rank)), int(math.ceil(rank))
        ends = np.cumsum(self.counts)
        at_lo = self.values[np.searchsorted(ends, lo, side="right")]
        at_hi = self.values[np.searchsorted(ends, hi, side="right")]
        return float(at_lo + (at_hi - at_lo) * (rank - lo))

    def mean(self) -> float:
        if self.exact:
            return float(self.expanded().mean())
        return math.fsum(float(v) * int(c) for v, c in zip(self.values, self.counts)) / self.size

    def below(self, threshold: float) -> int:
        return int(self.counts[self.values < threshold].sum())
