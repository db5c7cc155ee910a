"""One read-decode-or-drop path (curate.media.decode): the same bad image gets the same verdict from
the function, from a model stage (embed) and from image_dedup's own thumbnails."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from curate import base as S
from curate.base import Drop
from curate.base import records as R
from curate.dedup import sample_bytes as SB
from curate.media import decode as D
from curate.media import images as I
from demo_data.sample import bomb_png, png_bytes


def jpeg(size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


# file name -> (bytes or None for a missing file, expected status, expected reason, decoder code in the detail)
BAD = {
    "bomb.png": (bomb_png(20000, 20000), R.REJECTED, "image:too_large_to_decode", "decompression_bomb"),
    "over_budget.png": (bomb_png(9000, 8000), R.REJECTED, "image:too_large_to_decode", "too_large_to_decode"),
    "garbage.jpg": (b"\xff\xd8\xff\xe0 not really a jpeg", R.REJECTED, "image:corrupt", "not_an_image"),
    "empty.jpg": (b"", R.REJECTED, "image:corrupt", "empty_image"),
    "page.jpg": (b"<!DOCTYPE html><html></html>", R.REJECTED, "image:corrupt", "not_an_image"),
    "cut.jpg": (jpeg()[:-200], R.REJECTED, "image:corrupt", "truncated_image"),
    "gone.jpg": (None, R.QUARANTINED, "image:unreadable:missing_file", ""),
}


@pytest.fixture(scope="module")
def bad_table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    rows = []
    for i, (name, (data, *_)) in enumerate([("good.jpg", (jpeg(),)), *BAD.items()]):
        if data is not None:
            (tmp / name).write_bytes(data)
        row = R.Sample(key=name, source="t", category="caption", text="a photo", ordinal=i).to_row()
        row["images"] = [R.image_ref(str(tmp / name), size=len(data or b""), width=10, height=10, format="PNG")]
        rows.append(row)
    return R.rows_to_table(rows)


def test_every_decoder_code_maps_to_one_verdict(bad_table):
    for ref, key in zip(bad_table.column("images").to_pylist(), bad_table.column("key").to_pylist()):
        got = D.read_decoded(ref[0])
        if key == "good.jpg":
            assert isinstance(got, Image.Image) and got.mode == "RGB" and got.size == (64, 48)
            continue
        _, status, reason, code = BAD[key]
        assert isinstance(got, Drop), key
        assert (got.status, got.reason) == (status, reason), key
        assert (got.detail or "").startswith(code), (key, got.detail)


def test_decode_rgb_raises_the_codes_decode_or_drop_maps():
    with pytest.raises(I.UnreadableImage) as err:
        D.decode_rgb(bomb_png(20000, 20000))
    assert err.value.reason == "decompression_bomb"
    assert D.decode_drop(err.value).reason == "image:too_large_to_decode"
    assert D.decode_or_drop(png_bytes(Image.new("RGB", (8, 8))), max_pixels=32).reason == "image:too_large_to_decode"


def test_a_model_stage_and_image_dedup_give_the_function_s_verdicts(bad_table):
    want = {k: (status, reason) for k, (_, status, reason, _) in BAD.items()}
    embedded = S.build("embed", {"modality": "image", "batch_size": 4}).run(bad_table)
    assert embedded.kept.column("key").to_pylist() == ["good.jpg"]
    assert {r["key"]: (r[R.STATUS], r[R.REASON]) for r in embedded.dropped.to_pylist()} == want
    _, drops = SB.hashed_rows(bad_table, np.ones(bad_table.num_rows, dtype=bool))
    got = {k: (d.status, d.reason) for k, d in zip(bad_table.column("key").to_pylist(), drops) if d is not None}
    assert got == want
