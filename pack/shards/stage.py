"""The `shards` stage: the pipeline's last step — balanced, Ascend-shaped WebDataset shards per rank.

Why offline: openPangu-VL found that packing inside the training loader leaves data-parallel ranks
with different numbers of packs. Here the pack plan (stage `pack`) is turned into a fixed schedule:
every rank gets the same number of packs in every global step, each step's attention and ViT work is
balanced across ranks (pack.balance.plan), and every pack is exactly ``context_length`` tokens, so an NPU
graph never recompiles. The format is described in pack.packformat; pack.trainer.loader reads it back and
pack.shards.validate checks it in CI. Every rank folder is also a Megatron-Energon dataset (pack.energon.meta
writes its metadata, pack.energon.cooker is the factory its dataset.yaml names).

Writing is atomic and deterministic: everything goes to ``{out}/.shards.tmp`` and is renamed to
``{out}/shards`` at the end (replacing an older one), tar headers are fixed (pack.shards.tario), and nothing
depends on the clock, the machine or the number of workers. The step is distributed by whichever
executor runs it (pack.shards.schedule): per-pack statistics, the plan on the driver, and every shard
written by the worker its rows are shuffled to — the bytes are the same inline and on Ray.

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

import pyarrow as pa

from curate.base import records as R
from curate.base.global_data import StepResult
from curate.base.diskspace import writing
from curate.base import Resources, Stage, register
from pack.balance import plan as B
from pack import packformat as F
from pack.shards.dirswap import replace_dir, sibling_dir
from pack.energon.meta import write_energon_metadata
from pack.packing.chunks import materialize_chunks
from pack.profile import ModelProfile, run_profile
from pack.shards.manifest import build_manifest, build_report
from pack.shards import schedule as S
from pack.shards import slots as T
from pack.shards.writer import ShardResult, WriterSettings

SLOTS_DIR = ".slots"   # the plan's slot table while the shards are written (pack.shards.slots)
SEGMENT_COLUMNS = ("key", "source", "category", "images", "videos", "text", "conversations", "meta",
                   "num_tokens", "text_tokens", "image_tokens", "video_tokens", "truncated_from", "pack_id",
                   "segments", "doc_key", "chunk_index", R.ORDINAL)


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
        self.profile = run_profile(self.context)
        if c.input_ids and self.profile.tokenizer is not None and not os.path.isdir(self.profile.tokenizer):
            raise ValueError(f"tokenizer: the model profile's tokenizer {self.profile.tokenizer!r} is not a directory")
        self.capacity()

    def capacity(self) -> int:
        """The pack length: the model profile's context_length (the pack stage planned for the same
        one), a multiple of alignment."""
        L, align = self.profile.context_length, self.config.alignment
        if L % align:
            raise ValueError(f"context_length: {L} (the model profile's) is not a multiple of shards.alignment={align}; "
                             f"use {-(-L // align) * align} or {L // align * align}")
        return L

    def input_identity(self) -> ModelProfile:
        """The run's model profile decides grids, ids and the ViT cost balanced: a changed `model:`
        re-writes the shards on resume (count_tokens re-runs too; this holds where a plugin counts)."""
        return self.profile

    def output_root(self) -> str:
        if self.config.output_dir:
            return self.config.output_dir
        if not self.context.out_dir:
            raise ValueError("output_dir: no run output directory in the stage context; set shards.output_dir")
        return os.path.join(self.context.out_dir, "shards")

    # --- global step (distributed; see pack.shards.schedule) ----------------------------------------
    def external_outputs(self) -> list[str]:
        return [self.output_root()]

    def global_step(self, data: Any) -> Any:
        c = self.config
        L = self.capacity()
        rows = data.count()   # known for a step's input: sizes the writing shuffle's partitions
        data = data.map_batches(materialize_chunks)   # chunks of split documents become their own documents
        stats = data.aggregate(S.pack_partial, S.combine_pack_stats, S.merge_pack_stats)
        S.check_stats(stats, L)
        costs = stats.costs(B.CostModel(self.profile.vit_patches_per_token(), self.profile.vit_hidden))
        plan = B.plan_balanced(costs, c.dp_size, c.micro_batches, c.leftover, seed=self.context.seed,
                               shuffle_steps=c.shuffle_steps)
        carry = c.leftover == "carry_over"
        paths, shard_ranks = T.shard_layout(plan, len(plan.leftover), c.packs_per_shard, carry)
        settings = WriterSettings(self.profile, c.input_ids)
        tok_spec = settings.tokenizer
        final = self.output_root()
        tmp = sibling_dir(final, "tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for r in range(c.dp_size):
            os.makedirs(os.path.join(tmp, F.rank_dir(r)), exist_ok=True)
        left_reason = "leftover_carried_over" if c.leftover == "carry_over" else ""
        slots_dir = os.path.join(tmp, SLOTS_DIR)
        try:
            T.write_slots(slots_dir, plan, T.slot_table(plan, c.packs_per_shard, carry), stats.pack_ids,
                          c.packs_per_shard)   # on disk, not held: the map tasks read it
            met = (data.map_batches(lambda b: T.assign_slots(b, slots_dir))
                   .shuffle_reduce("_shard", lambda g: S.write_shard_groups(g, tmp, settings),
                                   partitions=S.reduce_partitions(len(paths), rows), block_rows=S.REDUCE_ROWS)
                   .gather())   # one row per shard: the shuffle's pieces are released once it is written
            S.check_met(met, len(paths))
            results = S.read_results(tmp, len(paths))
            T.write_failures(slots_dir, [(o, shard, r, d) for shard, res in enumerate(results) for o, r, d in res.failures])
            decisions = data.map_batches(lambda b: T.slot_decisions(b, slots_dir, left_reason)).materialize()
            shutil.rmtree(slots_dir)
            rank_results: list[list[ShardResult]] = [[] for _ in range(c.dp_size)]
            for rank, res in zip(shard_ranks, results):
                if rank >= 0:
                    rank_results[rank].append(res)
            failures = {o: (r, d) for res in results for o, r, d in res.failures}
            manifest = build_manifest(c, self.context, self.profile, L, plan, costs, rank_results,
                                      [res for rank, res in zip(shard_ranks, results) if rank < 0], stats.segments,
                                      tok_spec, failures)
            with writing(os.path.join(tmp, F.MANIFEST_NAME)):
                with open(os.path.join(tmp, F.MANIFEST_NAME), "wb") as fh:
                    fh.write(F.dumps(manifest) + b"\n")
                write_energon_metadata(tmp, manifest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)   # never a partial shards folder, full disk included
            raise
        replace_dir(tmp, final)
        # report.json holds only what the data determines: the folder relative to the run's output
        shown = os.path.relpath(final, self.context.out_dir) if self.context.out_dir and \
            os.path.abspath(final).startswith(os.path.abspath(self.context.out_dir) + os.sep) else final
        return StepResult(decisions, build_report(c, shown, manifest, plan, costs))

