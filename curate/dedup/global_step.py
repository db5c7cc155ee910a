"""The distributed global step of the dedup stages, as pure functions on tables.

``DedupStage.global_step`` composes them with the ``GlobalData`` operations
(``curate.base.global_data``), so the same code runs in one process and on a Ray cluster:

1. ``map_batches(bucket_rows)``: per row, one bucket row for its exact content hash and one per
   LSH band (``_bucket``), carrying ``_ordinal`` and what verification needs (``DedupStage.carry``).
2. ``shuffle_reduce("_bucket", reduce_buckets)``: all rows of a bucket meet; exact buckets are
   stars on their first member (n-1 edges, never capped), LSH buckets go through
   ``lsh.bucket_edges`` (anchor-chained, verified, capped). Output: edges as ordinal pairs plus one counter row per call.
3. ``materialize`` the edge rows; their counters are summed by an ``aggregate``.
4. ``star_components.component_labels``: connected components in one reduce call (scipy, up to
   ``ONE_REDUCE_EDGES`` verified edges) or as rounds of large-star / small-star ``shuffle_reduce``
   by node, one integer per round to the driver (the convergence count). Labels are canonical
   (smallest _ordinal of the component), so they do not depend on partitioning.
5. The join, as ``union`` + ``shuffle_reduce("_ordinal", attach_components)``: the input rows
   (``row_records``) and the label rows (``label_records``, the same schema: the driver learns it
   from an ``aggregate`` of one null row per batch) meet per _ordinal.
6. Rows without a label are their own group and are decided by a ``map_batches``; the others are
   shuffled by ``_component`` (``decide_groups``): each component's rows meet and the kept rows are
   chosen by greedy stars in survivor order (``greedy_stars``: quality, content hash, key; a row is
   removed only when verified within the threshold of a KEPT row, so chains do not collapse); every
   row gets its decision, ``dup_group`` (the key of the kept row it is close to) and
   ``dup_group_size`` (the rows naming that kept row).
7. ``aggregate(report_partial, report_combine)`` for the report, then the decisions are projected
   to the declared columns.

An input of at most one shuffle partition runs all of this inside one reduce call
(``with_one_key``, ``DedupStage._in_one_call``): one shuffle, the same decisions, counters carried
on the first decision row (``with_counters``). The driver never holds edges or per-row data:
counters, a schema and one integer per round.
Every output depends on row content and ``_ordinal`` only, never on partitioning.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from curate.base import records as R
from curate.base.global_data import stable_hash64
from curate.dedup import star_components as CC
from curate.dedup.greedy_stars import Closeness, greedy_stars
from curate.dedup.lsh import bucket_edges, equal_key_edges

BUCKET, EXACT, COMPONENT, IS_LABEL, ROWS, ONE = "_bucket", "_exact", CC.COMPONENT, "_is_label", "_rows", "_one"
ROUNDS = "component_rounds"
NO_SIGNATURE = "_no_signature"
# decision columns the report reads (projected away before the stage's output)
TOP, COMPONENT_SIZE, UNVERIFIED, FARTHER, CAPPED = "_top", "_component_size", "_unverified", "_farther", "_capped"
COUNTERS = ("candidates", "rejected", "capped_buckets", "capped_members", "exact_edges")
EDGE_SCHEMA = pa.schema([("src", pa.int64()), ("dst", pa.int64())] + [(c, pa.int64()) for c in COUNTERS])
EXACT_SALT = 0x5EED_E4AC7
KeysFn = Callable[[pa.Table], tuple[np.ndarray, np.ndarray]]
VerifierFactory = Callable[[pa.Table], Callable[[np.ndarray, np.ndarray], np.ndarray]]


@dataclass(frozen=True)
class Matcher:
    """How a stage decides inside a component: ``on_signatures(rows)`` verifies index pairs of those
    rows (within the threshold, verified value; rows without a signature are never close),
    ``describe`` words values for ``_detail`` (NaN: equal content hash only), ``farther_sign`` makes
    larger mean farther (+1 for distances, -1 for similarities), ``max_pairs`` bounds the comparisons
    per component beyond its best row's, ``lsh_keys`` are the stage's band keys (``greedy_stars``
    narrows a large component's comparisons to rows that share one)."""
    on_signatures: Callable[[pa.Table], Closeness]
    describe: Callable[[np.ndarray], list[str]]
    farther_sign: float
    max_pairs: int
    lsh_keys: KeysFn


def bucket_rows(batch: pa.Table, hash_column: str, lsh_keys: KeysFn,
                carry: Callable[[pa.Table], pa.Table]) -> pa.Table:
    """Map step: (bucket, exact flag, _ordinal, what verification needs) rows of one batch.

    ``carry(batch)`` gives the per-row columns the reduce verifies with; each row travels once per
    band, so they should be small (text_dedup carries a 128-byte sketch, not its 512-byte signature)."""
    hashes = batch.column(hash_column)
    exact_rows = np.flatnonzero(np.asarray(hashes.is_valid().to_numpy(zero_copy_only=False), dtype=bool))
    exact_keys = stable_hash64(hashes.take(pa.array(exact_rows)), EXACT_SALT) if exact_rows.shape[0] else \
        np.empty(0, dtype=np.uint64)
    lsh_rows, keys = lsh_keys(batch)
    bands = keys.shape[1] if keys.ndim == 2 else 0
    rows = np.concatenate([exact_rows, np.repeat(lsh_rows, bands)]).astype(np.int64)
    carried = carry(batch)
    out = pa.table({R.ORDINAL: batch.column(R.ORDINAL), **{n: carried.column(n) for n in carried.column_names}})
    out = out.take(pa.array(rows))
    out = out.append_column(BUCKET, pa.array(np.concatenate([exact_keys, keys.ravel()]).astype(np.uint64)))
    return out.append_column(EXACT, pa.array(np.arange(rows.shape[0]) < exact_rows.shape[0]))


def reduce_buckets(group: pa.Table, verifier: VerifierFactory, max_bucket_size: int) -> pa.Table:
    """Reduce step for whole buckets (sorted by bucket, _ordinal): edges + one counter row."""
    bucket = np.asarray(group.column(BUCKET).to_numpy(zero_copy_only=False), dtype=np.uint64)
    exact = np.asarray(group.column(EXACT).to_numpy(zero_copy_only=False), dtype=bool)
    ords = np.asarray(group.column(R.ORDINAL).to_numpy(zero_copy_only=False), dtype=np.int64)
    chained = equal_key_edges(bucket[exact])
    ex_src, ex_dst = ords[exact][chained.src], ords[exact][chained.dst]
    near_rows = np.flatnonzero(~exact)
    edges = bucket_edges(bucket[near_rows], near_rows, verifier(group), max_bucket_size)
    src = np.concatenate([ex_src, ords[edges.src], [-1]])
    dst = np.concatenate([ex_dst, ords[edges.dst], [-1]])
    counters = {"candidates": edges.candidates, "rejected": edges.rejected, "capped_buckets": edges.capped_buckets,
                "capped_members": edges.capped_members, "exact_edges": int(ex_src.shape[0])}
    cols = {"src": src, "dst": dst}
    for name, value in counters.items():
        col = np.zeros(src.shape[0], dtype=np.int64)
        col[-1] = value
        cols[name] = col
    return pa.table(cols, schema=EDGE_SCHEMA)


def edge_counters_partial(edge_rows: pa.Table) -> pa.Table:
    """Per batch of reduce_buckets output: the summed counters (one row)."""
    return pa.table({c: [int(np.sum(edge_rows.column(c).to_numpy()))] for c in COUNTERS})


def edge_counters_combine(parts: pa.Table) -> dict[str, int]:
    return {c: int(np.sum(parts.column(c).to_numpy())) if c in parts.column_names else 0 for c in COUNTERS}


def graph_edges(edge_rows: pa.Table) -> pa.Table:
    """The verified edges of a batch of reduce_buckets output as distinct (hi, lo) ordinal pairs."""
    src = np.asarray(edge_rows.column("src").to_numpy(), dtype=np.int64)
    dst = np.asarray(edge_rows.column("dst").to_numpy(), dtype=np.int64)
    real = src >= 0
    return CC.oriented(src[real], dst[real])


def row_records(batch: pa.Table, no_signature: Callable[[pa.Table], np.ndarray]) -> pa.Table:
    """The dedup's input rows as join records: no component yet, not a label."""
    return (batch.append_column(NO_SIGNATURE, pa.array(no_signature(batch), pa.bool_()))
            .append_column(COMPONENT, pa.nulls(batch.num_rows, pa.int64()))
            .append_column(IS_LABEL, pa.array(np.zeros(batch.num_rows, dtype=bool))))


def rows_partial(batch: pa.Table) -> pa.Table:
    return pa.table({ROWS: [batch.num_rows]})


def rows_combine(parts: pa.Table) -> int:
    return int(np.sum(parts.column(ROWS).to_numpy())) if ROWS in parts.column_names else 0


def schema_partial(records: pa.Table) -> pa.Table:
    """One all-null row of the batch's schema: the driver learns the schema, no row."""
    return pa.table({f.name: pa.nulls(1, f.type) for f in records.schema})


def schema_combine(parts: pa.Table) -> pa.Schema:
    return parts.schema


def with_one_key(batch: pa.Table) -> pa.Table:
    """Every row under one shuffle key: the whole step in one reduce call."""
    return batch.append_column(ONE, pa.array(np.zeros(batch.num_rows, dtype=np.int8)))


def with_counters(decided: pa.Table, counters: dict[str, int]) -> pa.Table:
    """The one call's decisions with its counters on the first row (zeros below): summed, they are
    the counters of the step."""
    for name in (*COUNTERS, ROUNDS):
        col = np.zeros(decided.num_rows, dtype=np.int64)
        col[:1] = counters[name]
        decided = decided.append_column(name, pa.array(col))
    return decided


def counters_partial(decided: pa.Table) -> pa.Table:
    return pa.table({c: [int(np.sum(decided.column(c).to_numpy()))] for c in (*COUNTERS, ROUNDS)})


def counters_combine(parts: pa.Table) -> dict[str, int]:
    return {c: int(np.sum(parts.column(c).to_numpy())) if c in parts.column_names else 0 for c in (*COUNTERS, ROUNDS)}


def label_records(labels: pa.Table, schema: pa.Schema) -> pa.Table:
    """Component labels shaped as row records (every row column null), so the two can be unioned."""
    n = labels.num_rows
    given = {R.ORDINAL: labels.column(R.ORDINAL), COMPONENT: labels.column(COMPONENT),
             IS_LABEL: pa.array(np.ones(n, dtype=bool))}
    return pa.table([given[f.name].cast(f.type) if f.name in given else pa.nulls(n, f.type) for f in schema],
                    schema=schema)


def attach_components(group: pa.Table) -> pa.Table:
    """Reduce by _ordinal over row and label records: each row gets the smallest label offered for it,
    or stays without one (a row that has no verified edge is a group of its own)."""
    is_label = np.asarray(group.column(IS_LABEL).to_numpy(zero_copy_only=False), dtype=bool)
    rows = group.filter(pa.array(~is_label))
    labels = group.filter(pa.array(is_label))
    ords = np.asarray(rows.column(R.ORDINAL).to_numpy(zero_copy_only=False), dtype=np.int64)
    label_ords = np.asarray(labels.column(R.ORDINAL).to_numpy(zero_copy_only=False), dtype=np.int64)
    pos = np.searchsorted(ords, label_ords)
    if label_ords.shape[0] and (pos.max() >= ords.shape[0] or np.any(ords[pos] != label_ords)):
        raise AssertionError("a component label names a row that is not in the dedup input")
    comp = np.full(ords.shape[0], np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(comp, pos, np.asarray(labels.column(COMPONENT).to_numpy(zero_copy_only=False), dtype=np.int64))
    has = comp != np.iinfo(np.int64).max
    return rows.set_column(rows.schema.get_field_index(COMPONENT), COMPONENT,
                           pa.array(comp, pa.int64(), mask=~has))


def only_grouped(joined: pa.Table, grouped: bool) -> pa.Table:
    """Rows with a component label (grouped) or without (their own group: component = own _ordinal)."""
    has = np.asarray(joined.column(COMPONENT).is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    part = joined.filter(pa.array(has if grouped else ~has))
    if grouped:
        return part
    return part.set_column(part.schema.get_field_index(COMPONENT), COMPONENT, part.column(R.ORDINAL).cast(pa.int64()))


def closeness(group: pa.Table, hash_column: str, on_signatures: Callable[[pa.Table], Closeness]) -> Closeness:
    """Rows with the same content hash are close (value from the signatures when both have one, else
    NaN); others are close when ``on_signatures`` (the stage's own verification) says so."""
    hashes = group.column(hash_column)
    codes = np.asarray(hashes.combine_chunks().dictionary_encode().indices.fill_null(-1)
                       .to_numpy(zero_copy_only=False), dtype=np.int64) if group.num_rows else np.empty(0, np.int64)
    verified = on_signatures(group)

    def close(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ok, value = verified(a, b)
        same = (codes[a] == codes[b]) & (codes[a] >= 0)
        return ok | same, value
    return close


def candidate_keys(group: pa.Table, hash_column: str, lsh_keys: KeysFn) -> Callable[[np.ndarray], np.ndarray]:
    """keys(rows) for ``greedy_stars``: the stage's band keys of those rows plus one key for the content
    hash; a row without a signature gets keys of its own in the band columns (it shares only its hash)."""
    def keys(rows: np.ndarray) -> np.ndarray:
        part = group.take(pa.array(rows, pa.int64()))
        with_sig, band = lsh_keys(part)
        width = band.shape[1] if band.ndim == 2 and band.shape[0] else 0
        own = (np.asarray(rows, dtype=np.uint64) | np.uint64(1 << 63))[:, None]
        out = np.repeat(own, width + 1, axis=1)
        if width:
            out[with_sig, :width] = band
        hashes = part.column(hash_column)
        valid = np.asarray(hashes.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        if valid.any():
            out[valid, width] = stable_hash64(hashes.filter(pa.array(valid)), EXACT_SALT)
        return out
    return keys


def decide_groups(group: pa.Table, quality: Callable[[pa.Table], np.ndarray], hash_column: str, reason: str,
                  matcher: Matcher) -> pa.Table:
    """Reduce step for whole components: kept rows and what each removed row is close to, by greedy
    stars in survivor order (``greedy_stars``): best quality (higher is better: callers negate for
    "lowest"), then smallest content hash, then key. ``dup_group`` is the kept row a row is close to,
    ``dup_group_size`` the rows that name it (itself included)."""
    n = group.num_rows
    score = quality(group)
    score = np.where(np.isnan(score), -np.inf, score)
    comp = np.asarray(group.column(COMPONENT).to_numpy(zero_copy_only=False), dtype=np.int64)
    keys = np.array(group.column("key").to_pylist(), dtype=str)
    hashes = np.array(group.column(hash_column).fill_null("").to_pylist(), dtype=str)
    order = np.lexsort((keys, hashes, -score, comp))
    stars = greedy_stars(comp, order, closeness(group, hash_column, matcher.on_signatures), matcher.max_pairs,
                         candidate_keys(group, hash_column, matcher.lsh_keys))
    centre = stars.centre
    dropped = np.flatnonzero(centre != np.arange(n))
    sizes = np.bincount(centre, minlength=n)[centre].astype(np.int32) if n else np.empty(0, np.int32)
    details: list[str | None] = [None] * n
    for i, m in zip(dropped, matcher.describe(stars.value[dropped])):
        details[i] = (f"duplicate of {keys[centre[i]]}; {m} (group of {sizes[i]}, "
                      f"component of {stars.component_size[i]})")
    is_dropped = np.zeros(n, dtype=bool)
    is_dropped[dropped] = True
    top = np.zeros(n, dtype=bool)
    if n:
        top[order[np.r_[True, comp[order][1:] != comp[order][:-1]]]] = True
    far = np.full(n, np.nan)
    far[dropped] = matcher.farther_sign * stars.value[dropped]
    capped = np.zeros(n, dtype=np.int64)
    capped[:1] = stars.capped_components
    return pa.table({
        R.ORDINAL: group.column(R.ORDINAL),
        R.STATUS: pa.array(np.where(is_dropped, R.REJECTED, R.KEPT).tolist(), type=pa.string()),
        R.REASON: pa.array([reason if d else None for d in is_dropped], type=pa.string()),
        R.DETAIL: pa.array(details, type=pa.string()),
        "dup_group": pa.array(keys[centre].tolist(), type=pa.string()),
        "dup_group_size": pa.array(sizes, type=pa.int32()),
        "source": group.column("source"),
        NO_SIGNATURE: group.column(NO_SIGNATURE) if NO_SIGNATURE in group.column_names else
        pa.array(np.zeros(n, dtype=bool)),
        TOP: pa.array(top), COMPONENT_SIZE: pa.array(stars.component_size, pa.int64()),
        UNVERIFIED: pa.array(stars.unverified), FARTHER: pa.array(far, pa.float64(), mask=np.isnan(far)),
        CAPPED: pa.array(capped, pa.int64()),
    })


def report_partial(decided: pa.Table) -> pa.Table:
    """Per batch of decisions: (what, name, count) rows for sizes of kept groups and components,
    removals by source, rows kept unverified, capped components; (farthest, value) for the farthest
    removal (``farther_sign`` times the verified value: larger is farther)."""
    status = np.array(decided.column(R.STATUS).to_pylist(), dtype=object)
    sizes = np.asarray(decided.column("dup_group_size").to_numpy(zero_copy_only=False))
    comp_sizes = np.asarray(decided.column(COMPONENT_SIZE).to_numpy(zero_copy_only=False))
    top = np.asarray(decided.column(TOP).to_numpy(zero_copy_only=False), dtype=bool)
    sources = decided.column("source").to_pylist()
    counts: Counter[tuple[str, str]] = Counter()
    for s, size, src in zip(status, sizes, sources):
        if s == R.KEPT and size > 1:
            counts[("size", str(int(size)))] += 1
        elif s != R.KEPT:
            counts[("removed", src)] += 1
    for size in comp_sizes[top & (comp_sizes > 1)]:
        counts[("component", str(int(size)))] += 1
    counts[("rows", "")] += decided.num_rows
    counts[("no_signature", "")] += int(np.sum(decided.column(NO_SIGNATURE).to_numpy(zero_copy_only=False)))
    counts[("unverified", "")] += int(np.sum(decided.column(UNVERIFIED).to_numpy(zero_copy_only=False)))
    counts[("capped_components", "")] += int(np.sum(decided.column(CAPPED).to_numpy(zero_copy_only=False)))
    items = sorted(counts.items())
    far = decided.column(FARTHER).drop_null()
    farthest = [float(np.max(far.to_numpy()))] if len(far) else []
    return pa.table({"what": [k[0] for k, _ in items] + ["farthest"] * len(farthest),
                     "name": [k[1] for k, _ in items] + [""] * len(farthest),
                     "count": pa.array([v for _, v in items] + [0] * len(farthest), type=pa.int64()),
                     "value": pa.array([None] * len(items) + farthest, type=pa.float64())})


def report_combine(partials: pa.Table) -> dict[str, Any]:
    total: Counter[tuple[str, str]] = Counter()
    if "what" not in partials.column_names:
        partials = pa.table({"what": pa.array([], pa.string()), "name": pa.array([], pa.string()),
                             "count": pa.array([], pa.int64()), "value": pa.array([], pa.float64())})
    farthest = None
    for what, name, count, value in zip(*(partials.column(c).to_pylist() for c in ("what", "name", "count", "value"))):
        if what == "farthest":
            farthest = value if farthest is None else max(farthest, value)
        else:
            total[(what, name)] += count
    sizes = {k[1]: v for k, v in total.items() if k[0] == "size"}
    comps = {k[1]: v for k, v in total.items() if k[0] == "component"}
    removed = {k[1]: v for k, v in total.items() if k[0] == "removed"}
    return {"rows": total[("rows", "")], "groups": sum(sizes.values()),
            "rows_in_groups": sum(int(s) * c for s, c in sizes.items()), "removed": sum(removed.values()),
            "group_sizes": {s: sizes[s] for s in sorted(sizes, key=int)},
            "components": sum(comps.values()),
            "largest_component": max((int(s) for s in comps), default=0),
            "component_sizes": size_bins(comps),
            "kept_unverified": total[("unverified", "")], "capped_components": total[("capped_components", "")],
            "farthest": farthest,
            "removed_by_source": dict(sorted(removed.items())), "no_signature": total[("no_signature", "")]}


def size_bins(sizes: dict[str, int]) -> dict[str, int]:
    """Component sizes in powers-of-two bins ({"2-3": 5, "4-7": 1, ...}): a histogram that stays small."""
    out: Counter[int] = Counter()
    for s, c in sizes.items():
        out[1 << (int(s).bit_length() - 1)] += c
    return {(f"{lo}-{2 * lo - 1}" if lo > 1 else "1"): out[lo] for lo in sorted(out)}


DECISION_COLUMNS = (R.ORDINAL, R.STATUS, R.REASON, R.DETAIL, "dup_group", "dup_group_size")
DECISION_SCHEMA = pa.schema([(R.ORDINAL, pa.int64()), (R.STATUS, pa.string()), (R.REASON, pa.string()),
                             (R.DETAIL, pa.string()), ("dup_group", pa.string()), ("dup_group_size", pa.int32())])


def project_decisions(decided: pa.Table) -> pa.Table:
    return decided.select(list(DECISION_COLUMNS))
