"""Megatron-Energon metadata for the shards, written by the shards stage, so that Energon loads every
rank folder as it is: no ``energon prepare``, no user-written sample loader.

What Energon 7.x needs to load a WebDataset folder (read from megatron.energon.flavors.webdataset:
``metadata.WebdatasetMeta``, ``itar.TarIndexReader``, ``dataset_config.get_dataset_from_config``)::

    rank-00000/
      .nv-meta/.info.json     {"shard_counts": {"shard-000000.tar": <packs>, ...}}  (tar order = pack order)
      .nv-meta/split.yaml     split_parts: {train: [the tars, in order]}
      .nv-meta/dataset.yaml   which factory turns a raw sample into a typed one: ours,
                              pack.energon.cooker.PackWebdataset, with the rank, context length and
                              the model profile (the cooker needs it for M-RoPE positions and
                              pixel values; without the tokenizer directory, a driver path)
      shard-000000.tar.idx    uint64 little-endian byte offsets of each sample's first tar header,
                              then the offset where the archive's members end (``energon prepare``'s
                              tar index; Energon reads sample i as bytes [idx[i], idx[i+1]))

The ``leftover/`` folder (packs carried over for a later run, ``leftover: carry_over``) gets the same
files with ``rank: null``: Energon loads it like a rank folder.

Not written by the stage: ``index.sqlite`` (Energon's key index: sample key -> tar, byte range and
parts). Energon reads it only to look samples up by key — a metadataset ``join`` of datasets by key,
a dataset used as an auxiliary file store, ``SqliteITarEntryReader`` — never for sequential loading or
for resuming (restore keys are (shard, index), served by the ``.tar.idx``). It is a SQLite file,
whose bytes depend on the SQLite library, so writing it would break "same recipe and seed, same
bytes" for everyone to serve a lookup few need. Where a lookup needs it, ``python -m
pack.energon.index SHARDS`` writes it into every folder with Energon's own writer (so the schema is
the installed Energon's), from the tar headers; ``energon prepare`` would write the same rows.
``.info.json``'s optional ``energon_version`` is not written either (Energon did not prepare these
shards).

Why one Energon dataset per rank folder and not one over all shards: the shards stage balanced every
global step across ranks (pack.balance.plan); Energon would otherwise split the samples over
``world_size x num_workers`` itself and lose that assignment. The README section "Training with
Megatron-Energon" says which settings keep the order.

Everything here is deterministic (canonical JSON / sorted YAML, paths relative to the rank folder,
nothing from the clock or the machine) and plain files: this module does not import Energon.
"""
from __future__ import annotations

import os
import struct
import tarfile
from typing import Any, Mapping

import yaml

from pack import packformat as F
from pack.shards.tario import split_member_name

META_DIR = ".nv-meta"                 # megatron.energon.flavors.webdataset.config.MAIN_FOLDER_NAME
INFO_NAME = ".info.json"
SPLIT_NAME = "split.yaml"
DATASET_NAME = "dataset.yaml"
TAR_INDEX_SUFFIX = ".idx"             # shard-000000.tar -> shard-000000.tar.idx (Energon's ITAR_SUFFIX)
SPLIT_PART = "train"
COOKER_MODULE = "pack.energon_cooker"   # the stable name datasets on disk carry (pack/energon_cooker.py)
FACTORY_CLASS = "PackWebdataset"
SAMPLE_CLASS = "PackSample"


def tar_index_path(tar_path: str) -> str:
    return tar_path + TAR_INDEX_SUFFIX


def tar_sample_offsets(tar_path: str) -> list[int]:
    """Byte offset of the first header of every sample (members grouped by WebDataset key, in archive
    order), then the end of the last member. Reads headers only."""
    offsets: list[int] = []
    last_key = None
    with tarfile.open(tar_path, mode="r:") as tar:
        for info in tar:
            key, _ = split_member_name(info.name)
            if key != last_key:
                offsets.append(info.offset)
                last_key = key
        offsets.append(tar.offset)
    return offsets


def write_tar_index(tar_path: str) -> None:
    """Write ``{tar_path}.idx`` (Energon's tar index) beside a freshly written shard."""
    offsets = tar_sample_offsets(tar_path)
    with open(tar_index_path(tar_path), "wb") as fh:
        fh.write(struct.pack(f"<{len(offsets)}Q", *offsets))


def _relative_to(path: str, folder: str) -> str:
    """A shard path of the manifest (relative to the shards folder) relative to its rank folder."""
    prefix = folder + "/"
    if not path.startswith(prefix):
        raise F.PackFormatError(f"manifest.json: shard {path!r} is not inside its rank folder {folder!r}")
    return path[len(prefix):]


def folder_metadata(manifest: Mapping[str, Any], folder: str, shards: list, rank: int | None) -> dict[str, bytes]:
    """The ``.nv-meta`` files of one folder of shards: {file name: bytes}. `rank` None: the
    ``leftover/`` folder (carried-over packs belong to no rank; their JSON says ``rank: null``)."""
    names = [_relative_to(s["path"], folder) for s in shards]
    info = {"shard_counts": {n: int(s["packs"]) for n, s in zip(names, shards)}}
    # val and test empty: `energon lint` checks all three parts and skips empty ones
    split = {"split_parts": {SPLIT_PART: names, "val": [], "test": []}, "exclude": []}
    # the profile without its tokenizer directory: the cooker does not tokenize, and a driver path has
    # no place in a dataset that travels (manifest.json keeps it)
    model = {k: v for k, v in (manifest.get("model") or {}).items() if k != "tokenizer"} or None
    dataset = {"__module__": COOKER_MODULE, "__class__": FACTORY_CLASS,
               "sample_type": {"__module__": COOKER_MODULE, "__class__": SAMPLE_CLASS},   # read by `energon info`
               "rank": None if rank is None else int(rank), "context_length": int(manifest["context_length"]),
               "model": model}
    dump = lambda obj: yaml.safe_dump(obj, sort_keys=True, allow_unicode=True,  # noqa: E731
                                      default_flow_style=False).encode()
    return {INFO_NAME: F.dumps(info) + b"\n", SPLIT_NAME: dump(split), DATASET_NAME: dump(dataset)}


def rank_metadata(manifest: Mapping[str, Any], rank_entry: Mapping[str, Any]) -> dict[str, bytes]:
    """The ``.nv-meta`` files of one rank folder: {file name: bytes}."""
    return folder_metadata(manifest, rank_entry["dir"], rank_entry["shards"], int(rank_entry["rank"]))


def write_energon_metadata(shards_dir: str, manifest: Mapping[str, Any]) -> None:
    """Write ``.nv-meta`` into every rank folder of `shards_dir`, and into ``leftover/`` when packs were
    carried over (the tar indexes are written with the tars, by pack.shards.writer). A folder without
    packs gets none: Energon refuses an empty split."""
    folders = [(e["dir"], e["shards"], int(e["rank"])) for e in manifest["ranks"]]
    folders.append((F.LEFTOVER_DIR, manifest["leftover"].get("shards", []), None))
    for folder, shards, rank in folders:
        if not shards:
            continue
        meta = os.path.join(shards_dir, folder, META_DIR)
        os.makedirs(meta, exist_ok=True)
        for name, data in folder_metadata(manifest, folder, shards, rank).items():
            with open(os.path.join(meta, name), "wb") as fh:
                fh.write(data)
