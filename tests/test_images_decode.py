"""curate.media.images and the JPEG checks: one guarded opener, batched reads, cut JPEGs, the reduced decode, the std."""
from __future__ import annotations

import dataclasses
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from skimage import data as skdata

from curate.media import images as I
from curate.base import records as R
from curate import base as S
from curate.filters import image_rules as IR
from curate.media import jpeg as J
from curate.filters.presets import IMAGE_PRESETS
from demo_data.sample import bomb_png, jpeg_bytes, png_bytes

ASTRONAUT = Image.fromarray(skdata.astronaut())
DEFAULT = IMAGE_PRESETS["default"]


def encode(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def cut(payload: bytes, fraction: float) -> bytes:
    """The first `fraction` of a JPEG with its end-of-image marker put back (a "repaired" download)."""
    return payload[:int(len(payload) * fraction)] + b"\xff\xd9"


def sized_ref(payload: bytes) -> dict:
    with Image.open(io.BytesIO(payload)) as im:
        return R.image_ref("mem://x", size=len(payload), width=im.width, height=im.height, format=im.format)


# --- the one guarded opener -----------------------------------------------------------------------------
def test_open_image_reads_the_header_only_and_names_every_refusal():
    im = I.open_image(jpeg_bytes(ASTRONAUT))
    assert (im.size, im.format) == ((512, 512), "JPEG") and im.tile  # tiles still pending: nothing decoded
    cases = {b"": "empty_image", b"<!DOCTYPE html><p>404": "not_an_image", b"\x00" * 100: "not_an_image",
             bomb_png(20000, 20000): "decompression_bomb", jpeg_bytes(ASTRONAUT)[:3000]: "truncated_image"}
    for payload, reason in cases.items():
        with pytest.raises(I.UnreadableImage) as err:
            I.open_image(payload)
        assert err.value.reason == reason
    with pytest.raises(I.UnreadableImage) as err:
        I.open_image(bomb_png(9000, 9000), max_pixels=64_000_000)
    assert err.value.reason == "too_large_to_decode" and "9000x9000" in err.value.detail


def test_decode_uses_the_same_guard_and_reduces_jpegs_in_the_dct():
    with pytest.raises(I.UnreadableImage) as err:
        I.decode(bomb_png(9000, 9000), max_pixels=64_000_000)
    assert err.value.reason == "too_large_to_decode"
    assert I.decode(jpeg_bytes(ASTRONAUT)).size == (512, 512)
    assert I.decode(jpeg_bytes(ASTRONAUT), min_side=64).size == (64, 64)     # 1/8 scale: 512 / 8
    assert I.decode(jpeg_bytes(ASTRONAUT), min_side=100).size == (128, 128)  # 1/4 still covers 100
    assert I.decode(png_bytes(ASTRONAUT), min_side=64).size == (512, 512)    # no DCT: full decode
    assert I.probe(jpeg_bytes(ASTRONAUT)) == I.ImageHeader(512, 512, "JPEG")


# --- batched reads ---------------------------------------------------------------------------------------
def write_tar(path: Path, members: list[tuple[str, bytes]]) -> list[dict]:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with tarfile.open(path) as tar:
        return [R.image_ref(str(path), m.name, m.offset_data, m.size) for m in tar.getmembers()]


def test_read_many_opens_each_tar_once_and_keeps_failures_in_place(tmp_path, monkeypatch):
    payloads = [bytes([i]) * (100 + i) for i in range(6)]
    refs_a = write_tar(tmp_path / "a.tar", [(f"{i}.jpg", p) for i, p in enumerate(payloads[:3])])
    refs_b = write_tar(tmp_path / "b.tar", [(f"{i}.jpg", p) for i, p in enumerate(payloads[3:])])
    loose = tmp_path / "loose.jpg"
    loose.write_bytes(b"loose")
    short = dict(refs_a[0], size=10**6)                              # a range past the end of the tar
    gone = dict(refs_b[0], uri=str(tmp_path / "gone.tar"))
    refs = [refs_b[2], refs_a[1], R.image_ref(str(loose)), short, refs_a[0], gone, refs_b[0], refs_a[2]]
    opened: list[str] = []
    real_filesystem = I._filesystem

    class Counting:
        def __init__(self, fs):
            self.fs = fs

        def open(self, path, mode):
            opened.append(path)
            return self.fs.open(path, mode)
    monkeypatch.setattr(I, "_filesystem", lambda uri: (Counting(real_filesystem(uri)[0]), real_filesystem(uri)[1]))
    got = I.read_many(refs)
    assert got[0] == payloads[5] and got[1] == payloads[1] and got[2] == b"loose"
    assert isinstance(got[3], I.UnreadableImage) and got[3].reason == "truncated_container"
    assert got[4] == payloads[0] and got[6] == payloads[3] and got[7] == payloads[2]
    assert isinstance(got[5], FileNotFoundError)
    assert sorted(opened) == sorted([str(tmp_path / n) for n in ("a.tar", "b.tar", "loose.jpg", "gone.tar")])
    assert [I.read_image_bytes(r) for r in (refs_a[1], refs_b[2])] == [payloads[1], payloads[5]]


# --- cut JPEGs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("subsampling", [0, 2])
def test_baseline_jpeg_cut_with_its_end_marker_put_back_is_truncated(subsampling):
    whole = encode(ASTRONAUT, quality=90, subsampling=subsampling)
    assert IR.check_image(sized_ref(whole), DEFAULT, read=lambda r: whole) is None
    broken = cut(whole, 0.6)
    drop = IR.check_image(sized_ref(broken), DEFAULT, read=lambda r: broken)
    assert drop.reason == "image:truncated" and "grey fill" in drop.detail and drop.status == R.REJECTED


def test_grey_jpeg_cut_is_still_truncated_and_greyscale_jpegs_are_checked():
    grey = encode(ASTRONAUT.convert("L"), quality=90)
    assert IR.check_image(sized_ref(grey), DEFAULT, read=lambda r: grey) is None
    broken = cut(grey, 0.5)
    assert IR.check_image(sized_ref(broken), DEFAULT, read=lambda r: broken).reason == "image:truncated"


def test_progressive_jpeg_cut_misses_its_last_scans():
    whole = encode(ASTRONAUT, quality=90, progressive=True)
    assert J.progressive_scans_missing(whole) == []
    assert IR.check_image(sized_ref(whole), DEFAULT, read=lambda r: whole) is None
    broken = cut(whole, 0.6)
    drop = IR.check_image(sized_ref(broken), DEFAULT, read=lambda r: broken)
    assert drop.reason == "image:truncated" and "progressive" in drop.detail


def test_photos_with_dark_or_bright_bottoms_are_not_truncated():
    for arr in (skdata.astronaut(), skdata.camera(), skdata.coffee(), skdata.chelsea(), skdata.rocket()):
        for fraction_black in (0.0, 0.3):
            a = arr.copy()
            a[int(a.shape[0] * (1 - fraction_black)):] = 0               # letterbox: black, not fill grey
            payload = encode(Image.fromarray(a), quality=85)
            assert IR.check_image(sized_ref(payload), DEFAULT, read=lambda r: payload) is None


def test_a_uniform_mid_grey_jpeg_is_named_blank_not_truncated():
    payload = encode(Image.new("RGB", (640, 480), (128, 128, 128)))
    assert IR.check_image(sized_ref(payload), DEFAULT, read=lambda r: payload).reason == "image:blank"


def test_decoder_fill_rows_counts_whole_rows_from_the_bottom():
    a = np.full((10, 6, 3), 128, np.uint8)
    a[:4] = 50
    a[4, :3] = 60                                                       # a partly filled row does not count
    assert J.decoder_fill_rows(Image.fromarray(a, "YCbCr")) == 5
    assert J.decoder_fill_rows(Image.fromarray(a, "RGB")) == 5          # libjpeg maps the fill to RGB 128
    assert J.decoder_fill_rows(Image.fromarray(a, "RGB").convert("HSV")) == 0   # other modes: not judged
    assert J.decoder_fill_rows(Image.fromarray(np.full((4, 4), 128, np.uint8), "L")) == 4


def test_decoder_fill_rows_reads_arrays_from_the_reduced_decode():
    a = np.full((10, 6, 3), 128, np.uint8)
    a[:7] = 50
    assert J.decoder_fill_rows(a) == 3 and J.decoder_fill_rows(a[:7]) == 0
    assert J.decoder_fill_rows(np.full((4, 5), 128, np.uint8)) == 4


# --- the reduced decode ------------------------------------------------------------------------------------
def test_reduced_decode_is_the_one_eighth_dct_scale_in_coded_orientation():
    payload = encode(ASTRONAUT.resize((500, 300)), quality=90)
    assert J.reduced_decode(payload, grey=False).shape == (38, 63, 3)        # ceil(300/8) x ceil(500/8)
    grey = encode(ASTRONAUT.convert("L").resize((500, 300)), quality=90)
    assert J.reduced_decode(grey, grey=True).shape == (38, 63)
    rotated = ASTRONAUT.resize((500, 300))
    exif = rotated.getexif()
    exif[0x0112] = 6                                                          # "rotate 90 degrees to display"
    assert J.reduced_decode(encode(rotated, quality=90, exif=exif), grey=False).shape == (38, 63, 3)


def test_a_jpeg_whose_scan_libjpeg_refuses_is_corrupt():
    whole = bytearray(encode(ASTRONAUT, quality=90))
    sos = whole.find(b"\xff\xda")
    whole[sos + 6] = 0x33                    # the first component's Huffman tables: 3, never defined
    payload = bytes(whole)
    assert I.open_image(payload).size == (512, 512)                          # the header is fine
    drop = IR.check_image(sized_ref(payload), DEFAULT, read=lambda r: payload)
    assert drop.reason == "image:corrupt" and drop.detail.startswith("decode failed")


def test_cmyk_jpegs_are_judged_blank_through_pillow_and_never_as_truncated():
    photo = encode(ASTRONAUT.convert("CMYK"), quality=90)
    flat = encode(Image.new("CMYK", (300, 300), (10, 20, 30, 40)), quality=90)
    assert IR.check_image(sized_ref(photo), DEFAULT, read=lambda r: photo) is None
    assert IR.check_image(sized_ref(flat), DEFAULT, read=lambda r: flat).reason == "image:blank"


def test_large_jpegs_are_measured_on_a_reduced_copy():
    big = ASTRONAUT.resize((2048, 1536))                                     # 1/8 scale: 256 x 192, reduced 3x
    payload = encode(big, quality=90)
    pixels = J.reduced_decode(payload, grey=False)
    reduced = np.asarray(Image.fromarray(pixels).reduce(3))
    assert IR.check_image(sized_ref(payload), DEFAULT, read=lambda r: payload) is None
    strict = dataclasses.replace(DEFAULT, blank_max_std=J.max_channel_std_of(reduced) + 1e-6)
    assert IR.check_image(sized_ref(payload), strict, read=lambda r: payload).reason == "image:blank"
    assert J.max_channel_std_of(reduced) < J.max_channel_std_of(pixels)


# --- the blank measure ------------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 3]))))
def test_histogram_std_equals_numpy_std_over_the_pixels(arr):
    im = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    expected = float(arr.reshape(-1, arr.shape[-1]).astype(np.float64).std(axis=0).max())
    assert IR.max_channel_std(im) == pytest.approx(expected, abs=1e-6)
    # OpenCV's meanStdDev takes sqrt(E[x^2] - E[x]^2) in doubles: a constant 90 gives 1.3e-6, not 0
    # (the error is about sqrt(eps) x the mean, < 4e-6 for 8-bit pixels) — nothing next to the
    # blank limit of 3.0 it is compared with.
    assert J.max_channel_std_of(arr[..., 0] if arr.shape[-1] == 1 else arr) == pytest.approx(expected, abs=1e-5)


# --- the stage: batching does not change answers -----------------------------------------------------------
def test_stage_answers_do_not_depend_on_batch_size_or_threads(tmp_path):
    rng = np.random.default_rng(3)
    members, expected = [], {}
    for i in range(24):
        kind = ["good", "blank", "cut", "small"][i % 4]
        im = ASTRONAUT.resize((int(rng.integers(200, 400)), int(rng.integers(200, 400))))
        if kind == "blank":
            im = Image.new("RGB", (300, 300), (9, 99, 199))
        payload = encode(im.resize((64, 64)) if kind == "small" else im, quality=90)
        members.append((f"{i:03d}.jpg", cut(payload, 0.5) if kind == "cut" else payload))
        expected[f"k{i}"] = {"good": None, "blank": "image:blank", "cut": "image:truncated", "small": "image:min_side"}[kind]
    refs = write_tar(tmp_path / "s.tar", members)
    rows = []
    for i, (ref, (_, payload)) in enumerate(zip(refs, members)):
        with Image.open(io.BytesIO(payload)) as im:
            ref.update(width=im.width, height=im.height, format="JPEG")
        row = R.Sample(key=f"k{i}", source="s", category="caption", text="a caption", ordinal=i).to_row()
        row["images"] = [ref]
        rows.append(row)
    table = R.rows_to_table(rows)
    answers = []
    for batch_size, threads in ((1, 1), (5, 4), (64, 1)):
        res = S.build("image_filter", {"io_threads": threads}).run(table, batch_size=batch_size)
        got = dict(zip(res.dropped.column("key").to_pylist(), res.dropped.column(R.REASON).to_pylist()))
        got.update({k: None for k in res.kept.column("key").to_pylist()})
        answers.append(got)
    assert answers[0] == expected and answers[1] == expected and answers[2] == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_scan_header_parser_never_fails_on_garbage(head, tail):
    for payload in (head, b"\xff\xd8\xff\xc2" + head + b"\xff\xda" + tail, b"\xff\xda" + tail + b"\xff\xc2"):
        missing = J.progressive_scans_missing(payload)
        assert isinstance(missing, list) and all(isinstance(c, int) for c in missing)

