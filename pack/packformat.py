"""The on-disk format of packed shards: pack JSON, member names, manifest — written once, read strictly.

One module owns the format so that the writer (pack.shards.stage), the trainer's loader (pack.trainer.loader) and
the CI check (pack.shards.validate) cannot drift apart.

Layout of an output directory::

    shards/
      manifest.json
      rank-00000/shard-000000.tar  shard-000001.tar ...
      rank-00001/...
      leftover/shard-000000.tar      (only with leftover policy "carry_over")

Every pack is one WebDataset sample, key ``r{rank:05d}-s{step:06d}-m{micro:03d}`` (no dots: WebDataset
splits a member name at the first dot of its basename). Members, in sorted name order:

* ``{key}.img000.jpg`` ... — each image's original bytes, in pack order (extension from its format);
  ``{key}.vid000.mp4`` ... for videos;
* ``{key}.input_ids.npy`` — int32 ``[context_length]`` (``np.save``, no pickle), only when tokenized;
* ``{key}.labels.npy`` — int32 ``[context_length]``: the id where the loss is computed, ``IGNORE_INDEX``
  (-100) elsewhere (prompts, vision tokens, padding, each segment's first token); with input_ids;
* ``{key}.json`` — the pack: see ``pack_document``.

Sequence layout (static shapes for the NPU): a pack is always ``context_length`` tokens. The used
tokens are the segments (samples) back to back; the rest is padding. ``cu_seqlens`` are the
cumulative segment boundaries **with the padding as a final segment** when there is padding, so that
``cu_seqlens[-1] == context_length`` always (npu_fusion_attention TND wants ``actual_seq_qlen`` that
ends at the sequence length; flash-attn varlen wants boundaries covering every token). Position ids
restart at 0 at every boundary (padding too); they are not stored: ``position_ids(cu_seqlens)``.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

PACK_FORMAT = "mmcurate-pack/2"
IGNORE_INDEX = -100          # label of a token the loss skips (PyTorch cross_entropy's ignore_index)
MANIFEST_FORMAT = "mmcurate-shards/1"
MANIFEST_NAME = "manifest.json"
LEFTOVER_DIR = "leftover"

_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")

IMAGE_EXT_BY_FORMAT = {"JPEG": "jpg", "JPG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
                       "TIFF": "tif", "TIF": "tif", "MPO": "jpg"}
VIDEO_EXTS = ("mp4", "webm")
_EXT_RE = re.compile(r"^[a-z0-9]{1,8}$")


class PackFormatError(ValueError):
    """A pack or manifest does not follow the format; the message names the file and the field."""


def rank_dir(rank: int) -> str:
    return f"rank-{rank:05d}"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def pack_key(rank: int, step: int, micro_batch: int) -> str:
    return f"r{rank:05d}-s{step:06d}-m{micro_batch:03d}"


def leftover_key(pack_id: int) -> str:
    return f"leftover-p{pack_id:09d}"


def image_member(key: str, index: int, ext: str) -> str:
    return f"{key}.img{index:03d}.{ext}"


def video_member(key: str, index: int, ext: str) -> str:
    return f"{key}.vid{index:03d}.{ext}"


def input_ids_member(key: str) -> str:
    return f"{key}.input_ids.npy"


def labels_member(key: str) -> str:
    return f"{key}.labels.npy"


def json_member(key: str) -> str:
    return f"{key}.json"


def media_ext(ref: Mapping[str, Any], default: str = "bin") -> str:
    """File extension for an image/video member: its recorded format, else its name's suffix."""
    fmt = (ref.get("format") or "").upper()
    if fmt in IMAGE_EXT_BY_FORMAT:
        return IMAGE_EXT_BY_FORMAT[fmt]
    if fmt.lower() in VIDEO_EXTS:
        return fmt.lower()   # a video's container as curate.media.video names it
    for name in (ref.get("member"), ref.get("uri")):
        if name and "." in os.path.basename(str(name)):
            ext = os.path.basename(str(name)).rsplit(".", 1)[1].lower()
            if ext == "jpeg":
                ext = "jpg"
            if _EXT_RE.match(ext):
                return ext
    return default


def dumps(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no NaN, UTF-8 — equal content gives equal bytes."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def cu_seqlens(lengths: Sequence[int], context_length: int) -> list[int]:
    """Boundaries of the segments, then of the padding segment when the pack is not full."""
    out = [0]
    for n in lengths:
        out.append(out[-1] + int(n))
    if out[-1] > context_length:
        raise PackFormatError(f"segments use {out[-1]} tokens > context_length {context_length}")
    if out[-1] < context_length:
        out.append(context_length)
    return out


def position_ids(cu: Sequence[int]) -> np.ndarray:
    """Position ids restarting at 0 at every boundary of ``cu`` (int64, length cu[-1])."""
    cu = np.asarray(cu, dtype=np.int64)
    total = int(cu[-1]) if cu.size else 0
    pos = np.arange(total, dtype=np.int64)
    if cu.size > 1:
        starts = np.repeat(cu[:-1], np.diff(cu))
        pos -= starts
    return pos


def encode_input_ids(ids: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(ids, dtype=np.int32), allow_pickle=False)
    return buf.getvalue()


def decode_input_ids(data: bytes) -> np.ndarray:
    import io
    return np.load(io.BytesIO(data), allow_pickle=False)


# --- strict parsing ------------------------------------------------------------------------------

def _need(doc: Mapping[str, Any], name: str, types: type | tuple[type, ...], where: str, nullable: bool = False) -> Any:
    if name not in doc:
        raise PackFormatError(f"{where}: missing field {name!r}")
    v = doc[name]
    if v is None and nullable:
        return v
    if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise PackFormatError(f"{where}: field {name!r} must be {types}, got bool")
    if not isinstance(v, types):
        raise PackFormatError(f"{where}: field {name!r} must be {getattr(types, '__name__', types)}, "
                              f"got {type(v).__name__}")
    return v


def parse_pack(data: bytes, where: str, context_length: int | None = None) -> dict[str, Any]:
    """Parse and check one pack JSON: types, lengths, cu_seqlens, member names. Raises PackFormatError."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackFormatError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise PackFormatError(f"{where}: pack JSON must be an object")
    if doc.get("format") != PACK_FORMAT:
        raise PackFormatError(f"{where}: format is {doc.get('format')!r}, expected {PACK_FORMAT!r}")
    key = _need(doc, "pack_key", str, where)
    if not _KEY_RE.match(key):
        raise PackFormatError(f"{where}: pack_key {key!r} has characters other than letters, digits, - and _")
    L = _need(doc, "context_length", int, where)
    if context_length is not None and L != context_length:
        raise PackFormatError(f"{where}: context_length {L} != manifest context_length {context_length}")
    length = _need(doc, "length", int, where)
    padding = _need(doc, "padding", int, where)
    for name in ("rank", "step", "micro_batch"):
        v = _need(doc, name, int, where, nullable=True)
        if v is not None and v < 0:
            raise PackFormatError(f"{where}: field {name!r} must be >= 0, got {v}")
    _need(doc, "pack_id", int, where)
    _need(doc, "repeat_of", str, where, nullable=True)
    segs = _need(doc, "segments", list, where)
    cu = _need(doc, "cu_seqlens", list, where)
    if length + padding != L or padding < 0:
        raise PackFormatError(f"{where}: length {length} + padding {padding} != context_length {L}")
    seg_lengths = []
    for j, seg in enumerate(segs):
        w = f"{where} segment {j}"
        if not isinstance(seg, dict):
            raise PackFormatError(f"{w}: must be an object")
        _need(seg, "key", str, w)
        _need(seg, "source", str, w)
        _need(seg, "category", str, w)
        n = _need(seg, "length", int, w)
        if n <= 0:
            raise PackFormatError(f"{w}: length must be positive, got {n}")
        seg_lengths.append(n)
        _check_media(seg, key, w)
    if sum(seg_lengths) != length:
        raise PackFormatError(f"{where}: segment lengths sum to {sum(seg_lengths)}, length says {length}")
    try:
        expected = cu_seqlens(seg_lengths, L)
    except PackFormatError as exc:
        raise PackFormatError(f"{where}: {exc}") from None
    if cu != expected:
        raise PackFormatError(f"{where}: cu_seqlens {cu[:8]}... do not match the segment lengths "
                              f"(expected {expected[:8]}...)")
    ids = _need(doc, "input_ids", dict, where, nullable=True)
    if ids is not None:
        member = _need(ids, "member", str, where + " input_ids")
        if member != input_ids_member(key):
            raise PackFormatError(f"{where}: input_ids member {member!r} != {input_ids_member(key)!r}")
        _need(ids, "pad_id", int, where + " input_ids")
    labels = _need(doc, "labels", dict, where, nullable=True)
    if (labels is None) != (ids is None):
        raise PackFormatError(f"{where}: labels and input_ids must both be present or both null")
    if labels is not None:
        if _need(labels, "member", str, where + " labels") != labels_member(key):
            raise PackFormatError(f"{where}: labels member {labels['member']!r} != {labels_member(key)!r}")
        if _need(labels, "ignore_index", int, where + " labels") != IGNORE_INDEX:
            raise PackFormatError(f"{where}: labels ignore_index {labels['ignore_index']} != {IGNORE_INDEX}")
    return doc


def _check_media(seg: Mapping[str, Any], key: str, w: str) -> None:
    """Each image/video entry: an object naming a member of this pack, its token count, and a grid
    of three positive integers when present."""
    for kind in ("images", "videos"):
        for m in _need(seg, kind, list, w):
            if not isinstance(m, dict):
                raise PackFormatError(f"{w}: {kind} entries must be objects")
            member = _need(m, "member", str, w)
            if not member.startswith(key + "."):
                raise PackFormatError(f"{w}: member {member!r} does not belong to pack {key!r}")
            _need(m, "tokens", int, w)
            grid = m.get("grid_thw")
            if grid is not None and not (isinstance(grid, list) and len(grid) == 3 and all(
                    isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in grid)):
                raise PackFormatError(f"{w}: grid_thw must be three positive integers, got {grid!r}")


def pack_members(doc: Mapping[str, Any]) -> list[str]:
    """Every member name a pack document refers to, including its JSON."""
    key = doc["pack_key"]
    names = [json_member(key)]
    for seg in doc["segments"]:
        names += [m["member"] for m in seg["images"]] + [m["member"] for m in seg["videos"]]
    if doc.get("input_ids"):
        names.append(doc["input_ids"]["member"])
    if doc.get("labels"):
        names.append(doc["labels"]["member"])
    return sorted(names)


MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str, "recipe_hash": str, "seed": int, "context_length": int, "alignment": int,
    "dp_size": int, "micro_batches": int, "steps": int, "packs_per_rank": int, "ranks": list,
    "totals": dict, "leftover": dict,
}


def load_manifest(directory: str) -> dict[str, Any]:
    """Read and type-check ``manifest.json`` (structure only; pack.shards.validate checks the content)."""
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise PackFormatError(f"{path}: manifest.json is missing")
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackFormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise PackFormatError(f"{path}: must be a JSON object")
    for name, types in MANIFEST_FIELDS.items():
        _need(doc, name, types, "manifest.json")
    if doc["format"] != MANIFEST_FORMAT:
        raise PackFormatError(f"manifest.json: format is {doc['format']!r}, expected {MANIFEST_FORMAT!r}")
    for i, rank in enumerate(doc["ranks"]):
        w = f"manifest.json ranks[{i}]"
        if not isinstance(rank, dict):
            raise PackFormatError(f"{w}: must be an object")
        for name in ("rank", "packs", "samples", "tokens"):
            _need(rank, name, int, w)
        _need(rank, "dir", str, w)
        for j, shard in enumerate(_need(rank, "shards", list, w)):
            _check_shard_entry(shard, f"{w} shards[{j}]")
    for j, shard in enumerate(doc["leftover"].get("shards", [])):
        _check_shard_entry(shard, f"manifest.json leftover shards[{j}]")
    return doc


def _check_shard_entry(shard: Any, where: str) -> None:
    if not isinstance(shard, dict):
        raise PackFormatError(f"{where}: must be an object")
    path = _need(shard, "path", str, where)
    if os.path.isabs(path) or ".." in path.split("/"):
        raise PackFormatError(f"{where}: path {path!r} must be relative to the shards directory")
    _need(shard, "sha256", str, where)
    for name in ("bytes", "packs", "samples", "tokens"):
        _need(shard, name, int, where)
