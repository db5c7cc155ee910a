"""One pack as the trainer receives it, from its tar members: shared by ``PackedShards`` (pack.trainer.loader)
and Energon's factory (pack.energon.cooker), so both hand back the same dict, checked as strictly.

The caller says how to read a member by name (a seek into an open tar, or Energon's part dict);
this module checks the pack's JSON against its key, rank and context length, reads media and the
token arrays, and adds the model inputs (3-D M-RoPE positions, modality and segment ids).
"""
from __future__ import annotations

from typing import Any, Callable, Collection

import numpy as np

from pack import packformat as F
from pack.trainer.positions import pack_model_inputs
from pack.profile import ModelProfile

ReadMember = Callable[[str], bytes]


def assemble_pack(key: str, read: ReadMember, members: Collection[str], *, rank: int | None, context_length: int,
                  profile: ModelProfile, where: str, epoch: int, index: int) -> dict[str, Any]:
    """The item of pack `key` whose tar members are named `members` and read by `read(name)`."""
    json_name = F.json_member(key)
    if json_name not in members:
        raise F.PackFormatError(f"{where}: no {json_name} member")
    doc = F.parse_pack(read(json_name), where, context_length)
    if doc["pack_key"] != key:
        raise F.PackFormatError(f"{where}: JSON pack_key {doc['pack_key']!r} differs from the member name")
    if doc["rank"] != rank:
        raise F.PackFormatError(f"{where}: pack belongs to rank {doc['rank']}, not {rank}")
    missing = sorted(set(F.pack_members(doc)) - set(members))
    if missing:
        raise F.PackFormatError(f"{where}: member {missing[0]!r} named in the JSON is missing")
    media: dict[str, list] = {"images": [], "videos": []}
    for seg in doc["segments"]:
        for kind, out in media.items():
            for m in seg[kind]:
                out.append({"sample": seg["key"], "bytes": read(m["member"]), **m})
    input_ids = _token_array(read, doc, "input_ids", context_length, where)
    return {
        "pack_key": key, "pack_id": doc["pack_id"], "rank": doc["rank"], "step": doc["step"],
        "micro_batch": doc["micro_batch"], "repeat_of": doc["repeat_of"], "epoch": epoch, "index": index,
        "context_length": doc["context_length"], "length": doc["length"], "padding": doc["padding"],
        "samples": list(doc["segments"]), "cu_seqlens": np.asarray(doc["cu_seqlens"], dtype=np.int32),
        "images": media["images"], "videos": media["videos"], "input_ids": input_ids,
        "labels": _token_array(read, doc, "labels", context_length, where),
        **pack_model_inputs(doc, input_ids, profile),
    }


def _token_array(read: ReadMember, doc: dict[str, Any], name: str, context_length: int, where: str) -> np.ndarray | None:
    """input_ids or labels of a pack ([context_length] integers), None when not tokenized."""
    if doc.get(name) is None:
        return None
    arr = F.decode_input_ids(read(doc[name]["member"]))
    if arr.shape != (context_length,) or arr.dtype.kind not in "iu":
        raise F.PackFormatError(f"{where}: {name} shape {arr.shape} dtype {arr.dtype}, "
                                f"expected ({context_length},) integers")
    return arr
