"""image_filter's blur and QR-code rules (curate.filters.image_quality) on real pictures: bundled photos,
blurred by Pillow, and QR codes drawn by segno (pure Python, the test extra) — no downloads."""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image, ImageFilter
from skimage import data as skdata

from curate import base as S
from curate.base import records as R
from curate.filters import image_quality as Q
from curate.filters import image_rules as IR
from curate.filters.presets import IMAGE_PRESETS, ImageThresholds

segno = pytest.importorskip("segno")

OFF = ImageThresholds(min_side=0, min_pixels=0, max_aspect_ratio=0, max_pixels=0, min_jpeg_quality=0,
                      min_bits_per_pixel=0, blank_max_std=0)
BLUR_LIMIT = 400.0      # bench/bench_image_quality.py: separates the bundled photos from the same blurred by 1 px at 400


def encode(im: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def ref_for(payload: bytes) -> dict:
    with Image.open(io.BytesIO(payload)) as im:
        return R.image_ref("mem://x", size=len(payload), width=im.size[0], height=im.size[1], format=im.format)


def verdict(payload: bytes, th: ImageThresholds) -> str | None:
    drop = IR.check_image(ref_for(payload), th, read=lambda ref: payload)
    return drop.reason if drop else None


def blurred(im: Image.Image, px_at_400: float) -> Image.Image:
    """Gaussian blur of `px_at_400` pixels as seen at a 400 px view of the image."""
    return im.filter(ImageFilter.GaussianBlur(px_at_400 * max(im.size) / 400))


def qr_picture(text: str = "https://example.com/a", module_px: int = 8) -> Image.Image:
    buf = io.BytesIO()
    segno.make_qr(text, error="m").save(buf, kind="png", scale=module_px, border=4)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


ASTRONAUT = Image.fromarray(skdata.astronaut())          # 512 x 512
COFFEE = Image.fromarray(skdata.coffee())                # 600 x 400
BIG = COFFEE.resize((2400, 1600), Image.Resampling.LANCZOS)


# --- blur ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("photo", [ASTRONAUT, COFFEE, BIG], ids=["astronaut", "coffee", "coffee_2400"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_sharp_photos_pass_and_the_same_photos_blurred_are_blurry(photo, fmt):
    th = dataclasses.replace(OFF, min_laplacian_variance=BLUR_LIMIT)
    assert verdict(encode(photo, fmt), th) is None
    assert verdict(encode(blurred(photo, 1.5), fmt), th) == "image:blurry"


def test_one_limit_means_the_same_at_every_size_and_format():
    """The probe copy is 256 px on its shorter side whatever the size and format: the measured variance
    of one picture differs little between a 600 px PNG and a 2400 px JPEG of it."""
    small = Q.laplacian_variance(Q.probe_copy(None, encode(COFFEE, "PNG"), COFFEE.size))
    large = Q.laplacian_variance(Q.probe_copy(None, encode(BIG, "JPEG"), BIG.size))
    assert abs(np.log(large / small)) < np.log(1.6)


@settings(max_examples=20, deadline=None)
@given(w=st.integers(8, 2100), h=st.integers(8, 2100), fmt=st.sampled_from(["JPEG", "PNG"]))
def test_probe_copy_has_a_shorter_side_of_256_or_the_image_size(w, h, fmt):
    rng = np.random.default_rng(w * 7919 + h)
    im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    grey = Q.probe_copy(None, encode(im, fmt), (w, h))
    assert grey.dtype == np.uint8 and grey.ndim == 2
    if min(w, h) <= Q.PROBE_SIDE:
        assert grey.shape == (h, w)
    else:
        assert min(grey.shape) == Q.PROBE_SIDE
        assert abs(max(grey.shape) / min(grey.shape) - max(w, h) / min(w, h)) <= 1.0 / Q.PROBE_SIDE * max(w, h) / min(w, h) + 0.01


def test_blur_is_off_by_default_in_every_preset():
    blurry = encode(blurred(ASTRONAUT, 3))
    for name, preset in IMAGE_PRESETS.items():
        assert preset.min_laplacian_variance == 0 and preset.max_qr_area == 0, name
        assert verdict(blurry, preset) is None


def test_a_passing_image_keeps_the_same_facts_with_the_rules_on():
    """The rules read their own copy: pHash's thumbnail (image_dedup's verdicts) stays byte for byte."""
    data = encode(BIG)
    plain = IR.judge_image(ref_for(data), IMAGE_PRESETS["default"], read=lambda r: data)[1]
    ruled = IR.judge_image(ref_for(data), dataclasses.replace(IMAGE_PRESETS["default"], min_laplacian_variance=BLUR_LIMIT,
                                                                max_qr_area=0.05), read=lambda r: data)[1]
    assert plain is not None and ruled is not None
    assert plain.digest == ruled.digest and np.array_equal(plain.thumb, ruled.thumb)


# --- QR codes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_qr_code_image_is_rejected_and_photos_are_not(fmt):
    th = dataclasses.replace(OFF, max_qr_area=0.05)
    assert verdict(encode(qr_picture(), fmt), th) == "image:qr_code"
    for photo in (ASTRONAUT, COFFEE, BIG):
        assert verdict(encode(photo, fmt), th) is None


def test_qr_area_is_the_fraction_the_codes_cover():
    """A code pasted over half of a photo's shorter side covers ~(0.5 x modules/(modules+quiet))^2 x 2/3
    of a 3:2 picture; a limit above that keeps it, one below rejects it."""
    code = qr_picture("https://example.com/x", module_px=10)          # version 2: 25 modules + 2 x 4 quiet
    im = BIG.copy()
    side = BIG.size[1] // 2
    im.paste(code.resize((side, side), Image.Resampling.NEAREST), (100, 100))
    data = encode(im)
    area = Q.qr_area_fraction(Q.probe_copy(None, data, im.size))
    expected = (0.5 * 25 / 33) ** 2 * (2 / 3)
    assert area == pytest.approx(expected, rel=0.15)
    assert verdict(data, dataclasses.replace(OFF, max_qr_area=round(expected * 1.3, 3))) is None
    assert verdict(data, dataclasses.replace(OFF, max_qr_area=round(expected * 0.7, 3))) == "image:qr_code"


def test_blur_runs_before_qr_and_both_name_their_measure():
    th = dataclasses.replace(OFF, min_laplacian_variance=1e9, max_qr_area=0.05)
    drop = IR.check_image(ref_for(encode(qr_picture())), th, read=lambda r: encode(qr_picture()))
    assert drop.reason == "image:blurry" and "variance of the Laplacian" in drop.detail


# --- the stage: a single-image sample is rejected with the reason -------------------------------------
def test_image_filter_stage_rejects_blurry_and_qr_samples(tmp_path):
    pictures = {"sharp": encode(BIG), "blurry": encode(blurred(BIG, 2)), "qr": encode(qr_picture(module_px=12))}
    rows = []
    for i, (name, data) in enumerate(pictures.items()):
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(data)
        with Image.open(path) as im:
            ref = R.image_ref(str(path), size=len(data), width=im.size[0], height=im.size[1], format="JPEG")
        row = R.Sample(key=f"s/{name}", source="s", category="caption", text="a picture", ordinal=i).to_row()
        rows.append({**row, "images": [ref]})
    table = R.rows_to_table(rows)
    default = S.build("image_filter", {"preset": "lenient"}).run(table)
    assert default.kept.num_rows == 3            # off by default: the verdicts of existing recipes stay
    out = S.build("image_filter", {"preset": "lenient", "min_laplacian_variance": BLUR_LIMIT, "max_qr_area": 0.05}).run(table)
    assert out.kept.column("key").to_pylist() == ["s/sharp"]
    got = dict(zip(out.dropped.column("key").to_pylist(), out.dropped.column(R.REASON).to_pylist()))
    assert got == {"s/blurry": "image:blurry", "s/qr": "image:qr_code"}
    assert isinstance(out.kept, pa.Table) and out.kept.num_rows + out.dropped.num_rows == table.num_rows


# --- inside a document: the image leaves the document, the document stays ------------------------------
def test_inside_a_document_a_blurry_or_qr_image_is_removed_and_recorded(tmp_path):
    """image_filter judges each image of a document on its own (#25 item 3, curate.documents.per_image):
    the blur and QR rules then remove the image, not the document."""
    if not hasattr(IR, "judge_document"):
        pytest.skip("image_filter does not judge documents per image on this branch (#25 item 3 wires it)")
    from curate.documents import record as D
    parts = ["A harbour at dawn."]
    for name, im in (("sharp", BIG), ("blurry", blurred(BIG, 2)), ("qr", qr_picture(module_px=12))):
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(encode(im))
        parts += [R.image_ref(str(path), size=path.stat().st_size, width=im.size[0], height=im.size[1],
                              format="JPEG"), f"After the {name} picture."]
    row = {"key": "d/0", "source": "d", "category": "interleaved", **D.build_document(parts), R.ORDINAL: 0,
           R.STATUS: R.KEPT}
    table = R.rows_to_table([row])
    out = S.build("image_filter", {"preset": "lenient", "min_laplacian_variance": BLUR_LIMIT,
                                   "max_qr_area": 0.05}).run(table)
    assert out.dropped.num_rows == 0 and out.kept.num_rows == 1
    doc = out.kept.to_pylist()[0]
    assert [im["uri"].rsplit("/", 1)[-1] for im in doc["images"]] == ["sharp.jpg"]
    assert [(r["position"], r["reason"]) for r in doc["images_removed"]] == [(1, "image:blurry"), (2, "image:qr_code")]
    assert doc["text"] == row["text"]


def test_cmyk_jpegs_and_sixteen_bit_pngs_are_measured_like_the_rest():
    """The filter's other decode paths (CMYK JPEGs through its fallback, 16-bit PNGs) reach the rules
    with the same grey copy: the same picture measures the same within a few percent."""
    rgb = Q.laplacian_variance(Q.probe_copy(None, encode(BIG), BIG.size))
    buf = io.BytesIO()
    BIG.convert("CMYK").save(buf, "JPEG", quality=90)
    cmyk = buf.getvalue()
    assert Q.laplacian_variance(Q.probe_copy(None, cmyk, BIG.size)) == pytest.approx(rgb, rel=0.05)
    th = dataclasses.replace(OFF, min_laplacian_variance=BLUR_LIMIT, blank_max_std=3.0)
    assert verdict(cmyk, th) is None
    buf = io.BytesIO()
    blurred(BIG, 2).convert("CMYK").save(buf, "JPEG", quality=90)
    assert verdict(buf.getvalue(), th) == "image:blurry"
    grey8 = np.asarray(COFFEE.convert("L"))
    buf = io.BytesIO()
    Image.fromarray(grey8.astype(np.uint16) * 257).save(buf, "PNG")
    sixteen = buf.getvalue()
    assert Image.open(io.BytesIO(sixteen)).mode.startswith("I")
    assert Q.laplacian_variance(Q.probe_copy(None, sixteen, COFFEE.size)) == pytest.approx(
        Q.laplacian_variance(Q.box_reduce(grey8)), rel=0.02)
    assert verdict(sixteen, dataclasses.replace(OFF, min_laplacian_variance=BLUR_LIMIT, blank_max_std=3.0)) is None
    assert verdict(sixteen, dataclasses.replace(OFF, min_laplacian_variance=1e6, blank_max_std=3.0)) == "image:blurry"
