"""`join_annotations`: bring per-sample columns computed elsewhere into the run, and filter on them.

Curated subsets are often published as *lists*, not models: DFN released only the uids of its top 15%
of DataComp (no checkpoint), so Open-Qwen2VL selected its DFN subset by id; LAION ships each pair's
CLIP similarity in its metadata; MLM-Filter scores are computed on another cluster. This stage joins
such a file (parquet or JSONL) to the samples by sample key, by the key as the source wrote it, or by a
metadata field (e.g. ``meta.url``, ``meta.uid``), adds the declared columns with their declared types,
and keeps the rows whose conditions hold (``all`` of them, or ``any`` — the union Open-Qwen2VL took
of the DFN list and MLM-Filter's SU >= 85).

Conditions are ``COLUMN OP VALUE`` with OP one of >= > <= < == != (VALUE a number, true/false or a
string), or ``COLUMN present``. A row without a match has nulls, which fail every condition except
``missing: keep``, which keeps unmatched rows untouched.
"""
from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.base import BatchResult, Drop, Resources, Stage, register, split_drops

TYPES: dict[str, pa.DataType] = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "string": pa.string()}
OPS: dict[str, Callable[[Any, Any], bool]] = {">=": operator.ge, ">": operator.gt, "<=": operator.le,
                                              "<": operator.lt, "==": operator.eq, "!=": operator.ne}
_COND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:(>=|<=|==|!=|>|<)\s*(.+?)|\s(present))\s*$")


@dataclass(frozen=True)
class Condition:
    column: str
    op: str          # one of OPS, or "present"
    value: Any = None

    def holds(self, value: Any) -> bool:
        if value is None:
            return False
        if self.op == "present":
            return True
        try:
            return bool(OPS[self.op](value, self.value))
        except TypeError:  # a string column compared with a number: the condition does not hold
            return False

    def __str__(self) -> str:
        return f"{self.column} present" if self.op == "present" else f"{self.column} {self.op} {self.value!r}"


def parse_condition(text: str) -> Condition:
    """'su_score >= 85' -> Condition('su_score', '>=', 85.0); raises ValueError on anything else."""
    m = _COND.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"cannot parse condition {text!r}; write 'COLUMN OP VALUE' (OP: >= > <= < == !=) "
                         f"or 'COLUMN present'")
    column, op, raw, present = m.groups()
    if present:
        return Condition(column, "present")
    return Condition(column, op, _literal(raw.strip()))


def _literal(raw: str) -> Any:
    if raw in ("true", "false"):
        return raw == "true"
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    try:
        return float(raw)
    except ValueError:
        return raw


def read_annotations(path: str, key_field: str, columns: dict[str, str]) -> pa.Table:
    """The annotation file's key column and declared columns, cast to their declared types."""
    if path.endswith(".parquet"):
        table = pq.read_table(path, columns=[key_field, *columns])
    elif path.endswith((".jsonl", ".json")):
        with open(path, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        table = pa.table({c: [r.get(c) for r in rows] for c in [key_field, *columns]})
    else:
        raise ValueError(f"path: {path!r} is neither .parquet nor .jsonl")
    keys = table.column(key_field).cast(pa.string())
    if pc.count_distinct(keys).as_py() != table.num_rows:
        raise ValueError(f"path: {path!r} has duplicate values in {key_field!r}; one row per sample is expected")
    out = {"__key": keys}
    out.update({c: table.column(c).cast(TYPES[t]) for c, t in columns.items()})
    return pa.table(out)


def sample_keys(table: pa.Table, match: str) -> pa.Array:
    """The value each sample is matched by: 'key', 'original_key' (without 'source/'), or 'meta.FIELD'."""
    if match == "key":
        return table.column("key").combine_chunks()
    if match == "original_key":
        keys = table.column("key").to_pylist()
        return pa.array([k.split("/", 1)[1] if "/" in k else k for k in keys], type=pa.string())
    name = match[len("meta."):]
    values = []
    for meta in table.column("meta").to_pylist():
        v = json.loads(meta).get(name) if meta else None
        values.append(None if v is None else str(v))
    return pa.array(values, type=pa.string())


@register
class JoinAnnotations(Stage):
    name = "join_annotations"
    description = ("Join per-sample columns from a parquet/JSONL file (precomputed scores, a released id list) by "
                   "key, original key or a metadata field, and keep the rows whose conditions hold.")
    requires = ("key", "source", "meta")
    resources = Resources(cpus=1, batch_size=8192)

    @dataclass
    class Config:
        path: str = field(default="", metadata={"doc": "annotation file (.parquet or .jsonl), one row per sample"})
        key_field: str = field(default="key", metadata={"doc": "column of the file that identifies the sample"})
        match: str = field(default="key", metadata={
            "doc": "what key_field matches: key (source/key), original_key (the key as the source wrote it) or "
                   "meta.FIELD (e.g. meta.url, meta.uid)"})
        columns: dict[str, Literal["bool", "int", "float", "string"]] = field(default_factory=dict, metadata={
            "doc": "columns to add, with their type (bool, int, float, string)"})
        keep_if: list[str] = field(default_factory=list, metadata={
            "doc": "conditions such as 'su_score >= 85', 'dfn_top15 == true', 'clip present' on the joined columns "
                   "or on columns earlier stages added; none: join only"})
        combine: Literal["all", "any"] = field(default="all", metadata={"doc": "keep when all / any condition holds"})
        missing: Literal["reject", "keep"] = field(default="reject", metadata={
            "doc": "rows with no match in the file: judged with null columns (reject), or kept untouched (keep)"})
        sources: list[str] = field(default_factory=list, metadata={
            "doc": "apply only to these sources (others pass untouched); empty: every source"})

    def validate_config(self) -> None:
        c = self.config
        if not c.path:
            raise ValueError("path: the annotation file is required")
        if not (c.match in ("key", "original_key") or (c.match.startswith("meta.") and len(c.match) > 5)):
            raise ValueError(f"match: must be key, original_key or meta.FIELD, got {c.match!r}")
        self.conditions = [parse_condition(t) for t in c.keep_if]
        # A condition may test a column an earlier stage added (e.g. the union of a DFN id list joined
        # here with MLM-Filter scores joined before): it becomes a required column, checked by the recipe.
        upstream = sorted({x.column for x in self.conditions if x.column not in c.columns})
        self.requires = (*type(self).requires, *upstream)
        self.adds = {name: TYPES[t] for name, t in c.columns.items()}  # per instance: the declared columns

    def setup(self) -> None:
        self.annotations = read_annotations(self.config.path, self.config.key_field, self.config.columns)

    def process_batch(self, batch: pa.Table) -> BatchResult:
        c = self.config
        pos = pc.index_in(sample_keys(batch, c.match), value_set=self.annotations.column("__key"))
        sources = batch.column("source").to_pylist()
        in_scope = [not c.sources or s in c.sources for s in sources]
        out = batch
        for name, typ in self.adds.items():
            joined = self.annotations.column(name).take(pos).cast(typ)
            if name in out.column_names:  # a scoped join keeps the earlier value of out-of-scope rows
                joined = pc.if_else(pa.array(in_scope), joined, out.column(name).cast(typ))
                out = out.set_column(out.schema.get_field_index(name), name, joined)
            else:
                out = out.append_column(name, pc.if_else(pa.array(in_scope), joined, pa.nulls(len(joined), typ)))
        matched = pc.is_valid(pos).to_pylist()
        values = {name: out.column(name).to_pylist() for name in {x.column for x in self.conditions}}
        drops: list[Drop | None] = []
        for i in range(batch.num_rows):
            why = None
            if in_scope[i] and self.conditions and not (c.missing == "keep" and not matched[i]):
                why = self._verdict({k: v[i] for k, v in values.items()}, matched[i])
            drops.append(Drop(why[0], why[1]) if why else None)
        return split_drops(out, drops)

    def _verdict(self, row: dict[str, Any], matched: bool) -> tuple[str, str] | None:
        results = [x.holds(row[x.column]) for x in self.conditions]
        ok = all(results) if self.config.combine == "all" else any(results)
        if ok:
            return None
        if not matched:
            return "annotation:not_listed", f"no row in {self.config.path.rsplit('/', 1)[-1]}"
        failed = [x for x, r in zip(self.conditions, results) if not r]
        first = failed[0]
        return f"annotation:{first.column}", "; ".join(f"{x.column}={row[x.column]!r} fails {x}" for x in failed)
