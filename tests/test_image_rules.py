"""image_filter: every rule at its boundary, the order of the rules, quarantine vs reject, the stage."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from curate.media import images as I
from curate.base import records as R
from curate import base as S
from curate.filters import image_rules as IR
from curate.filters.presets import IMAGE_PRESETS, ImageThresholds
from demo_data.sample import bomb_png, jpeg_bytes, png_bytes

OFF = ImageThresholds(min_side=0, min_pixels=0, max_aspect_ratio=0, max_pixels=0, min_jpeg_quality=0,
                      min_bits_per_pixel=0, blank_max_std=0)


# Encoders shared with the sample-data generator, so tests and demo plant the same bytes.
jpeg, png = jpeg_bytes, png_bytes


ASTRONAUT = Image.fromarray(skdata.astronaut())


def ref_for(payload: bytes, fmt: str | None = None, sized: bool = True) -> dict:
    with Image.open(io.BytesIO(payload)) as im:
        w, h, f = im.size[0], im.size[1], im.format
    return R.image_ref("mem://x", size=len(payload), width=w if sized else None, height=h if sized else None,
                       format=fmt or f)


def reader(payload: bytes):
    return lambda ref: payload


def no_io(ref):
    raise AssertionError("this rule must not read image bytes")


def th(**kw) -> ImageThresholds:
    import dataclasses
    return dataclasses.replace(OFF, **kw)


# --- header rules: no I/O, inclusive boundaries ---------------------------------------------------
@pytest.mark.parametrize("w,h,reason", [(112, 400, None), (111, 400, "image:min_side"), (400, 111, "image:min_side")])
def test_min_side_boundary_needs_no_io(w, h, reason):
    drop = IR.check_image(R.image_ref("x", size=-1, width=w, height=h, format="JPEG"), th(min_side=112), read=no_io)
    assert (drop.reason if drop else None) == reason


@pytest.mark.parametrize("w,h,reason", [(100, 100, None), (99, 101, "image:min_pixels")])
def test_min_pixels_boundary(w, h, reason):
    drop = IR.check_image(R.image_ref("x", width=w, height=h), th(min_pixels=10_000), read=no_io)
    assert (drop.reason if drop else None) == reason


@pytest.mark.parametrize("w,h,reason", [(300, 100, None), (100, 300, None), (301, 100, "image:aspect_ratio"),
                                        (100, 301, "image:aspect_ratio")])
def test_aspect_ratio_boundary(w, h, reason):
    drop = IR.check_image(R.image_ref("x", width=w, height=h), th(max_aspect_ratio=3.0), read=no_io)
    assert (drop.reason if drop else None) == reason


@pytest.mark.parametrize("w,h,reason", [(8000, 8000, None), (8000, 8001, "image:too_large_to_decode")])
def test_max_pixels_boundary(w, h, reason):
    drop = IR.check_image(R.image_ref("x", width=w, height=h), th(max_pixels=64_000_000), read=no_io)
    assert (drop.reason if drop else None) == reason


def test_banner_is_named_aspect_ratio_before_min_side():
    drop = IR.check_image(R.image_ref("x", width=1200, height=100), IMAGE_PRESETS["default"], read=no_io)
    assert drop.reason == "image:aspect_ratio" and "12.00" in drop.detail


def test_zero_disables_every_rule():
    payload = jpeg(Image.new("RGB", (20, 2000), (7, 7, 7)), quality=2)
    assert IR.check_image(ref_for(payload), OFF, read=reader(payload)) is None


# --- decompression bombs ----------------------------------------------------------------------------
def test_bomb_with_size_from_ingest_is_rejected_without_reading():
    drop = IR.check_image(R.image_ref("x", width=9000, height=9000, format="PNG"), IMAGE_PRESETS["default"], read=no_io)
    assert drop.reason == "image:too_large_to_decode" and drop.status == R.REJECTED


def test_bomb_without_size_is_probed_and_rejected():
    payload = bomb_png(20000, 20000)  # past Pillow's own bomb limit: probe raises, we name it
    drop = IR.check_image(R.image_ref("x", size=len(payload), format="PNG"), th(max_pixels=0, blank_max_std=3),
                          read=reader(payload))
    assert drop.reason == "image:too_large_to_decode"
    payload = bomb_png(9000, 9000)
    drop = IR.check_image(R.image_ref("x", size=len(payload)), th(max_pixels=64_000_000), read=reader(payload))
    assert drop.reason == "image:too_large_to_decode" and "9000x9000" in drop.detail


# --- JPEG quality from the quantization tables -------------------------------------------------------
def test_jpeg_quality_estimate_matches_the_encoder_setting():
    small = ASTRONAUT.resize((64, 64))
    for q in list(range(1, 96, 3)) + [96, 98, 100]:
        with Image.open(io.BytesIO(jpeg(small, q))) as im:
            est = IR.estimate_jpeg_quality(im.quantization)
        assert est is not None and abs(est - q) <= 1, (q, est)
    assert IR.estimate_jpeg_quality(None) is None
    assert IR.estimate_jpeg_quality({0: [1] * 64}) == 100.0


@pytest.mark.parametrize("quality,reason", [(25, None), (24, "image:low_jpeg_quality"), (4, "image:low_jpeg_quality")])
def test_low_jpeg_quality_boundary(quality, reason):
    payload = jpeg(ASTRONAUT, quality)
    drop = IR.check_image(ref_for(payload), th(min_jpeg_quality=25), read=reader(payload))
    assert (drop.reason if drop else None) == reason


def test_jpeg_quality_is_read_without_decoding(monkeypatch):
    payload = jpeg(ASTRONAUT, 5)
    monkeypatch.setattr(Image.Image, "load", lambda self: (_ for _ in ()).throw(AssertionError("decoded")))
    drop = IR.check_image(ref_for(payload), th(min_jpeg_quality=25), read=reader(payload))
    assert drop.reason == "image:low_jpeg_quality"


def test_png_is_not_judged_by_jpeg_quality():
    payload = png(ASTRONAUT)
    assert IR.check_image(ref_for(payload), th(min_jpeg_quality=99), read=reader(payload)) is None


# --- blank ------------------------------------------------------------------------------------------
def two_tone(diff: int) -> bytes:
    """Left half 100, right half 100+diff: per-channel std is exactly diff/2 (also after 4x reduce)."""
    arr = np.full((256, 256, 3), 100, np.uint8)
    arr[:, 128:] += np.uint8(diff)
    return png(Image.fromarray(arr))


@pytest.mark.parametrize("diff,reason", [(6, None), (5, "image:blank"), (0, "image:blank")])
def test_blank_boundary(diff, reason):
    payload = two_tone(diff)
    drop = IR.check_image(ref_for(payload), th(blank_max_std=3.0), read=reader(payload))
    assert (drop.reason if drop else None) == reason


def test_uniform_jpeg_and_one_level_noise_are_blank_real_photos_are_not():
    t = IMAGE_PRESETS["default"]
    uniform = jpeg(Image.new("RGB", (640, 480), (128, 128, 128)))
    rng = np.random.default_rng(0)
    noise = png(Image.fromarray(np.full((480, 640, 3), 200, np.uint8) + rng.integers(0, 2, (480, 640, 3), dtype=np.uint8)))
    for payload in (uniform, noise):
        assert IR.check_image(ref_for(payload), t, read=reader(payload)).reason == "image:blank"
    for arr in (skdata.astronaut(), skdata.chelsea(), skdata.camera(), skdata.page()):
        payload = jpeg(Image.fromarray(arr))
        assert IR.check_image(ref_for(payload), t, read=reader(payload)) is None


def test_sixteen_bit_images_are_measured_on_their_full_range():
    photo = (skdata.camera().astype(np.uint16) * 257)
    flat = np.full((256, 256), 30000, np.uint16)
    assert IR.check_image(ref_for(png(Image.fromarray(photo))), th(blank_max_std=3),
                          read=reader(png(Image.fromarray(photo)))) is None
    drop = IR.check_image(ref_for(png(Image.fromarray(flat))), th(blank_max_std=3), read=reader(png(Image.fromarray(flat))))
    assert drop.reason == "image:blank"


# --- bits per pixel ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size,fmt,reason", [(800, "JPEG", None), (799, "JPEG", "image:low_bits_per_pixel"),
                                             (799, "WEBP", "image:low_bits_per_pixel"), (10, "PNG", None)])
def test_bits_per_pixel_boundary_uses_the_reference_only(size, fmt, reason):
    # 400 x 400 pixels at 0.04 bits per pixel = 6400 bits = 800 bytes
    drop = IR.check_image(R.image_ref("x", size=size, width=400, height=400, format=fmt),
                          th(min_bits_per_pixel=0.04), read=no_io)
    assert (drop.reason if drop else None) == reason


def test_blank_is_named_before_low_bits_per_pixel():
    payload = jpeg(Image.new("RGB", (640, 480), (128, 128, 128)))
    assert len(payload) * 8 / (640 * 480) < 0.2
    drop = IR.check_image(ref_for(payload), th(blank_max_std=3, min_bits_per_pixel=0.2), read=reader(payload))
    assert drop.reason == "image:blank"


# --- unreadable and corrupt ---------------------------------------------------------------------------
def test_unreadable_bytes_are_quarantined_with_the_code():
    def missing_member(ref):
        raise I.UnreadableImage("missing_member", "x.tar:a.jpg")

    def missing_file(ref):
        raise FileNotFoundError("/nope.jpg")
    t = IMAGE_PRESETS["default"]
    ref = R.image_ref("x", width=300, height=300, format="JPEG")
    d1, d2 = IR.check_image(ref, t, read=missing_member), IR.check_image(ref, t, read=missing_file)
    assert (d1.reason, d1.status) == ("image:unreadable:missing_member", R.QUARANTINED)
    assert (d2.reason, d2.status) == ("image:unreadable:missing_file", R.QUARANTINED)


def test_garbage_and_damaged_payloads_are_rejected_as_corrupt():
    t = IMAGE_PRESETS["default"]
    garbage = b"<!DOCTYPE html><html>404</html>"
    d = IR.check_image(R.image_ref("x", size=len(garbage), width=300, height=300, format="JPEG"), t, read=reader(garbage))
    assert (d.reason, d.status) == ("image:corrupt", R.REJECTED) and "not_an_image" in d.detail
    cut = jpeg(ASTRONAUT)[:5000]                   # no end-of-image marker: caught by the header probe
    d = IR.check_image(R.image_ref("x", size=len(cut), width=512, height=512, format="JPEG"), t, read=reader(cut))
    assert d.reason == "image:corrupt" and "truncated_image" in d.detail
    damaged = bytearray(png(ASTRONAUT))            # header intact, compressed pixel data zeroed: fails to decode
    at = damaged.find(b"IDAT") + 200
    damaged[at:at + 64] = b"\x00" * 64
    d = IR.check_image(ref_for(bytes(damaged)), t, read=reader(bytes(damaged)))
    assert d.reason == "image:corrupt" and d.detail.startswith("decode failed")


# --- samples ------------------------------------------------------------------------------------------
def test_sample_fails_with_its_first_failing_image_and_text_only_passes():
    good = jpeg(ASTRONAUT)
    refs = [ref_for(good), R.image_ref("x", width=64, height=64, format="JPEG")]
    drop = IR.check_sample(refs, IMAGE_PRESETS["default"], read=reader(good))
    assert drop.reason == "image:min_side" and drop.detail.startswith("image 2/2:")
    assert IR.check_sample([], IMAGE_PRESETS["default"], read=no_io) is None
    assert IR.check_sample(None, IMAGE_PRESETS["default"], read=no_io) is None


# --- the stage -----------------------------------------------------------------------------------------
def write(tmp: Path, name: str, payload: bytes) -> dict:
    path = tmp / name
    path.write_bytes(payload)
    ref = ref_for(payload)
    ref["uri"] = str(path)
    return ref


def test_stage_runs_on_files_and_accounts_for_every_row(tmp_path):
    rng = np.random.default_rng(1)
    cases = {
        "good": [write(tmp_path, "good.jpg", jpeg(ASTRONAUT))],
        "blank": [write(tmp_path, "blank.jpg", jpeg(Image.new("RGB", (640, 480), (128, 128, 128))))],
        "noise": [write(tmp_path, "noise.png", png(Image.fromarray(
            np.full((480, 640, 3), 200, np.uint8) + rng.integers(0, 2, (480, 640, 3), dtype=np.uint8))))],
        "tiny": [write(tmp_path, "tiny.jpg", jpeg(ASTRONAUT.resize((64, 64))))],
        "banner": [write(tmp_path, "banner.jpg", jpeg(ASTRONAUT.resize((1200, 100))))],
        "q4": [write(tmp_path, "q4.jpg", jpeg(ASTRONAUT, 4))],
        "bomb": [write(tmp_path, "bomb.png", bomb_png(9000, 9000))],
        "gone": [dict(write(tmp_path, "gone.jpg", jpeg(ASTRONAUT)), uri=str(tmp_path / "missing.jpg"))],
        "text-only": [],
    }
    rows = [R.Sample(key=k, source="s", category="caption", text="a caption here", ordinal=i).to_row()
            for i, k in enumerate(cases)]
    for row, refs in zip(rows, cases.values()):
        row["images"] = refs
    table = R.rows_to_table(rows)
    stage = S.build("image_filter", {})
    result = stage.run(table, batch_size=4)
    assert result.num_rows == table.num_rows
    got = dict(zip(result.dropped.column("key").to_pylist(), result.dropped.column(R.REASON).to_pylist()))
    assert got == {"blank": "image:blank", "noise": "image:blank", "tiny": "image:min_side",
                   "banner": "image:aspect_ratio", "q4": "image:low_jpeg_quality",
                   "bomb": "image:too_large_to_decode", "gone": "image:unreadable:missing_file"}
    status = dict(zip(result.dropped.column("key").to_pylist(), result.dropped.column(R.STATUS).to_pylist()))
    assert status["gone"] == R.QUARANTINED and status["blank"] == R.REJECTED
    assert sorted(result.kept.column("key").to_pylist()) == ["good", "text-only"]
    # single-threaded gives the same answer
    again = S.build("image_filter", {"io_threads": 1}).run(table, batch_size=64)
    assert sorted(again.dropped.column(R.REASON).to_pylist()) == sorted(got.values())


def test_presets_and_overrides():
    assert IR.ImageFilter(preset="datacomp_basic").thresholds.min_side == 200
    assert IR.ImageFilter(preset="datacomp_basic").thresholds.max_aspect_ratio == 3.0
    stage = IR.ImageFilter(preset="datacomp_basic", min_side=150, min_jpeg_quality=0)
    assert (stage.thresholds.min_side, stage.thresholds.min_jpeg_quality, stage.thresholds.max_aspect_ratio) == (150, 0, 3.0)
    with pytest.raises(ValueError, match="preset"):
        IR.ImageFilter(preset="nope")
    with pytest.raises(ValueError, match="min_side"):
        IR.ImageFilter(min_side=-1)
    with pytest.raises(ValueError, match="unknown setting"):
        S.build("image_filter", {"min_sides": 3})
    schema = IR.ImageFilter.settings_schema()
    assert {"preset", "min_side", "max_aspect_ratio", "blank_max_std"} <= set(schema["properties"])
