"""Writing shards: the plain-data jobs (what to write, so that remote workers can carry them) and
the assembly of one pack's tar members (media bytes, the JSON document, input_ids) into a tar.

Deterministic: members are sorted by name, tar headers are fixed (pack.shards.tario) and nothing depends
on the clock, the machine or the worker; a shard's sha256 is computed from the written file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from curate.base import records as R
from curate.base.diskspace import writing
from curate.media.images import UnreadableImage
from pack import packformat as F
from pack.shards import tario
from pack.energon.meta import write_tar_index
from pack.profile import ModelProfile
from pack.shards.ids import SegmentTokenizer
from pack.shards.media import MediaChanged, read_media, segment_doc
from pack.tokens.template import PlaceholderMismatch, SpecialTokenInText

# What a bad sample raises while its pack is assembled; anything else is a bug and fails the run.
BAD_SAMPLE_ERRORS: tuple[type[BaseException], ...] = (UnreadableImage, OSError, MediaChanged, SpecialTokenInText,
                                                      PlaceholderMismatch)


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
    """What every shard writer needs: the run's typed model profile (pack length, grids, tokenizer and
    template all come from it, nothing is parsed again on the workers) and whether ids are written."""
    profile: ModelProfile
    input_ids: bool = False   # write input_ids and labels with the profile's tokenizer and template

    @property
    def context_length(self) -> int:
        return self.profile.context_length

    @property
    def tokenizer(self) -> str | None:
        """"builtin" or a directory; None: no input_ids."""
        return (self.profile.tokenizer or "builtin") if self.input_ids else None

    @property
    def template(self) -> dict[str, Any]:
        """pack.tokens.Template fields ({} without input_ids)."""
        return self.profile.template_fields() if self.input_ids else {}


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


class _Segments:
    """The parts of a pack built segment by segment: media members, segment documents, ids, labels."""

    def __init__(self) -> None:
        self.members: list[tuple[str, bytes]] = []
        self.docs: list[dict[str, Any]] = []
        self.ids: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []


def _add_segment(out: _Segments, seg: Mapping[str, Any], key: str, counters: dict[str, int],
                 tok: SegmentTokenizer | None, profile: ModelProfile, failures: list[tuple[int, str, str]]) -> None:
    """Add one sample to the pack, or record why it is left out. Only a bad sample is caught here
    (unreadable or changed media, text that would encode to a control token); a tokenizer that
    disagrees with the plan (TokenCountMismatch, GridMismatch) stops the run."""
    saved = dict(counters)
    try:
        media_docs, media = read_media(seg, key, counters, profile if tok else None)
        ids = tok.ids(seg, seg.get("image_tokens") or [], seg.get("video_tokens") or []) if tok else None
    except BAD_SAMPLE_ERRORS as exc:
        counters.update(saved)
        reason = getattr(exc, "reason", None) or "unreadable_media"
        failures.append((int(seg[R.ORDINAL]), reason, f"shards: {type(exc).__name__}: {exc}"[:500]))
        return
    out.members += media
    out.docs.append(segment_doc(seg, media_docs))
    if ids is not None:
        out.ids.append(ids[0])
        out.labels.append(ids[1])


def _pack_members(job: PackJob, settings: WriterSettings, tok: SegmentTokenizer | None,
                  failures: list[tuple[int, str, str]], profile: ModelProfile
                  ) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """All tar members of one pack (sorted by name) and its JSON document."""
    L = settings.context_length
    counters = {"images": 0, "videos": 0}
    parts = _Segments()
    for seg in job.segments:
        _add_segment(parts, seg, job.key, counters, tok, profile, failures)
    lengths = [s["length"] for s in parts.docs]
    used = int(sum(lengths))
    doc: dict[str, Any] = {
        "format": F.PACK_FORMAT, "pack_key": job.key, "pack_id": job.pack_id, "rank": job.rank,
        "step": job.step, "micro_batch": job.micro_batch, "repeat_of": job.repeat_of,
        "context_length": L, "length": used, "padding": L - used,
        "cu_seqlens": F.cu_seqlens(lengths, L), "segments": parts.docs, "input_ids": None, "labels": None,
    }
    members = parts.members
    if tok is not None:
        ids = np.full(L, tok.pad_id, dtype=np.int32)
        labels = np.full(L, F.IGNORE_INDEX, dtype=np.int32)
        if parts.ids:
            ids[:used] = np.concatenate(parts.ids)
            labels[:used] = np.concatenate(parts.labels)
        members.append((F.input_ids_member(job.key), F.encode_input_ids(ids)))
        members.append((F.labels_member(job.key), F.encode_input_ids(labels)))
        doc["input_ids"] = {"member": F.input_ids_member(job.key), "dtype": "int32", "pad_id": tok.pad_id,
                            "image_token_id": tok.image_token_id, "video_token_id": tok.video_token_id}
        doc["labels"] = {"member": F.labels_member(job.key), "dtype": "int32", "ignore_index": F.IGNORE_INDEX}
    members.append((F.json_member(job.key), F.dumps(doc)))
    return sorted(members), doc


def write_shard(root: str, job: ShardJob, settings: WriterSettings, tok: SegmentTokenizer | None = None) -> ShardResult:
    """Write one tar under `root`; return its checksum and counts."""
    path = os.path.join(root, job.path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    failures: list[tuple[int, str, str]] = []
    stats = {"samples": 0, "tokens": 0, "images": 0}
    profile = settings.profile

    def members() -> Iterator[tuple[str, bytes]]:
        for pj in job.packs:
            mem, doc = _pack_members(pj, settings, tok, failures, profile)
            stats["samples"] += len(doc["segments"])
            stats["tokens"] += doc["length"]
            stats["images"] += sum(len(s["images"]) for s in doc["segments"])
            yield from mem

    with writing(path):   # a full disk: OutOfSpace naming the shard, never a bad sample
        tario.write_tar(path, members())
        write_tar_index(path)   # Energon's tar index beside the tar (pack.energon.meta)
    return ShardResult(job.path, tario.sha256_file(path), os.path.getsize(path), len(job.packs),
                       stats["samples"], stats["tokens"], stats["images"], failures)


def write_shards(root: str, jobs: Sequence[ShardJob], settings: WriterSettings) -> list[ShardResult]:
    """Write a group of shards (one rank's) with one tokenizer load."""
    tok = SegmentTokenizer(settings.tokenizer, settings.template) if settings.tokenizer else None
    return [write_shard(root, j, settings, tok) for j in jobs]
