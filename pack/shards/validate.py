"""`mmcurate validate shards DIR`: is this output safe to train on? (Users run it in CI.)

Checks, in this order (the first problem is the one to fix first):

1. ``manifest.json`` exists, parses and has the expected fields and types;
2. the manifest is balanced: ``dp_size`` ranks, every rank with ``steps × micro_batches`` packs,
   ``context_length`` a multiple of ``alignment``, per-rank sums equal to its shards' sums;
3. every listed shard exists, has the listed size and sha256; no unlisted tar lies in a rank folder;
4. every pack is well formed: strict JSON, ``length + padding == context_length``, ``cu_seqlens``
   consistent with the segment lengths and ending at ``context_length``, members present and none
   extra, ``input_ids`` of shape ``[context_length]`` when tokenized, and packs in step order with
   ``micro_batches`` packs per rank per step (``rank``, ``step``, ``micro_batch`` as the position says);
5. every sample key appears exactly once over all ranks (and ``leftover/``), apart from packs marked
   ``repeat_of``, which must repeat their original exactly;
6. the manifest's per-shard and total counts match what the shards hold.

This module finds the problems; ``mmcurate validate shards`` (``pipelines.present.cli``) is the one
place that prints them (the first in full, then up to 19 more, then a count) and sets the exit code.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Any, Iterator

from pack import packformat as F
from pack.shards import tario
class _Problems(list):
    def add(self, msg: str) -> None:
        self.append(msg)


def validate_shards(directory: str) -> list[str]:
    """Problems found in a shards directory, first problem first; an empty list means it is fine."""
    problems = _Problems()
    try:
        manifest = F.load_manifest(directory)
    except F.PackFormatError as exc:
        return [str(exc)]
    _check_layout(manifest, problems)
    if problems:
        return list(problems)
    good_shards = _check_files(directory, manifest, problems)
    _check_content(directory, manifest, good_shards, problems)
    return list(problems)


def _check_layout(m: dict[str, Any], problems: _Problems) -> None:
    L, align, dp, mb = m["context_length"], m["alignment"], m["dp_size"], m["micro_batches"]
    if align < 1 or L < 1 or L % align:
        problems.add(f"manifest.json: context_length {L} is not a positive multiple of alignment {align}")
    if dp < 1 or mb < 1:
        problems.add(f"manifest.json: dp_size {dp} and micro_batches {mb} must be >= 1")
        return
    if m["packs_per_rank"] != m["steps"] * mb:
        problems.add(f"manifest.json: packs_per_rank {m['packs_per_rank']} != steps {m['steps']} x "
                     f"micro_batches {mb}")
    ranks = m["ranks"]
    if len(ranks) != dp:
        problems.add(f"manifest.json: {len(ranks)} ranks listed for dp_size {dp}")
    for i, r in enumerate(ranks):
        if r["rank"] != i or r["dir"] != F.rank_dir(i):
            problems.add(f"manifest.json ranks[{i}]: rank {r['rank']} in {r['dir']!r}, expected rank {i} in "
                         f"{F.rank_dir(i)!r}")
    counts = [r["packs"] for r in ranks]
    if counts and len(set(counts)) > 1:
        lo = min(range(len(counts)), key=lambda i: (counts[i], i))
        hi = max(range(len(counts)), key=lambda i: (counts[i], -i))
        problems.add(f"unbalanced manifest: {F.rank_dir(lo)} has {counts[lo]} packs but {F.rank_dir(hi)} has "
                     f"{counts[hi]}; every rank must have the same number of packs")
    for i, r in enumerate(ranks):
        if r["packs"] != m["packs_per_rank"]:
            problems.add(f"unbalanced manifest: {F.rank_dir(i)} has {r['packs']} packs, packs_per_rank is "
                         f"{m['packs_per_rank']}")
            break
    for i, r in enumerate(ranks):
        for name in ("packs", "samples", "tokens"):
            total = sum(s[name] for s in r["shards"])
            if total != r[name]:
                problems.add(f"manifest.json ranks[{i}]: {name} {r[name]} but its shards sum to {total}")
        for s in r["shards"]:
            if not s["path"].startswith(r["dir"] + "/"):
                problems.add(f"manifest.json ranks[{i}]: shard {s['path']!r} is outside {r['dir']}/")
    if m["totals"].get("packs") != sum(counts):
        problems.add(f"manifest.json totals: packs {m['totals'].get('packs')} != {sum(counts)} (sum over ranks)")
    if not sum(counts) and not m["leftover"].get("packs"):
        problems.add("manifest.json: no packs at all")


def _all_shards(m: dict[str, Any]) -> Iterator[tuple[int | None, dict[str, Any]]]:
    for r in m["ranks"]:
        for s in r["shards"]:
            yield r["rank"], s
    for s in m["leftover"].get("shards", []):
        yield None, s


def _check_files(directory: str, m: dict[str, Any], problems: _Problems) -> set[str]:
    """Existence, size and checksum of every listed shard; returns the paths that passed."""
    good: set[str] = set()
    listed = set()
    for _, s in _all_shards(m):
        listed.add(s["path"])
        path = os.path.join(directory, s["path"])
        if not os.path.isfile(path):
            problems.add(f"missing shard: {s['path']} is listed in manifest.json but does not exist")
            continue
        size = os.path.getsize(path)
        if size != s["bytes"]:
            problems.add(f"size mismatch: {s['path']} has {size} bytes, manifest.json says {s['bytes']}")
            continue
        digest = tario.sha256_file(path)
        if digest != s["sha256"]:
            problems.add(f"checksum mismatch: {s['path']} sha256 {digest[:16]}… != manifest {s['sha256'][:16]}… "
                         "(the file was changed or is corrupt)")
            continue
        good.add(s["path"])
    for folder in [r["dir"] for r in m["ranks"]] + ([F.LEFTOVER_DIR] if m["leftover"].get("shards") else []):
        full = os.path.join(directory, folder)
        if not os.path.isdir(full):
            continue
        for name in sorted(os.listdir(full)):
            rel = f"{folder}/{name}"
            if name.endswith(".tar") and rel not in listed:
                problems.add(f"unlisted shard: {rel} is not in manifest.json")
    return good


def _read_packs(path: str, L: int, tokenized: bool, rel: str) -> Iterator[tuple[dict[str, Any] | None, str]]:
    """(pack document, problem) per pack of one tar, in order; document None when it is unusable."""
    try:
        refs = tario.index_tar(path)
    except Exception as exc:  # noqa: BLE001 — any damage is a problem to report, not a crash
        yield None, f"{rel}: unreadable tar ({exc})"
        return
    groups: list[tuple[str, dict[str, tario.MemberRef]]] = []
    for ref in refs:
        key, _ = tario.split_member_name(ref.name)
        if groups and groups[-1][0] == key:
            groups[-1][1][ref.name] = ref
        else:
            groups.append((key, {ref.name: ref}))
    with open(path, "rb") as fh:
        for key, members in groups:
            where = f"{rel}:{key}"
            jm = F.json_member(key)
            if jm not in members:
                yield None, f"{where}: no {jm} member"
                continue
            try:
                doc = F.parse_pack(tario.read_member(fh, members[jm]), where, L)
            except F.PackFormatError as exc:
                yield None, str(exc)
                continue
            if doc["pack_key"] != key:
                yield None, f"{where}: JSON pack_key {doc['pack_key']!r} differs from its member names"
                continue
            names = set(F.pack_members(doc))
            if names != set(members):
                extra, missing = sorted(set(members) - names), sorted(names - set(members))
                yield None, (f"{where}: member {missing[0]!r} is missing" if missing
                             else f"{where}: member {extra[0]!r} is not named in the pack JSON")
                continue
            if tokenized != (doc["input_ids"] is not None):
                yield None, f"{where}: input_ids {'missing' if tokenized else 'present'} but manifest " \
                            f"tokenizer is {'set' if tokenized else 'null'}"
                continue
            if doc["input_ids"] is not None:
                problem = _check_ids_and_labels(fh, members, doc, where, L)
                if problem:
                    yield None, problem
                    continue
            yield doc, ""


def _check_ids_and_labels(fh: Any, members: dict[str, Any], doc: dict[str, Any], where: str, L: int) -> str:
    """input_ids [L] integers; labels [L], each either IGNORE_INDEX or the id at its position."""
    arrays = {}
    for name in ("input_ids", "labels"):
        try:
            arr = F.decode_input_ids(tario.read_member(fh, members[doc[name]["member"]]))
        except ValueError as exc:
            return f"{where}: {name} unreadable ({exc})"
        if arr.shape != (L,) or arr.dtype.kind not in "iu":
            return f"{where}: {name} shape {arr.shape} dtype {arr.dtype}, expected ({L},) integers"
        arrays[name] = arr
    bad = (arrays["labels"] != F.IGNORE_INDEX) & (arrays["labels"] != arrays["input_ids"])
    if bad.any():
        return f"{where}: labels differ from input_ids at position {int(bad.argmax())} (not {F.IGNORE_INDEX})"
    return ""


def _check_content(directory: str, m: dict[str, Any], good: set[str], problems: _Problems) -> None:
    L, mb = m["context_length"], m["micro_batches"]
    tokenized = m.get("tokenizer") is not None
    keys: Counter[str] = Counter()
    where_key: dict[str, str] = {}
    originals: dict[str, list[str]] = {}
    repeats: list[tuple[str, str, list[str]]] = []
    totals = Counter()
    for rank, shard in _all_shards(m):
        rel = shard["path"]
        if rel not in good:
            continue
        counted = Counter()
        position = sum(s["packs"] for s in _rank_shards_before(m, rank, rel)) if rank is not None else 0
        for doc, problem in _read_packs(os.path.join(directory, rel), L, tokenized, rel):
            counted["packs"] += 1
            if doc is None:
                problems.add(problem)
                position += 1
                continue
            where = f"{rel}:{doc['pack_key']}"
            if rank is not None:
                step, micro = divmod(position, mb)
                want = (rank, step, micro)
                got = (doc["rank"], doc["step"], doc["micro_batch"])
                if got != want or doc["pack_key"] != F.pack_key(*want):
                    problems.add(f"{where}: pack {position} of {F.rank_dir(rank)} should be rank/step/micro_batch "
                                 f"{want} ({F.pack_key(*want)}), JSON says {got}")
            elif doc["rank"] is not None:
                problems.add(f"{where}: leftover pack assigned to rank {doc['rank']}")
            position += 1
            seg_keys = [s["key"] for s in doc["segments"]]
            counted["samples"] += len(seg_keys)
            counted["tokens"] += doc["length"]
            if doc["repeat_of"] is not None:
                repeats.append((where, doc["repeat_of"], seg_keys))
                continue
            originals[doc["pack_key"]] = seg_keys
            for k in seg_keys:
                keys[k] += 1
                where_key.setdefault(k, where)
        for name in ("packs", "samples", "tokens"):
            if counted[name] != shard[name]:
                problems.add(f"{rel}: holds {counted[name]} {name}, manifest.json says {shard[name]}")
        if rank is not None:
            totals.update(counted)
    for where, original, seg_keys in repeats:
        if original not in originals:
            problems.add(f"{where}: repeat_of {original!r} names no pack")
        elif originals[original] != seg_keys:
            problems.add(f"{where}: repeats {original!r} but holds other samples")
    for k, n in keys.items():
        if n > 1:
            problems.add(f"sample key {k!r} appears {n} times (first in {where_key[k]}); every sample must appear "
                         "exactly once")
            break
    if len(good) == sum(1 for _ in _all_shards(m)):
        t = m["totals"]
        for name in ("packs", "samples", "tokens"):
            if t.get(name) != totals[name]:
                problems.add(f"manifest.json totals: {name} {t.get(name)} but the rank shards hold {totals[name]}")
        if t.get("padding") is not None and t["padding"] != totals["packs"] * L - totals["tokens"]:
            problems.add(f"manifest.json totals: padding {t['padding']} != packs x context_length - tokens")


def _rank_shards_before(m: dict[str, Any], rank: int, rel: str) -> list[dict[str, Any]]:
    out = []
    for s in m["ranks"][rank]["shards"]:
        if s["path"] == rel:
            break
        out.append(s)
    return out
