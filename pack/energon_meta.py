"""Megatron-Energon metadata for the shards, written by the shards stage, so that Energon loads every
rank folder as it is: no ``energon prepare``, no user-written sample loader.

What Energon 7.x needs to load a WebDataset folder (read from megatron.energon.flavors.webdataset:
``metadata.WebdatasetMeta``, ``itar.TarIndexReader``, ``dataset_config.get_dataset_from_config``)::

    rank-00000/
      .nv-meta/.info.json     {"shard_counts": {"shard-000000.tar": <packs>, ...}}  (tar order = pack order)
      .nv-meta/split.yaml     split_parts: {train: [the tars, in order]}
      .nv-meta/dataset.yaml   which factory turns a raw sample into a typed one: ours,
                              pack.energon_cooker.PackWebdataset, with the rank, context length and
                              the model profile (the cooker needs it for M-RoPE positions and
                              pixel values; without the tokenizer directory, a driver path)
      shard-000000.tar.idx    uint64 little-endian byte offsets of each sample's first tar header,
                              then the offset where the archive's members end (``energon prepare``'s
                              tar index; Energon reads sample i as bytes [idx[i], idx[i+1]))

Not written: ``index.sqlite`` / ``index.uuid`` (random access by sample key, joins and auxiliary
file stores of metadatasets; sequential loading does not read them — ``energon prepare`` on a rank
folder adds them if wanted) and ``.info.json``'s optional ``energon_version`` (Energon did not
prepare these shards).

Why one Energon dataset per rank folder and not one over all shards: the shards stage balanced every
global step across ranks (pack.balance); Energon would otherwise split the samples over
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
from pack.tario import split_member_name

META_DIR = ".nv-meta"                 # megatron.energon.flavors.webdataset.config.MAIN_FOLDER_NAME
INFO_NAME = ".info.json"
SPLIT_NAME = "split.yaml"
DATASET_NAME = "dataset.yaml"
TAR_INDEX_SUFFIX = ".idx"             # shard-000000.tar -> shard-000000.tar.idx (Energon's ITAR_SUFFIX)
SPLIT_PART = "train"
COOKER_MODULE = "pack.energon_cooker"
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


def rank_metadata(manifest: Mapping[str, Any], rank_entry: Mapping[str, Any]) -> dict[str, bytes]:
    """The ``.nv-meta`` files of one rank folder: {file name: bytes}."""
    names = [_relative_to(s["path"], rank_entry["dir"]) for s in rank_entry["shards"]]
    info = {"shard_counts": {n: int(s["packs"]) for n, s in zip(names, rank_entry["shards"])}}
    # val and test empty: `energon lint` checks all three parts and skips empty ones
    split = {"split_parts": {SPLIT_PART: names, "val": [], "test": []}, "exclude": []}
    # the profile without its tokenizer directory: the cooker does not tokenize, and a driver path has
    # no place in a dataset that travels (manifest.json keeps it)
    model = {k: v for k, v in (manifest.get("model") or {}).items() if k != "tokenizer"} or None
    dataset = {"__module__": COOKER_MODULE, "__class__": FACTORY_CLASS,
               "sample_type": {"__module__": COOKER_MODULE, "__class__": SAMPLE_CLASS},   # read by `energon info`
               "rank": int(rank_entry["rank"]), "context_length": int(manifest["context_length"]), "model": model}
    dump = lambda obj: yaml.safe_dump(obj, sort_keys=True, allow_unicode=True,  # noqa: E731
                                      default_flow_style=False).encode()
    return {INFO_NAME: F.dumps(info) + b"\n", SPLIT_NAME: dump(split), DATASET_NAME: dump(dataset)}


def write_energon_metadata(shards_dir: str, manifest: Mapping[str, Any]) -> None:
    """Write ``.nv-meta`` into every rank folder of `shards_dir` (the tar indexes are written with the
    tars, by pack.shard_writer). A rank without packs gets none: Energon refuses an empty split."""
    for entry in manifest["ranks"]:
        if not entry["shards"]:
            continue
        meta = os.path.join(shards_dir, entry["dir"], META_DIR)
        os.makedirs(meta, exist_ok=True)
        for name, data in rank_metadata(manifest, entry).items():
            with open(os.path.join(meta, name), "wb") as fh:
                fh.write(data)
