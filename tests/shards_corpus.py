"""A generated, already counted and packed corpus for the shards / loader / validate tests.

Real image bytes (JPEG and PNG, some as plain files, some inside a tar read by offset), captions,
conversations with <image> placeholders and text-only samples, with the columns the shards stage gets
from count_tokens and pack (num_tokens, text_tokens, image_tokens, pack_id, pack_position).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from curate.base import records as R
from pack.shards import tario
from pack.packing import plan_packs

SCHEMA = R.schema_with({c: R.WELL_KNOWN_COLUMNS[c] for c in
                        ("num_tokens", "text_tokens", "image_tokens", "pack_id", "pack_position")})
SOURCES = ("laion", "docvqa", "sharegpt", "textbook")


def _image(fmt: str, w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def image_refs(root: Path, n: int = 12) -> list[dict[str, Any]]:
    """n image references: half plain files, half members of one tar (with offsets)."""
    root.mkdir(parents=True, exist_ok=True)
    refs: list[dict[str, Any]] = []
    tar_members = []
    for i in range(n):
        fmt = "JPEG" if i % 3 else "PNG"
        w, h = 16 + 8 * (i % 5), 16 + 4 * (i % 7)
        data = _image(fmt, w, h, seed=i)
        ext = "jpg" if fmt == "JPEG" else "png"
        if i % 2:
            path = root / f"img{i:03d}.{ext}"
            path.write_bytes(data)
            refs.append(R.image_ref(str(path), width=w, height=h, format=fmt, size=len(data)))
        else:
            tar_members.append((f"img{i:03d}.{ext}", data, w, h, fmt))
    tar_path = root / "images.tar"
    tario.write_tar(str(tar_path), [(m[0], m[1]) for m in tar_members])
    index = {m.name: m for m in tario.index_tar(str(tar_path))}
    for name, data, w, h, fmt in tar_members:
        m = index[name]
        refs.append(R.image_ref(str(tar_path), member=name, offset=m.offset, size=m.size, width=w, height=h,
                                format=fmt))
    return refs


def make_rows(n: int, refs: list[dict[str, Any]], seed: int = 0, max_len: int = 900) -> list[dict[str, Any]]:
    """n records of four kinds; lengths drawn so that packs mix short and long samples."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        kind = i % 4
        source = SOURCES[kind]
        n_img = [1, 1, int(rng.integers(1, 4)), 0][kind]
        imgs = [refs[int(rng.integers(0, len(refs)))] for _ in range(n_img)]
        img_tok = [int(rng.integers(16, 200)) for _ in imgs]
        text_tok = int(rng.integers(5, max_len - sum(img_tok) - 1)) if kind != 0 else int(rng.integers(5, 60))
        row: dict[str, Any] = {
            "key": f"{source}/{i:05d}", "source": source,
            "category": ["caption", "ocr", "conversation", "text"][kind],
            "images": imgs, "videos": [], R.ORDINAL: i, R.STATUS: R.KEPT,
            "meta": R.dumps_meta({"i": i}), "num_tokens": text_tok + sum(img_tok), "text_tokens": text_tok,
            "image_tokens": img_tok,
        }
        if kind == 2:
            row["conversations"] = [{"role": "user", "content": "<image>\n" * n_img + f"question {i}"},
                                    {"role": "assistant", "content": f"answer {i} é ✓"}]
        else:
            row["text"] = f"sample {i} " + "word " * int(rng.integers(1, 20))
        rows.append(row)
    return rows


def set_profile_image_tokens(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace the drawn image token counts by those of the default profile (Qwen2-VL) for the images'
    real sizes, as count_tokens computes them: tokenized shards check each image's grid against them."""
    from pack.tokens import image_tokens
    for r in rows:
        r["image_tokens"] = [int(image_tokens(im["width"], im["height"])) for im in r["images"]]
    return rows


def pack_rows(rows: list[dict[str, Any]], context_length: int) -> list[dict[str, Any]]:
    """Fill pack_id / pack_position as the pack stage does (plan_packs, position by _ordinal)."""
    lengths = np.array([r["num_tokens"] for r in rows], dtype=np.int64)
    bins = plan_packs(lengths, context_length)
    pos: dict[int, int] = {}
    out = []
    for r, b in sorted(zip(rows, bins.tolist()), key=lambda t: t[0][R.ORDINAL]):
        out.append({**r, "pack_id": int(b), "pack_position": pos.get(b, 0)})
        pos[b] = pos.get(b, 0) + 1
    return out


def packed_table(root: Path, n: int = 240, context_length: int = 1024, seed: int = 0) -> pa.Table:
    refs = image_refs(root / "images")
    return R.rows_to_table(pack_rows(make_rows(n, refs, seed=seed), context_length), SCHEMA)
