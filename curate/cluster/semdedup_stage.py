"""The ``semantic_dedup`` stage: near-duplicates by embedding cosine, compared inside leaf clusters.

Needs ``embed`` and ``cluster`` before it. Rows are compared only with rows of the same leaf and the
same ``partition_by`` values (default: category — with image embeddings, a question about a photo
must not remove the caption sample of that photo). Each such group is one per-cluster reduce
(``curate/cluster/semdedup.py``): groups are the connected components of pairs with cosine above
``1 - eps``; the preferred row of a group survives (``survivor``: quality column, hard or easy),
the others are rejected naming it. Rows get ``semdedup_group`` (the survivor's key, for rows in a
group of two or more) and ``semdedup_group_size``, as the exact/near dedup stages report theirs.
Rows without an embedding or a cluster path pass untouched.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping

import numpy as np
import pyarrow as pa

from curate.base import records as R
from curate.cluster import columns as C
from curate.cluster.kmeans import seeded_hash
from curate.cluster.semdedup import dedup_leaf, preference_order
from curate.base import Resources, Stage, register

GROUP = "semdedup_group"
GROUP_SIZE = "semdedup_group_size"
NEAR_DUPLICATE = "semantic_dedup:near_duplicate"


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
        if c.survivor not in ("hard", "easy", "quality"):
            raise ValueError(f"survivor: expected hard, easy or quality, got {c.survivor!r}")
        if c.survivor == "quality" and not c.quality_column:
            raise ValueError("quality_column: required when survivor is quality")
        if c.report_groups < 0:
            raise ValueError("report_groups: must be >= 0")

    def decide(self, table: pa.Table) -> pa.Table:
        c = self.config
        table = C.by_ordinal(table)
        n = table.num_rows
        ordinals = np.asarray(table.column(R.ORDINAL).to_numpy(zero_copy_only=False), dtype=np.int64)
        valid = C.valid_mask(table, [c.column, C.CLUSTER_PATH, C.CLUSTER_DISTANCES])
        if c.categories is not None:
            valid &= np.isin(np.asarray(table.column("category").to_pylist(), dtype=object), list(c.categories))
        idx = np.flatnonzero(valid)
        rows = table.take(pa.array(idx, pa.int64()))
        keys_all = table.column("key").to_pylist()
        survivor = np.arange(n)
        size = np.ones(n, dtype=np.int64)
        best = np.full(n, np.nan)
        if len(idx):
            s_local, size_local, best_local = self._groups(rows)
            survivor[idx], size[idx], best[idx] = idx[s_local], size_local, best_local
        reasons: list[str | None] = [None] * n
        details: list[str | None] = [None] * n
        for i in np.flatnonzero(survivor != np.arange(n)):
            reasons[i] = NEAR_DUPLICATE
            details[i] = f"cosine {best[i]:.4f} > {1 - c.eps:.4f} in group of {size[i]}; kept {keys_all[survivor[i]]}"
        group = pa.array([keys_all[survivor[i]] if size[i] > 1 else None for i in range(n)], pa.string())
        group_size = pa.array([int(size[i]) if valid[i] else None for i in range(n)], pa.int32())
        self.report["semantic_dedup"] = self._report(table, survivor, size, valid)
        return C.decisions(ordinals, reasons, details, {GROUP: group, GROUP_SIZE: group_size})

    def _groups(self, rows: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-leaf reduce over the valid rows: (survivor index, group size, best cosine) per row."""
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
        for members in np.split(order, bounds):
            if len(members) < 2:
                continue
            pref = preference_order(None if quality is None else quality[members], dists[members, -1],
                                    hashes[members], c.survivor)
            g = dedup_leaf(emb[members], pref, c.eps)
            survivor[members], size[members], best[members] = members[g.survivor], g.group_size, g.best_similarity
        return survivor, size, best

    def _compare_groups(self, rows: pa.Table, leaf: np.ndarray) -> np.ndarray:
        """One id per (leaf, partition_by values): the rows that are compared with each other."""
        if not self.config.partition_by:
            return leaf
        values = [rows.column(col).to_pylist() for col in self.config.partition_by]
        ids: dict[tuple[Any, ...], int] = {}
        return np.array([ids.setdefault((int(lf), *(v[i] for v in values)), len(ids)) for i, lf in enumerate(leaf)],
                        dtype=np.int64)

    def _report(self, table: pa.Table, survivor: np.ndarray, size: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
        n = len(survivor)
        removed = survivor != np.arange(n)
        keys = table.column("key").to_pylist()
        sources = table.column("source").to_pylist()
        members: dict[int, list[int]] = {}
        for i in np.flatnonzero(size > 1):
            members.setdefault(int(survivor[i]), []).append(int(i))
        largest = sorted(members.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:self.config.report_groups]
        return {"eps": self.config.eps, "survivor": self.config.survivor, "rows": int(valid.sum()),
                "not_compared": int((~valid).sum()), "groups": len(members),
                "removed": int(removed.sum()),
                "group_size_histogram": C.size_histogram(np.array([len(v) for v in members.values()])),
                "removed_per_source": dict(sorted(Counter(sources[i] for i in np.flatnonzero(removed)).items())),
                "largest_groups": [{"survivor": keys[s], "members": [keys[i] for i in m if i != s][:5], "size": len(m)}
                                   for s, m in largest]}
