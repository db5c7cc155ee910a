"""The media of one segment (image/video bytes and their tar member names) and the segment's JSON
document in a pack."""
from __future__ import annotations

import json
from typing import Any, Mapping

from pack import packformat as F


def segment_doc(seg: Mapping[str, Any], media: dict[str, list[dict]]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "key": seg["key"], "source": seg["source"], "category": seg["category"],
        "length": int(seg["num_tokens"]),
        "text_tokens": None if seg.get("text_tokens") is None else int(seg["text_tokens"]),
        "images": media["images"], "videos": media["videos"],
    }
    if seg.get("text") is not None:
        doc["text"] = seg["text"]
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


def read_media(seg: Mapping[str, Any], key: str, counters: dict[str, int]) -> tuple[dict[str, list], list]:
    """Bytes of a segment's images and videos, with their member names; raises on unreadable media."""
    from curate.images import read_image_bytes
    docs: dict[str, list[dict]] = {"images": [], "videos": []}
    members: list[tuple[str, bytes]] = []
    img_tokens = list(seg.get("image_tokens") or [])
    vid_tokens = list(seg.get("video_tokens") or [])
    for kind, refs, toks, namer in (("images", seg.get("images") or [], img_tokens, F.image_member),
                                    ("videos", seg.get("videos") or [], vid_tokens, F.video_member)):
        if len(toks) != len(refs):
            raise ValueError(f"{len(refs)} {kind} but {len(toks)} {kind[:-1]} token counts")
        for ref, ntok in zip(refs, toks):
            data = read_image_bytes(ref)
            name = namer(key, counters[kind], F.media_ext(ref))
            counters[kind] += 1
            members.append((name, data))
            entry = {"member": name, "tokens": int(ntok), "width": ref.get("width"), "height": ref.get("height")}
            if kind == "images":
                entry["format"] = ref.get("format")
            else:
                entry.update(duration_s=ref.get("duration_s"), fps=ref.get("fps"))
            docs[kind].append(entry)
    return docs, members
