"""The `shards` stage: the pipeline's last step — balanced, Ascend-shaped WebDataset shards per rank.

Why offline: openPangu-VL found that packing inside the training loader leaves data-parallel ranks
with different numbers of packs. Here the pack plan (stage `pack`) is turned into a fixed schedule:
every rank gets the same number of packs in every global step, each step's attention and ViT work is
balanced across ranks (pack.balance), and every pack is exactly ``context_length`` tokens, so an NPU
graph never recompiles. The format is described in pack.packformat; pack.loader reads it back and
pack.validate checks it in CI.

Writing is atomic and deterministic: everything goes to ``{out}/.shards.tmp`` and is renamed to
``{out}/shards`` at the end (replacing an older one), tar headers are fixed (pack.tario), and nothing
depends on the clock, the machine or the number of workers. Under Ray (``ray.is_initialized()``)
each rank's shards are written by a Ray task; otherwise serially — the bytes are the same.

Leftover packs (those that cannot fill a last global step) follow ``leftover``:
``drop`` — the lowest-fill packs are not written; their samples are rejected as ``leftover_dropped``;
``carry_over`` — those packs are written to ``shards/leftover/`` (in no rank) for a later run; their
samples are rejected here as ``leftover_carried_over``; ``pad_with_repeats`` — the last step is
completed with second copies of the fullest packs (``repeat_of`` names the original); every sample is
kept, the repeated ones are seen twice per epoch. The report says which, and how many.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np
import pyarrow as pa

from curate.base import records as R
from curate.base import Resources, Stage, register
from pack import balance as B
from pack import packformat as F
from pack import tario

SEGMENT_COLUMNS = ("key", "source", "category", "images", "videos", "text", "conversations", "meta",
                   "num_tokens", "text_tokens", "image_tokens", "video_tokens", "truncated_from", "pack_id",
                   R.ORDINAL)


# =============================================================================================
# Jobs: what to write (plain data, so that Ray tasks can carry them)
# =============================================================================================

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


# =============================================================================================
# Writing
# =============================================================================================

class TokenCountMismatch(RuntimeError):
    """input_ids disagree with the planned num_tokens: a setup error (tokenizer or template differ from
    count_tokens'), not a bad sample — the run stops instead of quarantining everything."""


class _Tokenizing:
    """input_ids of one segment, consistent with the num_tokens the pack plan used."""

    def __init__(self, settings: WriterSettings):
        from pack import tokens as T
        self.T = T
        spec = settings.tokenizer
        self.tokenizer = T.load_tokenizer(None if spec == "builtin" else spec)
        self.template = T.Template(**dict(settings.template)) if settings.template else T.Template()
        self.vision_ids = {self._id(t) for t in (T.VISION_START, T.VISION_END, T.IMAGE_PAD, T.VIDEO_PAD)} - {None}
        self.structure_ids = {self._id(t) for t in (T.IM_START, T.IM_END, T.EOS)} - {None}
        pad = self._id(T.EOS)
        self.pad_id = int(pad) if pad is not None else 0

    def _id(self, token: str) -> int | None:
        try:
            return self.tokenizer.token_id(token)
        except KeyError:
            return None

    def ids(self, seg: Mapping[str, Any], image_tokens: Sequence[int], video_tokens: Sequence[int]) -> np.ndarray:
        ids = self.T.sample_input_ids(seg, self.tokenizer, list(image_tokens), list(video_tokens),
                                      template=self.template)
        want = int(seg["num_tokens"])
        if len(ids) > want and seg.get("truncated_from") is not None:
            ids = self._truncate_text(ids, want)
        if len(ids) != want:
            raise TokenCountMismatch(f"sample {seg['key']!r}: tokenizer gives {len(ids)} ids but num_tokens is {want} "
                             "(count_tokens and shards must use the same tokenizer and template)")
        return np.asarray(ids, dtype=np.int32)

    def _truncate_text(self, ids: list[int], want: int) -> list[int]:
        """Cut text tokens from the end until `want` remain. Vision tokens are never cut (as `pack`
        plans); turn markers (<|im_start|>, <|im_end|>, <|endoftext|>) only if text alone is not enough."""
        keep = [True] * len(ids)
        excess = len(ids) - want
        for protected in (self.vision_ids | self.structure_ids, self.vision_ids):
            for i in range(len(ids) - 1, -1, -1):
                if excess == 0:
                    break
                if keep[i] and ids[i] not in protected:
                    keep[i] = False
                    excess -= 1
        return [t for t, k in zip(ids, keep) if k]


def _segment_doc(seg: Mapping[str, Any], media: dict[str, list[dict]]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "key": seg["key"], "source": seg["source"], "category": seg["category"],
        "length": int(seg["num_tokens"]),
        "text_tokens": None if seg.get("text_tokens") is None else int(seg["text_tokens"]),
        "images": media["images"], "videos": media["videos"],
    }
    if seg.get("text") is not None:
        doc["text"] = seg["text"]
    if seg.get("conversations") is not None:
        doc["conversations"] = [{"role": t.get("role"), "content": t.get("content")} for t in seg["conversations"]]
    if seg.get("meta"):
        import json
        try:
            doc["meta"] = json.loads(seg["meta"])
        except ValueError:
            doc["meta"] = seg["meta"]
    if seg.get("truncated_from") is not None:
        doc["truncated_from"] = int(seg["truncated_from"])
    return doc


def _read_media(seg: Mapping[str, Any], key: str, counters: dict[str, int]) -> tuple[dict[str, list], list]:
    """Bytes of a segment's images and videos, with their member names; raises on unreadable media."""
    from curate.images import read_image_bytes
    docs: dict[str, list[dict]] = {"images": [], "videos": []}
    members: list[tuple[str, bytes]] = []
    img_tokens = list(seg.get("image_tokens") or [])
    vid_tokens = list(seg.get("video_tokens") or [])
    for kind, refs, toks, namer in (("images", seg.get("images") or [], img_tokens, F.image_member),
                                    ("videos", seg.get("videos") or [], vid_tokens, F.video_member)):
        if len(toks) != len(refs):
            raise ValueError(f"{len(refs)} {kind} but {len(toks)} {kind[:-1]} token counts")
        for ref, ntok in zip(refs, toks):
            data = read_image_bytes(ref)
            name = namer(key, counters[kind], F.media_ext(ref))
            counters[kind] += 1
            members.append((name, data))
            entry = {"member": name, "tokens": int(ntok), "width": ref.get("width"), "height": ref.get("height")}
            if kind == "images":
                entry["format"] = ref.get("format")
            else:
                entry.update(duration_s=ref.get("duration_s"), fps=ref.get("fps"))
            docs[kind].append(entry)
    return docs, members


def _pack_members(job: PackJob, settings: WriterSettings, tok: _Tokenizing | None,
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
            media_docs, media = _read_media(seg, job.key, counters)
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
        segs.append(_segment_doc(seg, media_docs))
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


def write_shard(root: str, job: ShardJob, settings: WriterSettings, tok: _Tokenizing | None = None) -> ShardResult:
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
    tok = _Tokenizing(settings) if settings.tokenizer else None
    return [write_shard(root, j, settings, tok) for j in jobs]


def _run_groups(root: str, groups: list[list[ShardJob]], settings: WriterSettings) -> list[list[ShardResult]]:
    return [write_shards(root, g, settings) for g in groups]


# =============================================================================================
# The stage
# =============================================================================================

@register
class ShardsStage(Stage):
    name = "shards"
    description = ("Write the packs as WebDataset tars per data-parallel rank: static context_length shapes, "
                   "cu_seqlens, equal packs per rank and per global step, attention/ViT cost balanced per step; "
                   "manifest.json with checksums.")
    requires = ("key", "num_tokens", "image_tokens", "pack_id", "pack_position")
    adds: Mapping[str, pa.DataType] = {}
    resources = Resources(cpus=1, batch_size=4096)
    global_columns = ("*",)

    @dataclass
    class Config:
        dp_size: int = field(default=2, metadata={"doc": "data-parallel ranks; one folder of shards per rank"})
        micro_batches: int = field(default=1, metadata={
            "doc": "packs per rank per global step (gradient accumulation); a global step is dp_size x this"})
        alignment: int = field(default=128, metadata={
            "doc": "context_length must be a multiple of this (NPU/GPU kernel tiling)"})
        context_length: int | None = field(default=None, metadata={
            "doc": "pack length in tokens; null: the pack stage's context_length (they must agree)"})
        packs_per_shard: int = field(default=256, metadata={"doc": "packs per tar file"})
        leftover: Literal["drop", "carry_over", "pad_with_repeats"] = field(default="drop", metadata={
            "doc": "packs that cannot fill a last global step: drop (lowest fill, accounted), carry_over "
                   "(written to shards/leftover/ for a later run), pad_with_repeats (complete the step with "
                   "copies of the fullest packs)"})
        tokenizer: str | None = field(default=None, metadata={
            "doc": "write input_ids (.npy per pack): 'upstream' (count_tokens' tokenizer and template), "
                   "'builtin' (the shipped Qwen tokenizer), or a tokenizer directory; null: no input_ids"})
        shuffle_steps: bool = field(default=True, metadata={
            "doc": "shuffle the order of global steps with the run seed (balanced steps are formed from alike "
                   "packs; without a shuffle training would see packs sorted by cost)"})
        patches_per_image_token: int = field(default=4, metadata={
            "doc": "ViT patches per LLM image token (Qwen2-VL merges 2x2) for the ViT cost"})
        vit_hidden: int = field(default=1280, metadata={"doc": "ViT width, weighs the ViT's attention cost"})
        output_dir: str | None = field(default=None, metadata={
            "doc": "where the shards folder goes; null: {run output}/shards"})

    # --- settings --------------------------------------------------------------------------------
    def validate_config(self) -> None:
        c = self.config
        for name in ("dp_size", "micro_batches", "alignment", "packs_per_shard", "patches_per_image_token",
                     "vit_hidden"):
            v = getattr(c, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        if c.leftover not in B.LEFTOVER_POLICIES:
            raise ValueError(f"leftover: must be one of {list(B.LEFTOVER_POLICIES)}, got {c.leftover!r}")
        if c.context_length is not None:
            if not isinstance(c.context_length, int) or c.context_length < 1:
                raise ValueError(f"context_length: must be a positive integer or null, got {c.context_length!r}")
        if c.tokenizer not in (None, "upstream", "builtin") and not os.path.isdir(str(c.tokenizer)):
            raise ValueError(f"tokenizer: {c.tokenizer!r} is not 'upstream', 'builtin', null or a directory")
        if self.context.upstream or c.context_length is not None:
            self.capacity()

    def capacity(self) -> int:
        """The pack length: this stage's context_length and the pack stage's, which must agree and be
        a multiple of alignment."""
        c = self.config
        upstream = _upstream_setting(self.context.upstream, "pack", "context_length")
        if upstream is not None and c.context_length is not None and int(upstream) != c.context_length:
            raise ValueError(f"context_length: shards.context_length={c.context_length} differs from "
                             f"pack.context_length={upstream}; packs are planned for the pack stage's length")
        L = c.context_length if c.context_length is not None else upstream
        if L is None:
            raise ValueError("context_length: not set here and no pack stage before shards; set shards.context_length")
        L = int(L)
        if L % c.alignment:
            which = "shards.context_length" if c.context_length is not None else "pack.context_length"
            raise ValueError(f"context_length: {which}={L} is not a multiple of shards.alignment={c.alignment}; "
                             f"use {-(-L // c.alignment) * c.alignment} or {L // c.alignment * c.alignment}")
        return L

    def _tokenizer_settings(self) -> tuple[str | None, dict[str, Any]]:
        spec = self.config.tokenizer
        up = dict((self.context.upstream or {}).get("count_tokens", {}))
        template = {k: up[k] for k in ("kind", "system_prompt", "caption_prompt") if k in up}
        if "template" in up:
            template["kind"] = up["template"]
        if spec is None:
            return None, {}
        if spec == "upstream":
            spec = up.get("tokenizer") or "builtin"
        return str(spec), template

    def output_root(self) -> str:
        if self.config.output_dir:
            return self.config.output_dir
        if not self.context.out_dir:
            raise ValueError("output_dir: no run output directory in the stage context; set shards.output_dir")
        return os.path.join(self.context.out_dir, "shards")

    # --- global step -----------------------------------------------------------------------------
    def decide(self, table: pa.Table) -> pa.Table:
        c = self.config
        L = self.capacity()
        seg_rows, pack_ids, costs = self._packs(table, L)
        plan = B.plan_balanced(costs, c.dp_size, c.micro_batches, c.leftover, seed=self.context.seed,
                               shuffle_steps=c.shuffle_steps)
        groups, leftover_jobs = self._jobs(plan, seg_rows, pack_ids)
        tok_spec, template = self._tokenizer_settings()
        settings = WriterSettings(L, tok_spec, template)

        final = self.output_root()
        tmp = _sibling(final, "tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for r in range(c.dp_size):
            os.makedirs(os.path.join(tmp, F.rank_dir(r)), exist_ok=True)
        try:
            results = _run_groups(tmp, groups + ([leftover_jobs] if leftover_jobs else []), settings)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        rank_results = results[:len(groups)]
        left_results = results[len(groups)] if leftover_jobs else []

        failures: dict[int, tuple[str, str]] = {}
        for res in [r for g in results for r in g]:
            for ordinal, reason, detail in res.failures:
                failures.setdefault(ordinal, (reason, detail))
        manifest = self._manifest(L, plan, costs, rank_results, left_results, seg_rows, tok_spec, failures)
        with open(os.path.join(tmp, F.MANIFEST_NAME), "wb") as fh:
            fh.write(F.dumps(manifest) + b"\n")
        _replace_dir(tmp, final)
        self.report = self._report(final, manifest, plan, costs)
        return self._decisions(table, plan, seg_rows, pack_ids, failures)

    def _packs(self, table: pa.Table, L: int) -> tuple[list[list[dict]], np.ndarray, B.PackCosts]:
        for col in ("num_tokens", "pack_id", "pack_position"):
            if col not in table.column_names:
                raise ValueError(f"shards: column {col!r} is missing; run count_tokens and pack before shards")
            if table.column(col).null_count:
                raise ValueError(f"shards: {table.column(col).null_count} kept rows have no {col}; "
                                 "run count_tokens and pack before shards")
        cols = [c for c in SEGMENT_COLUMNS if c in table.column_names]
        order = np.lexsort((table.column(R.ORDINAL).to_numpy(), table.column("pack_position").to_numpy(),
                            table.column("pack_id").to_numpy()))
        t = table.select(cols).take(pa.array(order, type=pa.int64()))
        rows = t.to_pylist()
        pid = t.column("pack_id").to_numpy()
        bounds = np.r_[0, np.flatnonzero(np.diff(pid)) + 1, len(rows)] if len(rows) else np.zeros(1, dtype=np.int64)
        seg_rows = [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        pack_ids = pid[bounds[:-1]] if len(rows) else np.zeros(0, dtype=np.int64)
        for p, segs in zip(pack_ids.tolist(), seg_rows):
            used = sum(int(s["num_tokens"]) for s in segs)
            if used > L:
                raise ValueError(f"shards: pack {p} holds {used} tokens > context_length {L}; "
                                 "the pack plan was made for another context_length")
            bad = [s["key"] for s in segs if int(s["num_tokens"]) <= 0]
            if bad:
                raise ValueError(f"shards: sample {bad[0]!r} has num_tokens <= 0")
        costs = B.pack_costs([[int(s["num_tokens"]) for s in segs] for segs in seg_rows],
                             [[int(x) for s in segs for x in (s.get("image_tokens") or [])]
                              + [int(x) for s in segs for x in (s.get("video_tokens") or [])]
                              for segs in seg_rows],
                             B.CostModel(self.config.patches_per_image_token, self.config.vit_hidden))
        return seg_rows, pack_ids, costs

    def _jobs(self, plan: B.Plan, seg_rows: list[list[dict]], pack_ids: np.ndarray
              ) -> tuple[list[list[ShardJob]], list[ShardJob]]:
        c = self.config
        first_key: dict[int, str] = {}
        per_rank: list[list[PackJob]] = [[] for _ in range(c.dp_size)]
        for s in range(plan.steps):
            for r in range(c.dp_size):
                for m in range(c.micro_batches):
                    p = int(plan.slots[s, r, m])
                    key = F.pack_key(r, s, m)
                    repeat_of = first_key[p] if plan.repeat[s, r, m] else None
                    first_key.setdefault(p, key)
                    per_rank[r].append(PackJob(key, int(pack_ids[p]), r, s, m, repeat_of, seg_rows[p]))
        groups = []
        for r, packs in enumerate(per_rank):
            groups.append([ShardJob(f"{F.rank_dir(r)}/{F.shard_name(i // c.packs_per_shard)}",
                                    packs[i:i + c.packs_per_shard]) for i in range(0, len(packs), c.packs_per_shard)])
        leftover_jobs: list[ShardJob] = []
        if c.leftover == "carry_over" and plan.leftover.size:
            packs = [PackJob(F.leftover_key(int(pack_ids[p])), int(pack_ids[p]), None, None, None, None, seg_rows[p])
                     for p in plan.leftover.tolist()]
            leftover_jobs = [ShardJob(f"{F.LEFTOVER_DIR}/{F.shard_name(i // c.packs_per_shard)}",
                                      packs[i:i + c.packs_per_shard]) for i in range(0, len(packs), c.packs_per_shard)]
        return groups, leftover_jobs

    def _manifest(self, L: int, plan: B.Plan, costs: B.PackCosts, rank_results: list[list[ShardResult]],
                  left_results: list[ShardResult], seg_rows: list[list[dict]], tok_spec: str | None,
                  failures: Mapping[int, tuple[str, str]]) -> dict[str, Any]:
        c = self.config

        def shard_entry(res: ShardResult) -> dict[str, Any]:
            return {"path": res.path, "sha256": res.sha256, "bytes": res.bytes, "packs": res.packs,
                    "samples": res.samples, "tokens": res.tokens, "images": res.images}

        ranks = []
        for r, results in enumerate(rank_results):
            packs = sum(x.packs for x in results)
            tokens = sum(x.tokens for x in results)
            ranks.append({"rank": r, "dir": F.rank_dir(r), "packs": packs,
                          "samples": sum(x.samples for x in results), "tokens": tokens,
                          "images": sum(x.images for x in results),
                          "fill": round(tokens / (packs * L), 6) if packs else 0.0,
                          "shards": [shard_entry(x) for x in results]})
        total_packs = sum(x["packs"] for x in ranks)
        total_tokens = sum(x["tokens"] for x in ranks)
        repeated = plan.repeat
        rep_packs = int(repeated.sum())
        rep_samples = int(sum(len(seg_rows[p]) for p in plan.slots[repeated].tolist()))
        left_samples = int(sum(len(seg_rows[p]) for p in plan.leftover.tolist()))
        left_tokens = int(costs.tokens[plan.leftover].sum()) if plan.leftover.size else 0
        return {
            "format": F.MANIFEST_FORMAT, "recipe_name": self.context.recipe_name,
            "recipe_hash": self.context.recipe_hash, "seed": int(self.context.seed),
            "context_length": L, "alignment": c.alignment, "dp_size": c.dp_size,
            "micro_batches": c.micro_batches, "global_batch_packs": c.dp_size * c.micro_batches,
            "steps": plan.steps, "packs_per_rank": plan.steps * c.micro_batches,
            "packs_per_shard": c.packs_per_shard, "tokenizer": tok_spec,
            "sequence_layout": "cu_seqlens include the padding as a final segment when padding > 0; "
                               "position ids restart at every cu_seqlens boundary",
            "totals": {"packs": total_packs, "samples": sum(x["samples"] for x in ranks),
                       "unique_samples": sum(x["samples"] for x in ranks) - rep_samples,
                       "tokens": total_tokens, "padding": total_packs * L - total_tokens,
                       "images": sum(x["images"] for x in ranks),
                       "fill": round(total_tokens / (total_packs * L), 6) if total_packs else 0.0},
            "ranks": ranks,
            "leftover": {"policy": c.leftover, "packs": int(plan.leftover.size), "samples": left_samples,
                         "tokens": left_tokens, "repeated_packs": rep_packs, "repeated_samples": rep_samples,
                         "shards": [shard_entry(x) for x in left_results]},
            "failed_samples": len(failures),
            "balance": B.summarize(plan, costs).to_dict(),
        }

    def _report(self, final: str, manifest: dict[str, Any], plan: B.Plan, costs: B.PackCosts) -> dict[str, Any]:
        c = self.config
        baseline = B.summarize(B.plan_round_robin(costs, c.dp_size, c.micro_batches, c.leftover), costs).to_dict()
        left = manifest["leftover"]
        if c.leftover == "pad_with_repeats":
            action = (f"completed the last global step with {left['repeated_packs']} repeated pack(s) "
                      f"({left['repeated_samples']} samples seen twice)" if left["repeated_packs"]
                      else "nothing to do: the packs filled whole global steps")
        elif left["packs"] == 0:
            action = "nothing to do: the packs filled whole global steps"
        elif c.leftover == "drop":
            action = (f"dropped {left['packs']} pack(s) with the lowest fill ({left['samples']} samples, "
                      f"{left['tokens']} tokens) that could not fill a global step of {c.dp_size * c.micro_batches}")
        else:
            action = (f"carried over {left['packs']} pack(s) ({left['samples']} samples) to "
                      f"{F.LEFTOVER_DIR}/ for a later run; they are in no rank")
        per_step = None
        if plan.steps <= 64:
            loads = {name: np.asarray(getattr(costs, name), dtype=np.float64)[plan.slots].sum(axis=2)
                     for name in ("attention", "vit")}
            ratios = B.step_ratios(plan, costs)
            per_step = [{"step": s,
                         "attention_per_rank": [round(float(v), 1) for v in loads["attention"][s]],
                         "vit_per_rank": [round(float(v), 1) for v in loads["vit"][s]],
                         "attention_max_over_mean": round(float(ratios["attention"][s]), 4),
                         "vit_max_over_mean": round(float(ratios["vit"][s]), 4)} for s in range(plan.steps)]
        return {"shards": {
            "dir": final, "dp_size": c.dp_size, "micro_batches": c.micro_batches,
            "context_length": manifest["context_length"], "steps": manifest["steps"],
            "packs": manifest["totals"]["packs"], "packs_per_rank": [r["packs"] for r in manifest["ranks"]],
            "samples_per_rank": [r["samples"] for r in manifest["ranks"]],
            "fill": manifest["totals"]["fill"], "fill_per_rank": [r["fill"] for r in manifest["ranks"]],
            "padding_tokens": manifest["totals"]["padding"], "tokenized": manifest["tokenizer"] is not None,
            "balance": manifest["balance"], "balance_round_robin_baseline": baseline,
            "per_step": per_step,
            "leftover": {**{k: v for k, v in left.items() if k != "shards"}, "action": action},
            "failed_samples": manifest["failed_samples"],
        }}

    def _decisions(self, table: pa.Table, plan: B.Plan, seg_rows: list[list[dict]], pack_ids: np.ndarray,
                   failures: Mapping[int, tuple[str, str]]) -> pa.Table:
        c = self.config
        reason_of: dict[int, tuple[str, str | None, str]] = {}
        left_reason = "leftover_dropped" if c.leftover == "drop" else "leftover_carried_over"
        g = c.dp_size * c.micro_batches
        for p in plan.leftover.tolist():
            detail = (f"pack {int(pack_ids[p])} did not fill a global step "
                      f"of {g} packs" + (f"; written to {F.LEFTOVER_DIR}/" if c.leftover == "carry_over" else ""))
            for s in seg_rows[p]:
                reason_of[int(s[R.ORDINAL])] = (R.REJECTED, left_reason, detail)
        for ordinal, (reason, detail) in failures.items():
            reason_of.setdefault(ordinal, (R.QUARANTINED, reason, detail))
        ords = table.column(R.ORDINAL).to_pylist()
        status = [reason_of.get(o, (R.KEPT, None, None)) for o in ords]
        return pa.table({
            R.ORDINAL: pa.array(ords, type=pa.int64()),
            R.STATUS: pa.array([s[0] for s in status], type=pa.string()),
            R.REASON: pa.array([s[1] for s in status], type=pa.string()),
            R.DETAIL: pa.array([s[2] for s in status], type=pa.string()),
        })


def _upstream_setting(upstream: Mapping[str, Mapping[str, Any]] | None, stage: str, name: str) -> Any:
    """An earlier stage's setting; its Config default when the recipe ran that stage without setting it.
    None when the stage did not run."""
    if not upstream or stage not in upstream:
        return None
    if name in upstream[stage]:
        return upstream[stage][name]
    from curate.base import get
    return getattr(get(stage).Config(), name, None)


def _sibling(final: str, suffix: str) -> str:
    """`{parent}/.{name}.{suffix}`: the temp (and old) folders live beside the output, on its filesystem."""
    final = os.path.abspath(final)
    return os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.{suffix}")


def _replace_dir(tmp: str, final: str) -> None:
    """Make `tmp` the new `final`, replacing an older one; a crash leaves either the old or the new."""
    old = _sibling(final, "old")
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(final):
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
