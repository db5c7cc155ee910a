"""A training run on the demo's shards that a new user can start: ``make train-demo`` (after ``make demo``).

    python -m pack.trainer.train_demo --shards out/demo/shards --check-resume       # what make train-demo runs
    python -m pack.trainer.train_demo --shards out/demo/shards --steps 24 --out out/train-demo/run [--resume]
    python -m pack.trainer.train_demo ... --device cuda | --device npu                # torch_npu imported only then

It trains a tiny random Qwen2-VL (from a config with a fixed seed: nothing is downloaded) with plain
PyTorch on the packs of every data-parallel rank — one pack per rank per step, the global batch the
shards stage balanced — reading them with ``PackedShards`` (pixel values for images and videos),
batching with ``collate_packs`` (the segment-confined attention of ``--attn``) and averaging the loss
per segment with ``pack.trainer.loss`` (``--loss-average token|sample``). A checkpoint holds the model, the
optimizer, the RNG and every rank's loader state, in safetensors and JSON (no pickle).

``--check-resume`` is the proof that resumption is exact: it runs the training uninterrupted in a child
process, runs it again in a second child that it kills (SIGKILL) as soon as that child reports its
mid-way checkpoint, resumes from that checkpoint in a third, and checks that the resumed run's loss
curve equals the uninterrupted one step for step (bit for bit on a CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, VISION_START_ID, VISION_END_ID = 151655, 151656, 151652, 151653
VOCAB_SIZE = 151936          # the Qwen2 tokenizer's ids (pack.tokens ships it)
CHECKPOINT_LINE = "checkpoint saved at step"


@dataclass(frozen=True)
class TrainConfig:
    shards: str
    out: str
    steps: int = 24
    checkpoint_every: int = 12
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    attn: str = "sdpa"
    loss_average: str = "token"
    resume: bool = False


def tiny_model(seed: int = 0, attn: str = "sdpa") -> Any:
    """A random Qwen2-VL small enough for a CPU (1 text layer of width 32, 1 vision block), the real
    vocabulary and special-token ids; the same seed builds the same weights."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1,
                         rope_parameters={"rope_type": "default", "mrope_section": [4, 2, 2], "rope_theta": 10000.0}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_chans=3),
        image_token_id=IMAGE_TOKEN_ID, video_token_id=VIDEO_TOKEN_ID, vision_start_token_id=VISION_START_ID,
        vision_end_token_id=VISION_END_ID)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg)
    model.set_attn_implementation({"text_config": attn, "vision_config": "sdpa" if attn == "eager" else attn})
    return model


def resolve_training_device(device: str) -> str:
    """``cpu``, ``cuda[:n]`` or ``npu[:n]``; torch_npu is imported only for ``npu``."""
    import torch
    kind = device.split(":")[0]
    if kind == "npu":
        try:
            import torch_npu  # noqa: F401  (registers the "npu" device with torch)
        except ImportError as exc:
            raise SystemExit(f"--device npu needs torch_npu (the Ascend PyTorch adapter): {exc}") from None
        return device
    if kind == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    if kind not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu, cuda or npu, got {device!r}")
    return device


class Trainer:
    """One process's training: model, optimizer, a loader per data-parallel rank, the loss curve."""

    def __init__(self, cfg: TrainConfig):
        import torch
        from pack.trainer.loader import PackedShards
        self.cfg = cfg
        self.device = resolve_training_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.model = tiny_model(cfg.seed, cfg.attn).to(self.device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr)
        manifest = json.loads((Path(cfg.shards) / "manifest.json").read_text())
        dp = int(manifest["dp_size"])
        self.loaders = [PackedShards(cfg.shards, rank=r, world_size=dp, shuffle=True, seed=cfg.seed, pixel_values=True)
                        for r in range(dp)]
        if any(d.num_packs != self.loaders[0].num_packs or d.num_packs == 0 for d in self.loaders):
            raise SystemExit("every rank needs the same, non-zero number of packs (the shards stage balances them)")
        self._streams: list[Any] | None = None
        self.step = 0
        self.losses: list[float] = []
        self.tokens = 0
        self.ckpt_dir = Path(cfg.out) / "checkpoint"

    @staticmethod
    def _stream(ds: Any) -> Any:
        """The rank's packs epoch after epoch, from where its tracker stands (PackedShards iterated in
        this process; each pack is marked consumed when the step takes it)."""
        while True:
            yield from ds

    def next_batch(self) -> dict[str, Any]:
        """One pack from every rank (the global batch of one step), marked consumed."""
        from pack.trainer.collate import collate_packs, to_device
        if self._streams is None:          # created lazily: after load() has moved the trackers
            self._streams = [self._stream(ds) for ds in self.loaders]
        packs = [next(stream) for stream in self._streams]
        for ds, pack in zip(self.loaders, packs):
            ds.mark_consumed(pack)
        return to_device(collate_packs(packs, attn_implementation=self.cfg.attn), self.device)

    def train_step(self) -> float:
        from pack.trainer.collate import model_inputs
        from pack.trainer.loss import packed_loss_from_hidden
        batch = self.next_batch()
        for key in ("pixel_values", "pixel_values_videos"):
            if batch.get(key) is not None:
                batch[key] = batch[key].float()
        hidden = self.model.model(**model_inputs(batch)).last_hidden_state
        loss = packed_loss_from_hidden(hidden, self.model.lm_head, batch["labels"], batch["segment_ids"],
                                       self.cfg.loss_average)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        self.tokens += int(batch["padding_mask"].sum())
        value = float(loss.detach().cpu())
        self.losses.append(value)
        return value

    # --- checkpoints: safetensors for tensors, JSON for the rest ---------------------------------------
    def save(self) -> Path:
        import torch
        from safetensors.torch import save_file
        tmp = self.ckpt_dir.with_name(self.ckpt_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        opt = self.optimizer.state_dict()
        tensors = {f"{i}.{name}": torch.as_tensor(v).detach().cpu().contiguous()
                   for i, state in opt["state"].items() for name, v in state.items()}
        tensors["rng.cpu"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        meta = {"step": self.step, "losses": self.losses, "tokens": self.tokens, "config": self.cfg.__dict__,
                "param_groups": opt["param_groups"], "loaders": [d.state_dict() for d in self.loaders]}
        (tmp / "trainer.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        old = self.ckpt_dir.with_name(self.ckpt_dir.name + ".old")
        if self.ckpt_dir.exists():
            self.ckpt_dir.rename(old)
        tmp.rename(self.ckpt_dir)                         # the checkpoint appears whole or not at all
        shutil.rmtree(old, ignore_errors=True)
        return self.ckpt_dir

    def load(self) -> None:
        import torch
        from safetensors.torch import load_file
        meta = json.loads((self.ckpt_dir / "trainer.json").read_text())
        self.model.load_state_dict(load_file(str(self.ckpt_dir / "model.safetensors"), device=str(self.device)))
        tensors = load_file(str(self.ckpt_dir / "optimizer.safetensors"))
        torch.set_rng_state(tensors.pop("rng.cpu"))
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            i, name = key.split(".", 1)
            state.setdefault(int(i), {})[name] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        for ds, s in zip(self.loaders, meta["loaders"]):
            ds.load_state_dict(s)
        self.step, self.losses, self.tokens = int(meta["step"]), list(meta["losses"]), int(meta["tokens"])


def train(cfg: TrainConfig) -> list[float]:
    """Train to ``cfg.steps`` (from the checkpoint with ``resume``), checkpointing every
    ``checkpoint_every`` steps; writes ``losses.json``; returns the loss curve."""
    trainer = Trainer(cfg)
    if cfg.resume:
        if not (trainer.ckpt_dir / "trainer.json").exists():
            raise SystemExit(f"--resume: no checkpoint in {trainer.ckpt_dir}")
        trainer.load()
        print(f"resumed from {trainer.ckpt_dir} at step {trainer.step}", flush=True)
    start = time.perf_counter()
    while trainer.step < cfg.steps:
        loss = trainer.train_step()
        print(f"step {trainer.step:3d}  loss {loss:.6f}", flush=True)
        if trainer.step % cfg.checkpoint_every == 0 and trainer.step < cfg.steps:
            trainer.save()
            print(f"{CHECKPOINT_LINE} {trainer.step}", flush=True)
    took = time.perf_counter() - start
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "losses.json").write_text(json.dumps(trainer.losses))
    print(f"done: {trainer.step} steps, {trainer.tokens} tokens, {took:.1f} s in this process", flush=True)
    return trainer.losses


def _child(cfg: TrainConfig, out: Path, resume: bool = False) -> list[str]:
    args = [sys.executable, "-m", "pack.trainer.train_demo", "--shards", cfg.shards, "--out", str(out), "--steps",
            str(cfg.steps), "--checkpoint-every", str(cfg.checkpoint_every), "--seed", str(cfg.seed),
            "--device", cfg.device, "--attn", cfg.attn, "--loss-average", cfg.loss_average]
    return args + (["--resume"] if resume else [])


# What one run writes into its --out folder (Trainer.save, train): all a re-check may delete there.
RUN_FILES = frozenset({"checkpoint", "checkpoint.tmp", "checkpoint.old", "losses.json"})


def _remove_earlier_run(run_dir: Path) -> None:
    """Delete a run folder an earlier check left, and only that: a folder holding anything a run does
    not write is the user's, and the check stops rather than delete it."""
    if not run_dir.exists():
        return
    foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_FILES)
    if foreign:
        raise SystemExit(f"{run_dir} holds files this demo did not write ({', '.join(foreign[:3])}); "
                         f"choose another --out")
    shutil.rmtree(run_dir)


def check_resume(cfg: TrainConfig) -> None:
    """Uninterrupted run, killed run, resumed run (three processes); the curves must agree."""
    root = Path(cfg.out)
    for run_dir in (root / "uninterrupted", root / "interrupted"):
        _remove_earlier_run(run_dir)
    print(f"[1/3] uninterrupted: {cfg.steps} steps", flush=True)
    subprocess.run(_child(cfg, root / "uninterrupted"), check=True)
    print(f"[2/3] the same run, killed with SIGKILL once it has saved its step-{cfg.checkpoint_every} checkpoint",
          flush=True)
    proc = subprocess.Popen(_child(cfg, root / "interrupted"), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        print("    " + line, end="", flush=True)
        if line.startswith(CHECKPOINT_LINE):
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    if proc.wait() != -signal.SIGKILL:
        raise SystemExit(f"the run to interrupt ended by itself (exit {proc.returncode}) before it was killed")
    print(f"    killed (exit {proc.returncode}: SIGKILL)", flush=True)
    print("[3/3] resumed from the checkpoint", flush=True)
    subprocess.run(_child(cfg, root / "interrupted", resume=True), check=True)
    full = json.loads((root / "uninterrupted" / "losses.json").read_text())
    resumed = json.loads((root / "interrupted" / "losses.json").read_text())
    exact = cfg.device == "cpu"
    same = (full == resumed) if exact else (
        len(full) == len(resumed) and all(abs(a - b) <= 1e-4 * max(abs(a), 1.0) for a, b in zip(full, resumed)))
    if not same:
        raise SystemExit(f"resumed loss curve differs from the uninterrupted one:\n{full}\n{resumed}")
    print(f"resumed after a kill at step {cfg.checkpoint_every}: the loss curve over {len(full)} steps equals "
          f"the uninterrupted run's {'bit for bit' if exact else 'within 1e-4'} "
          f"(first {full[0]:.4f}, last {full[-1]:.4f})", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", default="out/demo/shards", help="the shards folder (make demo: out/demo/shards)")
    ap.add_argument("--out", default="out/train-demo")
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--device", default="cpu", help="cpu, cuda[:n] or npu[:n]")
    ap.add_argument("--attn", default="sdpa", help="sdpa, eager or flash_attention_2 (GPU with flash-attn)")
    ap.add_argument("--loss-average", default="token", choices=["token", "sample"])
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    ap.add_argument("--check-resume", action="store_true",
                    help="run uninterrupted, killed and resumed in child processes and compare the curves")
    a = ap.parse_args(argv)
    if not (Path(a.shards) / "manifest.json").exists():
        raise SystemExit(f"{a.shards}/manifest.json not found: run `make demo` first (or give --shards)")
    if not 0 < a.checkpoint_every < a.steps:
        raise SystemExit("--checkpoint-every must be between 0 and --steps")
    cfg = TrainConfig(shards=os.path.abspath(a.shards), out=a.out, steps=a.steps, checkpoint_every=a.checkpoint_every,
                      lr=a.lr, seed=a.seed, device=a.device, attn=a.attn, loss_average=a.loss_average, resume=a.resume)
    check_resume(cfg) if a.check_resume else train(cfg)


if __name__ == "__main__":
    main()
