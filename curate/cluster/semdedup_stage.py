"""The ``semantic_dedup`` stage: near-duplicates by embedding cosine, compared inside leaf clusters.

Needs ``embed`` and ``cluster`` before it. Rows are compared only with rows of the same leaf and the
same ``partition_by`` values (default: category — with image embeddings, a question about a photo
must not remove the caption sample of that photo). Each such group is one per-cluster reduce
(``curate/cluster/semdedup.py``): in preference order (``survivor``: quality column, hard or easy)
the first undecided row is kept and every undecided row with cosine above ``1 - eps`` to it is
rejected naming it (the leader algorithm), so every removed row is close to a KEPT row even where
pairs chain; the report gives the components of the pairs, their largest, and the lowest cosine of
a removed row to its kept row. Rows get ``semdedup_group`` (the survivor's key, for rows in a
group of two or more) and ``semdedup_group_size``, as the exact/near dedup stages report theirs.
Rows without an embedding or a cluster path pass untouched.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.base import records as R
from curate.base.global_data import StepResult
from curate.cluster import columns as C
from curate.cluster.kmeans import seeded_hash
from curate.cluster.semdedup import dedup_leaf, preference_order
from curate.base import Resources, Stage, register

GROUP = "semdedup_group"
GROUP_SIZE = "semdedup_group_size"
NEAR_DUPLICATE = "semantic_dedup:near_duplicate"
GROUP_KEY = "_semdedup_key"
MEMBERS = "_semdedup_members"
COMPONENT_SIZE = "_semdedup_component_size"
SIMILARITY = "_semdedup_cosine"
REDUCE_PARTITIONS = 16


@register
class SemanticDedup(Stage):
    name: ClassVar[str] = "semantic_dedup"
    description: ClassVar[str] = ("SemDeDup: inside each leaf cluster, rows whose embedding cosine exceeds 1 - eps "
                                  "form groups; one survivor per group (quality column, hard or easy).")
    requires: ClassVar[tuple[str, ...]] = ("key", "source", "category", C.EMBEDDING, C.CLUSTER_PATH, C.CLUSTER_DISTANCES)
    adds: ClassVar[Mapping[str, pa.DataType]] = {GROUP: pa.string(), GROUP_SIZE: pa.int32()}
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=4096, kind="task")
    global_columns: ClassVar[tuple[str, ...] | None] = ("source", C.EMBEDDING, C.CLUSTER_PATH, C.CLUSTER_DISTANCES)

    @dataclass
    class Config:
        eps: float = field(default=0.01, metadata={
            "doc": "Remove rows with cosine > 1 - eps to a better copy (NeMo Curator's default 0.01)."})
        survivor: Literal["hard", "easy", "quality"] = field(default="hard", metadata={
            "doc": "Which copy stays: hard = farthest from the centroid (SemDeDup), easy = closest, "
                   "quality = highest quality_column."})
        quality_column: str | None = field(default=None, metadata={
            "doc": "Numeric column for survivor: quality (e.g. clip_score); missing values rank last."})
        column: str = field(default=C.EMBEDDING, metadata={"doc": "The embedding column."})
        partition_by: list[str] = field(default_factory=lambda: ["category"], metadata={
            "doc": "Rows are only compared with rows that share these columns' values. Default category: a "
                   "question about a photo is not a duplicate of that photo's caption sample."})
        categories: list[str] | None = field(default=None, metadata={
            "doc": "Compare only rows of these categories (others pass untouched); None: all. With image "
                   "embeddings, e.g. [caption]: several questions about one image are not duplicates."})
        report_groups: int = field(default=10, metadata={"doc": "Largest groups listed in the report."})

    def __init__(self, config: Any = None, context: Any = None, **settings: Any):
        super().__init__(config, context, **settings)
        c = self.config
        wanted = ["source", c.column, C.CLUSTER_PATH, C.CLUSTER_DISTANCES, *([c.quality_column] if c.quality_column else []),
                  *c.partition_by, *(["category"] if c.categories else [])]
        self.global_columns = tuple(col for col in dict.fromkeys(wanted) if col != "key")

    def validate_config(self) -> None:
        c = self.config
        if not 0.0 <= float(c.eps) < 1.0:
            raise ValueError(f"eps: must be in [0, 1), got {c.eps}")
        if c.survivor == "quality" and not c.quality_column:
            raise ValueError("quality_column: required when survivor is quality")
        if c.report_groups < 0:
            raise ValueError("report_groups: must be >= 0")

    def global_step(self, data: Any) -> Any:
        """Key every row by its comparison group, shuffle so that each group meets in one call, decide
        there (``_decide_groups``), then sum the report: per-batch counts and each batch's largest groups
        (``report_groups`` of them), so the driver never holds the duplicate rows themselves."""
        keyed = data.map_batches(self._with_group_key)
        reduced = keyed.shuffle_reduce(GROUP_KEY, self._reduce, REDUCE_PARTITIONS).materialize()
        compared = reduced.aggregate(_compared_partial, _sum_counts)
        top = self.config.report_groups
        groups = reduced.aggregate(lambda b: _groups_partial(b, top), lambda t: _groups_combine(t, top))
        return StepResult(reduced.map_batches(_decisions_only), {"semantic_dedup": self._report(groups, compared)})

    def _valid(self, table: pa.Table) -> np.ndarray:
        c = self.config
        valid = C.valid_mask(table, [c.column, C.CLUSTER_PATH, C.CLUSTER_DISTANCES])
        if c.categories is not None:
            valid &= np.isin(np.asarray(table.column("category").to_pylist(), dtype=object), list(c.categories))
        return valid

    def _with_group_key(self, batch: pa.Table) -> pa.Table:
        """`leaf|partition values` for rows that are compared; a key of their own for the others."""
        valid = self._valid(batch)
        leaf = [p[-1] if p else None for p in batch.column(C.CLUSTER_PATH).to_pylist()]
        parts = [batch.column(col).to_pylist() for col in self.config.partition_by]
        ords = batch.column(R.ORDINAL).to_pylist()
        keys = [("|".join([str(leaf[i]), *(str(v[i]) for v in parts)]) if valid[i] else f"~{ords[i]}")
                for i in range(batch.num_rows)]
        return batch.append_column(GROUP_KEY, pa.array(keys, pa.string()))

    def _reduce(self, part: pa.Table) -> pa.Table:
        return self._decide_groups(part.drop_columns([GROUP_KEY]))

    def _decide_groups(self, table: pa.Table) -> pa.Table:
        """Decisions for whole comparison groups (+ `source` and `_members` for the report)."""
        c = self.config
        table = C.by_ordinal(table)
        n = table.num_rows
        ordinals = np.asarray(table.column(R.ORDINAL).to_numpy(zero_copy_only=False), dtype=np.int64)
        valid = self._valid(table)
        idx = np.flatnonzero(valid)
        keys_all = table.column("key").to_pylist()
        survivor = np.arange(n)
        size = np.ones(n, dtype=np.int64)
        best = np.full(n, np.nan)
        comp = np.ones(n, dtype=np.int64)
        if len(idx):
            s_local, size_local, best_local, comp_local = self._groups(table.take(pa.array(idx, pa.int64())))
            survivor[idx], size[idx], best[idx], comp[idx] = idx[s_local], size_local, best_local, comp_local
        reasons: list[str | None] = [None] * n
        details: list[str | None] = [None] * n
        members: list[list[str]] = [[] for _ in range(n)]
        for i in np.flatnonzero(survivor != np.arange(n)):
            reasons[i] = NEAR_DUPLICATE
            details[i] = (f"cosine {best[i]:.4f} > {1 - c.eps:.4f} to kept {keys_all[survivor[i]]} "
                          f"(group of {size[i]}, component of {comp[i]})")
            members[survivor[i]].append(keys_all[i])
        group = pa.array([keys_all[survivor[i]] if size[i] > 1 else None for i in range(n)], pa.string())
        group_size = pa.array([int(size[i]) if valid[i] else None for i in range(n)], pa.int32())
        return C.decisions(ordinals, reasons, details, {GROUP: group, GROUP_SIZE: group_size,
                                                        "source": table.column("source"),
                                                        MEMBERS: pa.array([m[:5] for m in members], pa.list_(pa.string())),
                                                        COMPONENT_SIZE: pa.array(comp, pa.int64()),
                                                        SIMILARITY: pa.array(best, pa.float64(), mask=np.isnan(best))})

    def _groups(self, rows: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per-leaf reduce over the valid rows: (kept row index, group size, cosine to it, component size) per row."""
        c = self.config
        emb = C.matrix(rows.column(c.column))
        paths = C.matrix(rows.column(C.CLUSTER_PATH), np.int64)
        dists = C.matrix(rows.column(C.CLUSTER_DISTANCES), np.float64)
        hashes = seeded_hash(rows.column("key").to_pylist(), self.context.seed)
        quality = None
        if c.survivor == "quality":
            quality = np.asarray(rows.column(c.quality_column).to_numpy(zero_copy_only=False), dtype=np.float64)
        leaf = self._compare_groups(rows, paths[:, -1])
        order = np.argsort(leaf, kind="stable")
        bounds = np.flatnonzero(np.diff(leaf[order])) + 1
        survivor = np.arange(len(leaf))
        size = np.ones(len(leaf), dtype=np.int64)
        best = np.full(len(leaf), np.nan)
        comp = np.ones(len(leaf), dtype=np.int64)
        for members in np.split(order, bounds):
            if len(members) < 2:
                continue
            pref = preference_order(None if quality is None else quality[members], dists[members, -1],
                                    hashes[members], c.survivor)
            g = dedup_leaf(emb[members], pref, c.eps)
            survivor[members], size[members], best[members] = members[g.survivor], g.group_size, g.similarity
            comp[members] = g.component_size
        return survivor, size, best, comp

    def _compare_groups(self, rows: pa.Table, leaf: np.ndarray) -> np.ndarray:
        """One id per (leaf, partition_by values): the rows that are compared with each other."""
        if not self.config.partition_by:
            return leaf
        values = [rows.column(col).to_pylist() for col in self.config.partition_by]
        ids: dict[tuple[Any, ...], int] = {}
        return np.array([ids.setdefault((int(lf), *(v[i] for v in values)), len(ids)) for i, lf in enumerate(leaf)],
                        dtype=np.int64)

    def _report(self, groups: dict[str, Any], compared: dict[str, int]) -> dict[str, Any]:
        """Groups, removals per source and the largest groups, from the summed per-batch counts."""
        return {"eps": self.config.eps, "survivor": self.config.survivor, "rows": compared["compared"],
                "not_compared": compared["rows"] - compared["compared"], "groups": groups["groups"],
                "removed": groups["removed"], "group_size_histogram": C.size_histogram(*groups["sizes"]),
                "components": sum(groups["components"].values()),
                "largest_component": max(groups["components"], default=0),
                "component_size_histogram": C.size_histogram(np.array(list(groups["components"]), dtype=np.int64),
                                                             np.array(list(groups["components"].values()), dtype=np.int64)),
                "lowest_cosine_to_kept": groups["lowest_cosine"],
                "removed_per_source": groups["removed_per_source"], "largest_groups": groups["largest"]}


def _compared_partial(batch: pa.Table) -> pa.Table:
    return pa.table({"rows": [batch.num_rows], "compared": [batch.num_rows - batch.column(GROUP_SIZE).null_count]})


def _sum_counts(parts: pa.Table) -> dict[str, int]:
    return {name: int(pc.sum(parts.column(name)).as_py() or 0) if parts.num_rows else 0 for name in ("rows", "compared")}


GROUP_PARTS = pa.schema([("what", pa.string()), ("name", pa.string()), ("count", pa.int64()),
                         ("members", pa.list_(pa.string())), ("value", pa.float64())])


def _groups_partial(batch: pa.Table, top: int) -> pa.Table:
    """Per batch of decisions: survivors per group size, removals per source, and the batch's `top`
    largest groups (size, then survivor key) with their listed members."""
    dup = batch.filter(pc.is_valid(batch.column(GROUP)))
    kept = np.asarray(pc.equal(dup.column(R.STATUS), R.KEPT).to_numpy(zero_copy_only=False), dtype=bool)
    sizes = dup.column(GROUP_SIZE).to_pylist()
    keys, members, sources = dup.column(GROUP).to_pylist(), dup.column(MEMBERS).to_pylist(), dup.column("source").to_pylist()
    # rows per component size, every row of a component (a kept row may head a group of one in it)
    # counted once: the combine divides by the size
    comps = [c for c in batch.column(COMPONENT_SIZE).to_pylist() if c > 1]
    counts = Counter([("size", str(sizes[i])) for i in np.flatnonzero(kept)] +
                     [("removed", sources[i]) for i in np.flatnonzero(~kept)] +
                     [("component_rows", str(c)) for c in comps])
    rows = [(what, name, n, [], None) for (what, name), n in sorted(counts.items())]
    largest = sorted(np.flatnonzero(kept), key=lambda i: (-sizes[i], keys[i]))[:top]
    rows += [("largest", keys[i], sizes[i], members[i], None) for i in largest]
    cosines = dup.column(SIMILARITY).drop_null()
    if len(cosines):
        rows.append(("lowest_cosine", "", 0, [], float(np.min(cosines.to_numpy()))))
    return pa.table([pa.array([r[j] for r in rows], f.type) for j, f in enumerate(GROUP_PARTS)], schema=GROUP_PARTS)


def _groups_combine(parts: pa.Table, top: int) -> dict[str, Any]:
    """Sum the counts (any order) and keep the `top` largest groups overall."""
    totals: Counter[tuple[str, str]] = Counter()
    largest = []
    lowest = None
    if parts.num_rows:
        for what, name, n, members, value in zip(*(parts.column(c).to_pylist() for c in GROUP_PARTS.names)):
            if what == "largest":
                largest.append((-n, name, members))
            elif what == "lowest_cosine":
                lowest = value if lowest is None else min(lowest, value)
            else:
                totals[(what, name)] += n
    sizes = {int(name): n for (what, name), n in totals.items() if what == "size"}
    removed = {name: n for (what, name), n in totals.items() if what == "removed"}
    # rows per component size / size = components of that size (every row of a component counted once)
    components = {int(name): n // int(name) for (what, name), n in totals.items()
                  if what == "component_rows" and int(name) > 1}
    return {"groups": sum(sizes.values()), "removed": sum(removed.values()),
            "components": dict(sorted(components.items())),
            "lowest_cosine": None if lowest is None else round(lowest, 6),
            "sizes": (np.array(list(sizes), dtype=np.int64), np.array(list(sizes.values()), dtype=np.int64)),
            "removed_per_source": dict(sorted(removed.items())),
            "largest": [{"survivor": key, "members": members, "size": -neg}
                        for neg, key, members in sorted(largest)[:top]]}


def _decisions_only(batch: pa.Table) -> pa.Table:
    return batch.drop_columns(["source", MEMBERS, COMPONENT_SIZE, SIMILARITY])
