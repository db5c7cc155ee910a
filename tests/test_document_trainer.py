"""Interleaved documents on the trainer side (#25 item 8): documents (some split into chunks) go through
count_tokens -> pack (overlong: split) -> shards; ``PackedShards`` and Energon hand back the same packs
with every document carried unchanged; labels train the text and never image pads or vision markers;
M-RoPE positions equal transformers' ``get_rope_index`` on segments holding several images."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curate.base import records as R
from curate.base.stage import StageContext
from curate.documents import record as D
from pack import packformat as F
from pack import tokens as T
from pack.profile import ModelProfile
from pack.packing.chunks import materialize_chunks
from pack.packing.stage import PackStage
from pack.shards.stage import ShardsStage
from pack.tokens.stage import CountTokensStage
from pack.trainer.loader import PackedShards

torch = pytest.importorskip("torch")
L = 1024
SENTENCES = ["The tide turned at noon.", "Gulls followed the last boat in.", "数字 3.14 😀 and a list:\n- nets",
             "Why? Because the wind rose.", "Ropes, hooks — and coffee."]


def _image_ref(root: Path, i: int) -> dict:
    w, h = 60 + 37 * (i % 6), 56 + 29 * (i % 5)
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    path = root / f"doc_img{i:03d}.png"
    path.write_bytes(buf.getvalue())
    return R.image_ref(str(path), width=w, height=h, format="PNG", size=len(buf.getvalue()))


def documents(root: Path, n: int = 14) -> pa.Table:
    """n documents of 2-4 images and 2-6 paragraphs; every fourth one long enough to be split."""
    root.mkdir(parents=True, exist_ok=True)
    rows, image = [], 0
    for d in range(n):
        parts: list = []
        for p in range(2 + d % 5):
            repeat = 60 if d % 4 == 0 else 2 + p
            parts.append(" ".join(SENTENCES[(d + p + k) % len(SENTENCES)] for k in range(repeat)))
            if p < 2 + d % 3:
                parts.append(_image_ref(root, image))
                image += 1
        if d % 3 == 0:      # two images back to back
            parts.insert(1, _image_ref(root, image))
            image += 1
        rows.append({"key": f"doc/{d:02d}", "source": "doc", "category": "interleaved",
                     **D.build_document(parts), R.ORDINAL: d, R.STATUS: R.KEPT})
    return R.rows_to_table(rows)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("doc_trainer")
    counted = CountTokensStage().run(documents(work / "images"))
    assert counted.dropped.num_rows == 0
    pack = PackStage(context_length=L, overlong="split")
    packed = pack.run(counted.kept)
    assert packed.dropped.num_rows == 0 and packed.report["packing"]["split"]["documents"] >= 3
    ctx = StageContext(out_dir=str(work / "out"), seed=3, profile=ModelProfile(context_length=L))
    shards = ShardsStage(context=ctx, dp_size=2, micro_batches=1, packs_per_shard=2, leftover="pad_with_repeats",
                         input_ids=True)
    written = shards.run(packed.kept)
    assert written.dropped.num_rows == 0
    return work / "out" / "shards", materialize_chunks(packed.kept)


@pytest.fixture(scope="module")
def reference(pipeline):
    shards, _ = pipeline
    return [[ds.read_pack(i) for i in range(ds.num_packs)]
            for ds in (PackedShards(str(shards), rank=r, world_size=2) for r in range(2))]


def _samples(reference):
    for packs in reference:
        for pack in packs:
            cu = pack["cu_seqlens"].tolist()
            for j, seg in enumerate(pack["samples"]):
                yield pack, seg, cu[j], cu[j + 1]


def test_packed_shards_carry_every_document_unchanged(pipeline, reference):
    _, rows = pipeline
    by_key = {r["key"]: r for r in rows.to_pylist()}
    seen = set()
    for _, seg, a, b in _samples(reference):
        row = by_key[seg["key"]]
        assert seg["text"] == row["text"] and seg["segments"] == row["segments"], seg["key"]
        assert seg["length"] == b - a == row["num_tokens"]
        assert [im["tokens"] for im in seg["images"]] == row["image_tokens"]
        assert (seg.get("doc_key"), seg.get("chunk_index")) == (row["doc_key"], row["chunk_index"])
        seen.add(seg["key"])
    assert seen == set(by_key)       # every document and chunk is in some pack
    assert any(k.endswith("#c1") for k in seen)
    from pack.shards.validate import validate_shards
    assert validate_shards(str(pipeline[0])) == []


def test_labels_train_the_document_text_and_never_vision_tokens(reference):
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(str(T.shipped_tokenizer_dir()), local_files_only=True)
    vision = [hf.convert_tokens_to_ids(t) for t in (T.VISION_START, T.VISION_END, T.IMAGE_PAD)]
    checked = 0
    for pack, seg, a, b in _samples(reference):
        ids, labels = pack["input_ids"][a:b], pack["labels"][a:b]
        assert (labels[np.isin(ids, vision)] == F.IGNORE_INDEX).all()
        trained = ids[labels != F.IGNORE_INDEX]
        assert (labels[labels != F.IGNORE_INDEX] == trained).all()
        # the trained tokens are the document's text in order (paragraph joins included), then the turn's end
        want = ""
        last = None
        for kind, value in D.document_parts(seg["text"], seg["segments"]):
            if kind == "text":
                want += (R.DOCUMENT_PARAGRAPH_JOIN if last == "text" else "") + value
            last = kind
        assert want
        assert hf.decode(trained.tolist()) == want + T.IM_END + "\n", seg["key"]
        checked += 1
    assert checked > 14


def test_mrope_positions_equal_get_rope_index_on_segments_with_several_images(reference):
    from tests.tiny_qwen import tiny_qwen2_vl
    model = tiny_qwen2_vl().model
    several = 0
    for pack, seg, a, b in _samples(reference):
        grids = [im["grid_thw"] for im in seg["images"]]
        types = pack["mm_token_type_ids"]
        want, _ = model.get_rope_index(
            torch.as_tensor(pack["input_ids"][a:b], dtype=torch.long)[None],
            mm_token_type_ids=torch.as_tensor(types[a:b])[None],
            image_grid_thw=torch.as_tensor(grids, dtype=torch.long) if grids else None)
        assert np.array_equal(pack["position_ids"][:, a:b], want[:, 0].numpy()), seg["key"]
        several += len(grids) >= 2
    assert several >= 5


def test_energon_yields_the_same_document_packs(pipeline, reference):
    pytest.importorskip("megatron.energon")
    from tests.test_energon import assert_same_pack, energon_packs
    shards, _ = pipeline
    for r in range(2):
        got = energon_packs(shards, r, len(reference[r]))
        for g, w in zip(got, reference[r]):
            assert_same_pack(g, w)
