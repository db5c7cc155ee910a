"""The media of one segment (image/video bytes and their tar member names) and the segment's JSON
document in a pack."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from pack import packformat as F
from pack.profile import ModelProfile


def segment_doc(seg: Mapping[str, Any], media: dict[str, list[dict]]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "key": seg["key"], "source": seg["source"], "category": seg["category"],
        "length": int(seg["num_tokens"]),
        "text_tokens": None if seg.get("text_tokens") is None else int(seg["text_tokens"]),
        "images": media["images"], "videos": media["videos"],
    }
    if seg.get("text") is not None:
        doc["text"] = seg["text"]
    if seg.get("segments") is not None:      # an interleaved document (or a chunk of one), as the record has it
        doc["segments"] = [{k: s[k] for k in ("kind", "start", "end", "image", "position")} for s in seg["segments"]]
    if seg.get("doc_key") is not None:
        doc["doc_key"], doc["chunk_index"] = seg["doc_key"], int(seg["chunk_index"])
    if seg.get("conversations") is not None:
        doc["conversations"] = [{"role": t.get("role"), "content": t.get("content")} for t in seg["conversations"]]
    if seg.get("meta"):
        try:
            doc["meta"] = json.loads(seg["meta"])
        except ValueError:
            doc["meta"] = seg["meta"]
    if seg.get("truncated_from") is not None:
        doc["truncated_from"] = int(seg["truncated_from"])
    return doc


class MediaChanged(ValueError):
    """The bytes read now are not those the record describes (the file was replaced or truncated
    after ingest): the sample is quarantined rather than written with stale metadata."""

    reason = "media_changed"


def verify_media(ref: Mapping[str, Any], data: bytes, kind: str) -> None:
    """Size always when the record has one, sha256 when the record carries it, and for images the
    header's width/height (no decode) against the recorded ones."""
    size = ref.get("size")
    if size is not None and size >= 0 and len(data) != size:
        raise MediaChanged(f"{ref.get('uri')}: {len(data)} bytes, the record says {size}")
    want = ref.get("sha256")
    if want:
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise MediaChanged(f"{ref.get('uri')}: sha256 {got[:16]}... != recorded {str(want)[:16]}...")
    if kind == "videos" and ref.get("width") and ref.get("height"):
        from curate.media.video import UnreadableVideo, probe_video
        try:
            head = probe_video(data)
        except UnreadableVideo as exc:
            raise MediaChanged(f"{ref.get('uri')}: {exc}") from None
        if (head.width, head.height) != (ref["width"], ref["height"]):
            raise MediaChanged(f"{ref.get('uri')}: header says {head.width}x{head.height}, "
                               f"the record {ref['width']}x{ref['height']}")
    if kind == "images" and ref.get("width") and ref.get("height"):
        from curate.media.images import probe
        head = probe(data)
        if (head.width, head.height) != (ref["width"], ref["height"]):
            raise MediaChanged(f"{ref.get('uri')}: header says {head.width}x{head.height}, "
                               f"the record {ref['width']}x{ref['height']}")


def media_grid(kind: str, ref: Mapping[str, Any], tokens: int, profile: ModelProfile | None) -> list[int] | None:
    """``grid_thw`` (in patches) of an image or video under the profile, checked against its token
    count; None for fixed-tokens-per-image profiles (no grid) and for untokenized shards (None)."""
    if profile is None or profile.image_mode != "qwen2_vl":
        return None
    from pack.tokens import vision as V
    if kind == "images":
        gh, gw = V.image_grid(ref["width"], ref["height"], min_pixels=profile.min_pixels,
                              max_pixels=profile.max_pixels, patch_size=profile.patch_size,
                              merge_size=profile.merge_size)
        grid = [1, int(gh), int(gw)]
    else:
        grid = list(V.video_grid(ref["duration_s"], ref["fps"], ref["width"], ref["height"],
                                 profile.video_settings(), ref.get("frames") or None))
    if grid[0] * grid[1] * grid[2] // profile.merge_size ** 2 != tokens:
        raise GridMismatch(f"{kind[:-1]} {ref.get('uri')}: grid {grid} gives "
                           f"{grid[0] * grid[1] * grid[2] // profile.merge_size ** 2} tokens, planned {tokens} "
                           "(count_tokens and shards must use the same model profile)")
    return grid


class GridMismatch(RuntimeError):
    """A grid under the run's profile disagrees with count_tokens' token count: a setup error."""


def read_media(seg: Mapping[str, Any], key: str, counters: dict[str, int], profile: ModelProfile | None
               ) -> tuple[dict[str, list], list]:
    """Bytes of a segment's images and videos, verified against their records, with their member
    names and (with a profile: tokenized shards) grids. Raises UnreadableImage / OSError /
    MediaChanged for a bad sample."""
    from curate.media.images import read_image_bytes
    docs: dict[str, list[dict]] = {"images": [], "videos": []}
    members: list[tuple[str, bytes]] = []
    for kind, namer in (("images", F.image_member), ("videos", F.video_member)):
        refs, toks = seg.get(kind) or [], list(seg.get(kind[:-1] + "_tokens") or [])
        if len(toks) != len(refs):
            raise ValueError(f"{len(refs)} {kind} but {len(toks)} {kind[:-1]} token counts")
        for ref, ntok in zip(refs, toks):
            data = read_image_bytes(ref)
            verify_media(ref, data, kind)
            name = namer(key, counters[kind], F.media_ext(ref))
            counters[kind] += 1
            members.append((name, data))
            entry = {"member": name, "tokens": int(ntok), "width": ref.get("width"), "height": ref.get("height"),
                     "grid_thw": media_grid(kind, ref, int(ntok), profile)}
            if kind == "images":
                entry["format"] = ref.get("format")
            else:
                entry.update(duration_s=ref.get("duration_s"), fps=ref.get("fps"), frames=ref.get("frames"),
                             format=ref.get("format"))
            docs[kind].append(entry)
    return docs, members
