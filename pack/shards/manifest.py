"""What the shards stage writes beside the tars: ``manifest.json`` (checksums, per-rank totals,
leftover and balance numbers) and the stage's report with its prose about leftover packs."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from pack.balance import plan as B
from pack.balance import summary as BS
from pack import packformat as F
from pack.profile import ModelProfile
from pack.shards.writer import ShardResult


def build_manifest(config: Any, context: Any, profile: ModelProfile, L: int, plan: B.Plan, costs: B.PackCosts, rank_results: list[list[ShardResult]],
              left_results: list[ShardResult], segments_per_pack: Any, tok_spec: str | None,
              failures: Mapping[int, tuple[str, str]]) -> dict[str, Any]:
    c = config

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
    segs = np.asarray(segments_per_pack, dtype=np.int64)
    rep_samples = int(segs[plan.slots[repeated]].sum()) if rep_packs else 0
    left_samples = int(segs[plan.leftover].sum()) if plan.leftover.size else 0
    left_tokens = int(costs.tokens[plan.leftover].sum()) if plan.leftover.size else 0
    return {
        "format": F.MANIFEST_FORMAT, "recipe_name": context.recipe_name,
        "recipe_hash": context.recipe_hash, "seed": int(context.seed),
        "context_length": L, "alignment": c.alignment, "dp_size": c.dp_size,
        "micro_batches": c.micro_batches, "global_batch_packs": c.dp_size * c.micro_batches,
        "steps": plan.steps, "packs_per_rank": plan.steps * c.micro_batches,
        "packs_per_shard": c.packs_per_shard, "tokenizer": tok_spec, "model": profile.to_dict(),
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
        "balance": BS.summarize(plan, costs).to_dict(),
    }

def build_report(config: Any, final: str, manifest: dict[str, Any], plan: B.Plan, costs: B.PackCosts) -> dict[str, Any]:
    c = config
    baseline = BS.summarize(B.plan_round_robin(costs, c.dp_size, c.micro_batches, c.leftover), costs).to_dict()
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
        ratios = BS.step_ratios(plan, costs)
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
