"""Writing shards: the plain-data jobs (what to write, so that remote workers can carry them) and
the assembly of one pack's tar members (media bytes, the JSON document, input_ids) into a tar.

Deterministic: members are sorted by name, tar headers are fixed (pack.tario) and nothing depends
on the clock, the machine or the worker; a shard's sha256 is computed from the written file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from curate.base import records as R
from pack import packformat as F
from pack import tario
from pack.shard_ids import SegmentTokenizer, TokenCountMismatch
from pack.shard_media import read_media, segment_doc


@dataclass
class PackJob:
    key: str
    pack_id: int
    rank: int | None
    step: int | None
    micro_batch: int | None
    repeat_of: str | None
    segments: list[dict[str, Any]]


@dataclass
class ShardJob:
    path: str                   # relative to the shards directory
    packs: list[PackJob]


@dataclass(frozen=True)
class WriterSettings:
    context_length: int
    tokenizer: str | None = None          # "builtin" or a directory; None: no input_ids
    template: Mapping[str, Any] = field(default_factory=dict)   # pack.tokens.Template fields


@dataclass
class ShardResult:
    path: str
    sha256: str
    bytes: int
    packs: int
    samples: int
    tokens: int
    images: int
    failures: list[tuple[int, str, str]]   # (_ordinal, reason, detail) of samples left out


def _pack_members(job: PackJob, settings: WriterSettings, tok: SegmentTokenizer | None,
                  failures: list[tuple[int, str, str]]) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """All tar members of one pack (sorted by name) and its JSON document."""
    L = settings.context_length
    counters = {"images": 0, "videos": 0}
    members: list[tuple[str, bytes]] = []
    segs: list[dict[str, Any]] = []
    id_parts: list[np.ndarray] = []
    for seg in job.segments:
        saved = dict(counters)
        try:
            media_docs, media = read_media(seg, job.key, counters)
            ids = tok.ids(seg, seg.get("image_tokens") or [], seg.get("video_tokens") or []) if tok else None
        except TokenCountMismatch:
            raise
        except Exception as exc:  # noqa: BLE001 — one bad sample must not sink the run; it is accounted for
            counters.update(saved)
            from curate.images import UnreadableImage
            reason = exc.reason if isinstance(exc, UnreadableImage) else f"error:{type(exc).__name__}"
            failures.append((int(seg[R.ORDINAL]), reason, f"shards: {exc}"[:500]))
            continue
        members += media
        segs.append(segment_doc(seg, media_docs))
        if ids is not None:
            id_parts.append(ids)
    lengths = [s["length"] for s in segs]
    used = int(sum(lengths))
    doc: dict[str, Any] = {
        "format": F.PACK_FORMAT, "pack_key": job.key, "pack_id": job.pack_id, "rank": job.rank,
        "step": job.step, "micro_batch": job.micro_batch, "repeat_of": job.repeat_of,
        "context_length": L, "length": used, "padding": L - used,
        "cu_seqlens": F.cu_seqlens(lengths, L), "segments": segs, "input_ids": None,
    }
    if tok is not None:
        ids = np.full(L, tok.pad_id, dtype=np.int32)
        if id_parts:
            flat = np.concatenate(id_parts)
            ids[:flat.size] = flat
        members.append((F.input_ids_member(job.key), F.encode_input_ids(ids)))
        doc["input_ids"] = {"member": F.input_ids_member(job.key), "dtype": "int32", "pad_id": tok.pad_id}
    members.append((F.json_member(job.key), F.dumps(doc)))
    return sorted(members), doc


def write_shard(root: str, job: ShardJob, settings: WriterSettings, tok: SegmentTokenizer | None = None) -> ShardResult:
    """Write one tar under `root`; return its checksum and counts."""
    path = os.path.join(root, job.path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    failures: list[tuple[int, str, str]] = []
    stats = {"samples": 0, "tokens": 0, "images": 0}

    def members() -> Iterator[tuple[str, bytes]]:
        for pj in job.packs:
            mem, doc = _pack_members(pj, settings, tok, failures)
            stats["samples"] += len(doc["segments"])
            stats["tokens"] += doc["length"]
            stats["images"] += sum(len(s["images"]) for s in doc["segments"])
            yield from mem

    tario.write_tar(path, members())
    return ShardResult(job.path, tario.sha256_file(path), os.path.getsize(path), len(job.packs),
                       stats["samples"], stats["tokens"], stats["images"], failures)


def write_shards(root: str, jobs: Sequence[ShardJob], settings: WriterSettings) -> list[ShardResult]:
    """Write a group of shards (one rank's) with one tokenizer load."""
    tok = SegmentTokenizer(settings.tokenizer, settings.template) if settings.tokenizer else None
    return [write_shard(root, j, settings, tok) for j in jobs]
