"""Trainer-side reading of packed shards, with a consumed-data tracker for exact resumption.

MindVL's loader "tracks consumed data, so that training resumes without repeating or skipping any";
this is that loader for the shards written by the ``shards`` stage.

Recommended training loop::

    from pack.trainer.loader import PackedShards, ResumableLoader

    ds = PackedShards("out/run/shards", rank=dp_rank, world_size=dp_size)
    loader = ResumableLoader(ds, batch_size=1, num_workers=4,      # collate_packs; NPU when torch_npu works
                             attn_implementation="sdpa")            # each segment attends to itself only
    if resuming:
        loader.load_state_dict(checkpoint["data"])                  # before iterating
    for batch in loader:                                            # counted as consumed when yielded
        hidden = model.model(**model_inputs(batch)).last_hidden_state   # ids, 4-D mask, [3, B, L] positions, pixels
        loss = packed_loss_from_hidden(hidden, model.lm_head, batch["labels"], batch["segment_ids"])
        # (PackedShards(..., pixel_values=True); pack.trainer.collate.model_inputs, pack.trainer.loss; README
        # "Training on the packs" for sdpa / eager / flash-attention varlen and the loss averages)
        ...
        if step % save_every == 0:
            checkpoint["data"] = loader.state_dict()                # JSON-serializable

With a plain ``torch.utils.data.DataLoader`` call ``ds.mark_consumed(batch)`` for every batch the loop
takes and save ``ds.state_dict()``; give ``PackedShards(batch_size=...)`` the DataLoader's batch size.
Iterating ``ds`` directly in the main process works the same way; ``state_dict()`` refuses while
packs it yielded are not marked consumed (it would otherwise resume behind the training loop).

Why the tracker lives in the main process: DataLoader workers hold *copies* of the dataset, so only
the process that receives batches knows what the trainer consumed. The state is the position in the
rank's pack sequence (plus the epoch, and per-source counters of consumed samples and tokens).

Why the sequence does not depend on ``num_workers``: the rank's packs are cut into blocks of
``batch_size``; worker ``w`` of ``W`` reads blocks ``b`` with ``b % W == w``, and the DataLoader takes
batches from its workers round-robin in order — so the trainer sees block 0, 1, 2, ... whatever ``W``.
A run stopped after pack ``k`` and restored with another ``num_workers`` continues at pack ``k``.
Don't use ``persistent_workers=True``: persistent workers keep their copy of the position.

Each item is one pack (a dict): ``samples`` (key, source, category, length, text/conversations,
meta, images), ``cu_seqlens`` (int32, padding as a final segment, ends at context_length),
``segment_ids`` (sample index per token, -1 on padding), ``position_ids`` ((3, L) M-RoPE for
tokenized Qwen2-VL-family shards, else (L,)), ``images`` (bytes in their original encoding with each
image's token count and grid), and when the shards were tokenized ``input_ids``, ``labels`` (-100
where no loss) and ``mm_token_type_ids``; with ``pixel_values=True`` also ``pixel_values`` /
``image_grid_thw`` and ``pixel_values_videos`` / ``video_grid_thw``. Each shard's sha256 is checked against the manifest when first opened. ``shuffle=True`` reshuffles the order of whole
global steps per epoch with the same permutation on every rank, so per-step balance is kept.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from pack import packformat as F
from pack.shards import tario
from pack.trainer.collate import collate_packs, resolve_device, to_device
from pack.trainer.loader_state import LoaderStateError, check_state
from pack.packing.item import assemble_pack
from pack.profile import profile_from_mapping

try:  # torch is a dependency, but keep `import pack.trainer.loader` usable for inspection without it
    from torch.utils.data import IterableDataset as _Base
except ImportError:  # pragma: no cover
    _Base = object  # type: ignore[assignment,misc]

STATE_VERSION = 1


class PackedShards(_Base):  # type: ignore[misc]
    """One data-parallel rank's packs, as a torch IterableDataset. See the module docstring."""

    def __init__(self, path: str, rank: int = 0, world_size: int = 1, shuffle: bool = False, seed: int = 0,
                 batch_size: int = 1, pixel_values: bool = False, verify: bool = True):
        """`pixel_values`: also return ``pixel_values`` / ``image_grid_thw`` (transformers' image
        processor configured from the manifest) and ``pixel_values_videos`` / ``video_grid_thw``
        (pack.trainer.video_pixels: the video processor's steps without torchvision); `verify`: check each shard's sha256 against the
        manifest when it is first opened (one sequential read per shard and worker)."""
        self.path = os.path.abspath(path)
        self.manifest = F.load_manifest(self.path)
        self.profile = profile_from_mapping(self.manifest.get("model"))
        self.verify = bool(verify)
        self._pixels = self._video_pixels = None
        if pixel_values:
            from pack.trainer.pixels import ImageInputs
            from pack.trainer.video_pixels import VideoInputs
            self._pixels = ImageInputs(self.profile)
            self._video_pixels = VideoInputs(self.profile)
        dp = self.manifest["dp_size"]
        if world_size != dp:
            raise ValueError(f"world_size={world_size} but the shards were balanced for dp_size={dp}; "
                             "write shards for this data-parallel size (shards.dp_size)")
        if not 0 <= rank < dp:
            raise ValueError(f"rank={rank} is outside 0..{dp - 1}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        entry = self.manifest["ranks"][rank]
        if entry["rank"] != rank:
            raise F.PackFormatError(f"manifest.json ranks[{rank}] describes rank {entry['rank']}")
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.batch_size = bool(shuffle), int(seed), int(batch_size)
        self.context_length = int(self.manifest["context_length"])
        self.micro_batches = int(self.manifest["micro_batches"])
        self.shards = [(os.path.join(self.path, s["path"]), int(s["packs"])) for s in entry["shards"]]
        self._sha256 = {os.path.join(self.path, s["path"]): s["sha256"] for s in entry["shards"]}
        self.num_packs = sum(n for _, n in self.shards)
        self._shard_start = np.cumsum([0] + [n for _, n in self.shards])
        self.identity = hashlib.sha256("\n".join(s["sha256"] for s in entry["shards"]).encode()).hexdigest()
        # consumed-data tracker (main process)
        self.epoch = 0
        self.position = 0
        self.packs_consumed = 0
        self.consumed_samples: Counter[str] = Counter()
        self.consumed_tokens: Counter[str] = Counter()
        self._yielded_in_process = 0         # packs iterated in the main process, not yet marked consumed
        # per-process read caches (not part of the state; rebuilt in each worker)
        self._index: dict[str, list[tuple[str, list[tario.MemberRef]]]] = {}
        self._handles: dict[str, Any] = {}

    # --- order -----------------------------------------------------------------------------------
    def order(self, epoch: int) -> np.ndarray:
        """Pack indices (in the rank's file order) in the order an epoch yields them."""
        idx = np.arange(self.num_packs, dtype=np.int64)
        if not self.shuffle or self.num_packs == 0:
            return idx
        mb = self.micro_batches
        steps = self.num_packs // mb
        perm = np.random.default_rng(np.random.SeedSequence([self.seed, epoch])).permutation(steps)
        return (perm[:, None] * mb + np.arange(mb)[None, :]).reshape(-1)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from torch.utils.data import get_worker_info
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        epoch, start = self.epoch, self.position
        seq = self.order(epoch)
        try:
            for b, lo in enumerate(range(start, self.num_packs, self.batch_size)):
                if b % workers != worker:
                    continue
                for pos in range(lo, min(lo + self.batch_size, self.num_packs)):
                    pack = self.read_pack(int(seq[pos]), epoch=epoch, position=pos)
                    if info is None:
                        self._yielded_in_process += 1
                    yield pack
        finally:
            self._close()

    # --- reading ---------------------------------------------------------------------------------
    def _locate(self, index: int) -> tuple[str, int]:
        s = int(np.searchsorted(self._shard_start, index, side="right") - 1)
        return self.shards[s][0], index - int(self._shard_start[s])

    def _packs_of(self, shard: str) -> list[tuple[str, list[tario.MemberRef]]]:
        if shard not in self._index:
            if self.verify:
                got = tario.sha256_file(shard)
                if got != self._sha256[shard]:
                    raise F.PackFormatError(f"{shard}: sha256 {got[:16]}... differs from the manifest's "
                                            f"{self._sha256[shard][:16]}... (the shard changed after it was written)")
            groups: list[tuple[str, list[tario.MemberRef]]] = []
            seen: set[str] = set()
            for ref in tario.index_tar(shard):
                key, _ = tario.split_member_name(ref.name)
                if groups and groups[-1][0] == key:
                    groups[-1][1].append(ref)
                elif key in seen:
                    raise F.PackFormatError(f"{shard}: members of pack {key!r} are not contiguous")
                else:
                    seen.add(key)
                    groups.append((key, [ref]))
            expected = dict(self.shards)[shard]
            if len(groups) != expected:
                raise F.PackFormatError(f"{shard}: {len(groups)} packs, manifest says {expected}")
            self._index[shard] = groups
        return self._index[shard]

    def _handle(self, shard: str) -> Any:
        fh = self._handles.get(shard)
        if fh is None:
            if len(self._handles) >= 4:
                self._close()
            fh = self._handles[shard] = open(shard, "rb")
        return fh

    def _close(self) -> None:
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()

    def read_pack(self, index: int, epoch: int = 0, position: int | None = None) -> dict[str, Any]:
        """Pack number `index` of this rank (file order), checked strictly against the format."""
        shard, k = self._locate(index)
        key, refs = self._packs_of(shard)[k]
        members = {r.name: r for r in refs}
        fh = self._handle(shard)
        pack = assemble_pack(key, lambda name: tario.read_member(fh, members[name]), members, rank=self.rank,
                             context_length=self.context_length, profile=self.profile, where=f"{shard}:{key}",
                             epoch=epoch, index=index if position is None else position)
        if self._pixels is not None:
            pack["pixel_values"], pack["image_grid_thw"] = self._pixels(pack["images"], f"{shard}:{key}")
            pack["pixel_values_videos"], pack["video_grid_thw"] = self._video_pixels(pack["videos"], f"{shard}:{key}")
        return pack

    # --- consumed-data tracker -----------------------------------------------------------------------
    def mark_consumed(self, batch: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        """Record that the training loop took `batch` (one pack, a list of packs, or a collate_packs
        batch). Raises if it is not the next pack(s) of the sequence — a resumption would then be wrong."""
        for position, epoch, samples in _consumed_items(batch):
            if epoch != self.epoch or position != self.position:
                raise RuntimeError(
                    f"loader yielded pack {position} of epoch {epoch}, the tracker expected pack {self.position} "
                    f"of epoch {self.epoch}: give PackedShards(batch_size=...) the DataLoader's batch_size, "
                    "don't use persistent_workers, and call load_state_dict before iterating")
            for seg in samples:
                self.consumed_samples[seg["source"]] += 1
                self.consumed_tokens[seg["source"]] += int(seg["length"])
            self.packs_consumed += 1
            self._yielded_in_process = max(0, self._yielded_in_process - 1)
            self.position += 1
            if self.position >= self.num_packs:
                self.epoch += 1
                self.position = 0

    @property
    def remaining(self) -> int:
        """Packs left in the current epoch."""
        return self.num_packs - self.position

    def state_dict(self) -> dict[str, Any]:
        """The consumed-data state. Refuses when packs were iterated in this process without
        ``mark_consumed``: the position would silently stay behind what the loop trained on."""
        if self._yielded_in_process:
            raise RuntimeError(
                f"{self._yielded_in_process} pack(s) were iterated in this process but not marked consumed: "
                "call mark_consumed(pack) for each pack the training loop takes, or iterate through "
                "ResumableLoader, before state_dict()")
        return {
            "version": STATE_VERSION, "shards": self.identity, "rank": self.rank, "world_size": self.world_size,
            "shuffle": self.shuffle, "seed": self.seed, "epoch": self.epoch, "position": self.position,
            "packs_consumed": self.packs_consumed,
            "consumed_samples": dict(sorted(self.consumed_samples.items())),
            "consumed_tokens": dict(sorted(self.consumed_tokens.items())),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue where `state` stopped. Every field is checked first (types, ranges, consistency:
        ``pack.trainer.loader_state``); the shards, rank, world size, shuffle and seed must match."""
        checked = check_state(state, STATE_VERSION, self.num_packs)
        for name, mine in (("rank", self.rank), ("world_size", self.world_size), ("shards", self.identity),
                           ("shuffle", self.shuffle), ("seed", self.seed)):
            if checked[name] != mine:
                what = "the shards differ (other checksums)" if name == "shards" else f"{name} differs"
                raise LoaderStateError(f"cannot resume: {what}: state has {checked[name]!r}, this loader {mine!r}")
        self.epoch, self.position = checked["epoch"], checked["position"]
        self._yielded_in_process = 0
        self.packs_consumed = checked["packs_consumed"]
        self.consumed_samples = Counter(checked["consumed_samples"])
        self.consumed_tokens = Counter(checked["consumed_tokens"])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


def _consumed_items(batch: Any) -> Iterator[tuple[int, int, list[dict]]]:
    if isinstance(batch, Mapping) and "pack_index" in batch:          # collate_packs output
        idx = batch["pack_index"]
        idx = idx.tolist() if hasattr(idx, "tolist") else list(idx)
        for i, samples in zip(idx, batch["samples"]):
            yield int(i), int(batch["epoch"]), samples
    elif isinstance(batch, Mapping):                                  # one pack
        yield int(batch["index"]), int(batch["epoch"]), batch["samples"]
    else:                                                             # a list of packs
        for pack in batch:
            yield int(pack["index"]), int(pack["epoch"]), pack["samples"]


class ResumableLoader:
    """A torch DataLoader over PackedShards that counts what it hands to the training loop.

    ``state_dict()`` / ``load_state_dict()`` are the dataset's (see the module docstring); batches
    are collated with ``collate_packs`` in the workers and moved to ``device`` in the main process
    (``"auto"``: the NPU when the torch_npu extra works, else CPU).
    """

    def __init__(self, dataset: PackedShards, batch_size: int = 1, num_workers: int = 0,
                 device: str | None = "auto", attn_implementation: str | None = None, **dataloader_kwargs: Any):
        """`attn_implementation`: passed to ``collate_packs`` (the attention inputs of sdpa, eager or
        flash attention); ignored when `collate_fn` is given."""
        import functools
        from torch.utils.data import DataLoader
        if dataloader_kwargs.get("persistent_workers"):
            raise ValueError("persistent_workers=True would keep a stale position in the workers; leave it off")
        for name in ("shuffle", "sampler", "batch_sampler"):
            if dataloader_kwargs.get(name):
                raise ValueError(f"{name}: not for an IterableDataset; use PackedShards(shuffle=True)")
        dataset.batch_size = batch_size
        self.dataset = dataset
        self.device = device
        dataloader_kwargs.setdefault("collate_fn", functools.partial(collate_packs, attn_implementation=attn_implementation))
        self.loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, **dataloader_kwargs)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        device = resolve_device(self.device)
        for batch in self.loader:
            self.dataset.mark_consumed(batch)
            yield to_device(batch, device)

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.dataset.load_state_dict(state)
