"""Helpers of ``bench_dedup.chain_table`` (issue #28): the chained corpora loaded by path, image rows
for them, and how close each removed row is to the rows that were kept."""
from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.base import records as R
from curate.dedup import minhash as M
from curate.dedup import phash as P

HERE = Path(__file__).resolve().parent


def chained_module():
    """curate/dedup/chained.py of this checkout, loaded by path: an older checkout's curate lacks it."""
    spec = importlib.util.spec_from_file_location("_chained", HERE.parent / "curate" / "dedup" / "chained.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["_chained"] = module
    spec.loader.exec_module(module)
    return module


def image_table(items: list[tuple[str, bytes]], directory: Path) -> pa.Table:
    from PIL import Image
    rows = []
    for i, (key, data) in enumerate(items):
        path = directory / (key.replace("/", "__") + ".jpg")
        path.write_bytes(data)
        w, h = Image.open(io.BytesIO(data)).size
        rows.append({"key": key, "source": "s", "category": "caption", R.ORDINAL: i, R.STATUS: R.KEPT,
                     "images": [R.image_ref(str(path), size=len(data), width=w, height=h, format="JPEG")]})
    return R.rows_to_table(rows)


def near_kept(stage: str, result) -> dict[str, object]:
    """Removed rows, the share of them within the threshold of SOME kept row (verified here on their
    signatures: pHash Hamming <= 12 with the same image count, or est. Jaccard >= 0.6 of the full
    MinHash, or an equal content hash), and the farthest removal from the row its dup_group names."""
    every = pa.concat_tables([result.kept, result.dropped])
    image = stage == "image_dedup"
    sig_col, hash_col = ("image_phash", "image_hash") if image else ("text_minhash", "text_hash")
    rows = {r["key"]: r for r in every.select(["key", sig_col, hash_col]).to_pylist()}
    kept = result.kept.column("key").to_pylist()
    kept_hashes = {rows[k][hash_col] for k in kept}

    def value(a, b):
        sa, sb = rows[a][sig_col], rows[b][sig_col]
        if sa is None or sb is None or (image and len(sa) != len(sb)):
            return None
        if image:
            return int(P.hamming(np.array(sa, np.uint64), np.array(sb, np.uint64)).max())
        return float(M.estimated_jaccard(np.array(sa, np.uint32), np.array(sb, np.uint32)))
    within = lambda v: v is not None and (v <= 12 if image else v >= 0.6)
    removed = result.dropped.select(["key", "dup_group"]).to_pylist()
    ok, named = 0, []
    for r in removed:
        ok += rows[r["key"]][hash_col] in kept_hashes or any(within(value(r["key"], k)) for k in kept)
        v = value(r["key"], r["dup_group"])
        if v is not None:
            named.append(v)
    far = (max(named) if image else min(named)) if named else None
    return {"rows": every.num_rows, "kept": len(kept), "removed": len(removed),
            "precision": ok / len(removed) if removed else 1.0,
            "beyond": sum(not within(v) for v in named), "farthest": far}
