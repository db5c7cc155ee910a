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
from typing import Any, Literal, Mapping

import numpy as np
import pyarrow as pa

from curate import records as R
from curate.stage import Resources, Stage, register
from pack import balance as B
from pack import packformat as F
from pack.dirswap import replace_dir, sibling_dir
from pack.profile import resolve_profile
from pack.shard_manifest import build_manifest, build_report
from pack.shard_writer import PackJob, ShardJob, ShardResult, WriterSettings, write_shards

SEGMENT_COLUMNS = ("key", "source", "category", "images", "videos", "text", "conversations", "meta",
                   "num_tokens", "text_tokens", "image_tokens", "video_tokens", "truncated_from", "pack_id",
                   R.ORDINAL)


def _run_groups(root: str, groups: list[list[ShardJob]], settings: WriterSettings) -> list[list[ShardResult]]:
    """Serially, or one Ray task per group when a Ray cluster is up (same bytes either way)."""
    try:
        import ray
        use_ray = ray.is_initialized() and len(groups) > 1
    except ImportError:
        use_ray = False
    if not use_ray:
        return [write_shards(root, g, settings) for g in groups]
    task = ray.remote(num_cpus=1)(write_shards)
    return ray.get([task.remote(root, g, settings) for g in groups])


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
        input_ids: bool = field(default=False, metadata={
            "doc": "write input_ids and labels (.npy per pack) with the model profile's tokenizer and template "
                   "(the ones count_tokens counted with)"})
        shuffle_steps: bool = field(default=True, metadata={
            "doc": "shuffle the order of global steps with the run seed (balanced steps are formed from alike "
                   "packs; without a shuffle training would see packs sorted by cost)"})
        output_dir: str | None = field(default=None, metadata={
            "doc": "where the shards folder goes; null: {run output}/shards"})

    # --- settings --------------------------------------------------------------------------------
    def validate_config(self) -> None:
        c = self.config
        for name in ("dp_size", "micro_batches", "alignment", "packs_per_shard"):
            v = getattr(c, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        if c.leftover not in B.LEFTOVER_POLICIES:
            raise ValueError(f"leftover: must be one of {list(B.LEFTOVER_POLICIES)}, got {c.leftover!r}")
        if c.context_length is not None:
            if not isinstance(c.context_length, int) or c.context_length < 1:
                raise ValueError(f"context_length: must be a positive integer or null, got {c.context_length!r}")
        self.profile = resolve_profile(self.context, None)
        if c.input_ids and self.profile.tokenizer is not None and not os.path.isdir(self.profile.tokenizer):
            raise ValueError(f"tokenizer: the model profile's tokenizer {self.profile.tokenizer!r} is not a directory")
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
        """(tokenizer spec, template fields) of the model profile; (None, {}) without input_ids."""
        if not self.config.input_ids:
            return None, {}
        return self.profile.tokenizer or "builtin", self.profile.template_fields()

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
        settings = WriterSettings(L, tok_spec, template, self.profile.to_dict())

        final = self.output_root()
        tmp = sibling_dir(final, "tmp")
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
        manifest = build_manifest(c, self.context, self.profile, L, plan, costs, rank_results, left_results, seg_rows, tok_spec, failures)
        with open(os.path.join(tmp, F.MANIFEST_NAME), "wb") as fh:
            fh.write(F.dumps(manifest) + b"\n")
        replace_dir(tmp, final)
        self.report = build_report(c, final, manifest, plan, costs)
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
                             B.CostModel(self.profile.vit_patches_per_token(), self.profile.vit_hidden))
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
    from curate.stage import get
    return getattr(get(stage).Config(), name, None)
