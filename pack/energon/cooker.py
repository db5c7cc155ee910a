"""Megatron-Energon reads mmcurate packs: the sample type, the dataset factory that every rank
folder's ``.nv-meta/dataset.yaml`` names (pack.energon.meta), and a task encoder that batches packs
with ``collate_packs``.

Energon hands a factory each tar sample as a dict of raw member bytes keyed by extension
(``json``, ``input_ids.npy``, ``labels.npy``, ``img000.jpg`` ...). ``PackWebdataset`` turns it into
a ``PackSample`` whose ``pack`` is the same dict ``PackedShards.read_pack`` returns (``input_ids``,
``labels``, ``cu_seqlens``, ``position_ids`` — (3, L) for M-RoPE —, ``mm_token_type_ids``,
``segment_ids``, ``images`` with their bytes, grids and token counts ...), parsed by the same
pack.packformat / pack.trainer.positions code. Energon's own image decoding is switched off: the images
stay in their original encoding, as the shards stage wrote them (``pixel_values=True`` adds
``pixel_values`` / ``image_grid_thw`` and ``pixel_values_videos`` / ``video_grid_thw``, as
PackedShards does).

Use (one Energon dataset per rank folder; see the README, "Training with Megatron-Energon")::

    from megatron.energon import WorkerConfig, get_train_dataset, get_savable_loader
    from pack.energon.cooker import PackTaskEncoder

    wc = WorkerConfig(rank=0, world_size=1, num_workers=1)   # this rank's folder is the whole dataset
    ds = get_train_dataset(f"out/run/shards/rank-{dp_rank:05d}", worker_config=wc, batch_size=1,
                           shuffle_buffer_size=None, max_samples_per_sequence=None,
                           shuffle_over_epochs_multiplier=None, parallel_shard_iters=1,
                           task_encoder=PackTaskEncoder())
    for batch in get_savable_loader(ds):    # collate_packs batches: input_ids, labels, position_ids ...

``index`` of a pack is its position in the rank's sequence (Energon's sample index); ``epoch`` is 0:
Energon tracks epochs and resumption in its own loader state (``get_savable_loader``), not in the
pack.
"""
# No `from __future__ import annotations` here: Energon's config parser reads PackWebdataset's
# annotations at run time as types (``sample_type: Type[PackSample]`` from dataset.yaml).

from typing import Any, Mapping, Optional, Type

import numpy as np
from megatron.energon import DefaultTaskEncoder, Sample, StandardWebdatasetFactory, edataclass
from megatron.energon.epathlib import EPath

from pack.trainer.collate import collate_packs
from pack.packing.item import assemble_pack
from pack.profile import ModelProfile, profile_from_mapping


@edataclass
class PackSample(Sample):
    """One pack. ``pack`` holds the fields PackedShards yields; the properties name the common ones."""
    pack: dict

    @property
    def input_ids(self) -> Optional[np.ndarray]:
        return self.pack["input_ids"]

    @property
    def labels(self) -> Optional[np.ndarray]:
        return self.pack["labels"]

    @property
    def position_ids(self) -> np.ndarray:
        return self.pack["position_ids"]

    @property
    def cu_seqlens(self) -> np.ndarray:
        return self.pack["cu_seqlens"]

    @property
    def images(self) -> list:
        return self.pack["images"]


def pack_from_parts(raw: Mapping[str, Any], key: str, position: int, rank: Optional[int], context_length: int,
                    profile: ModelProfile, where: str) -> dict[str, Any]:
    """The PackedShards item of one pack from its raw tar members (Energon keys parts by what follows
    the key), through the loader's own pack.packing.item."""
    def read(member: str) -> bytes:
        return raw[member[len(key) + 1:]]

    members = {f"{key}.{part}" for part in raw if isinstance(part, str)}
    return assemble_pack(key, read, members, rank=rank, context_length=context_length, profile=profile,
                         where=where, epoch=0, index=position)


class PackWebdataset(StandardWebdatasetFactory[PackSample]):
    """The factory ``.nv-meta/dataset.yaml`` names; ``rank``, ``context_length`` and ``model`` come from
    that file (the shards stage wrote them), the rest from Energon (``get_train_dataset`` ...)."""

    def __init__(self, path: EPath, *, rank: Optional[int], context_length: int, model: Optional[dict] = None,
                 sample_type: Type[PackSample] = PackSample, pixel_values: bool = False, decoder: Any = None,
                 **kwargs: Any):
        if not issubclass(sample_type, PackSample):
            raise ValueError(f"sample_type: {sample_type.__qualname__} is not a PackSample")
        # rank None: the leftover/ folder (carried-over packs belong to no rank)
        self.rank, self.context_length = (None if rank is None else int(rank)), int(context_length)
        self.profile = profile_from_mapping(model)
        self._pixels = self._video_pixels = None
        if pixel_values:
            from pack.trainer.pixels import ImageInputs
            from pack.trainer.video_pixels import VideoInputs
            self._pixels, self._video_pixels = ImageInputs(self.profile), VideoInputs(self.profile)
        # decoder: Energon passes its task encoder's image decoder; packs keep their original bytes.
        super().__init__(path, sample_type=sample_type, sample_loader=self._fields, part_filter=_every_part,
                         decoder=None, **kwargs)

    def _fields(self, raw: dict) -> dict:
        key = raw["__key__"]
        position = int(raw["__restore_key__"][1])
        where = f"{raw['__shard__']}:{key}" if "__shard__" in raw else key
        pack = pack_from_parts(raw, key, position, self.rank, self.context_length, self.profile, where)
        if self._pixels is not None:
            pack["pixel_values"], pack["image_grid_thw"] = self._pixels(pack["images"], where)
            pack["pixel_values_videos"], pack["video_grid_thw"] = self._video_pixels(pack["videos"], where)
        return {"pack": pack}


def _every_part(part: str) -> bool:
    return True


class PackTaskEncoder(DefaultTaskEncoder[PackSample, PackSample, dict, dict]):
    """Batches of packs as ``collate_packs`` builds them (a list of PackSample in, one dict out);
    Energon's image decoding is off, as in PackWebdataset."""

    decoder = None

    def batch(self, samples: list[PackSample]) -> dict:
        return collate_packs([s.pack for s in samples])
