"""One decode per image (issue #29): image_filter's reduced decode gives the same verdicts as the decode
it replaced and the same thumbnail image_dedup computes, and the facts it carries (``image_facts``)
leave every dedup decision unchanged — on the bench's realistic photos and on the demo's photos; and a
filter with no later reader of those facts (no digest, no thumbnail, JPEGs at 1/8 scale) keeps and
rejects exactly the same samples for the same reasons."""
from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, strategies as st
from PIL import Image

from curate import base as S
from curate.media import image_facts as F
from curate.media import images as I
from curate.base import records as R
from curate.filters import image_pixels as IP
from curate.filters import image_rules as IR
from curate.filters.presets import IMAGE_PRESETS
from curate.readers.read import read_source

BENCH = Path(__file__).resolve().parents[1] / "bench"
DEFAULT = IMAGE_PRESETS["default"]


@pytest.fixture(scope="module")
def bench_tar(tmp_path_factory) -> Path:
    """160 samples of the bench's held-out corpus (its generator, one tar, this process)."""
    sys.path.insert(0, str(BENCH))
    import photos_corpus
    path = tmp_path_factory.mktemp("photos") / "00000.tar"
    photos_corpus._write_tar((path, 0, 160, 3, 0))
    return path


@pytest.fixture(scope="module")
def demo_tars(tmp_path_factory) -> Path:
    from demo_data.sample import caption_shards
    root = tmp_path_factory.mktemp("demo")
    caption_shards(root, np.random.default_rng(1234))
    return root / "photos"


def tar_images(path: Path) -> list[tuple[str, bytes]]:
    """The image members of a tar, up to where it is cut (the demo plants a cut shard)."""
    out = []
    with tarfile.open(path) as tar:
        try:
            for m in tar:
                if m.isfile() and m.name.endswith((".jpg", ".png", ".webp")):
                    out.append((m.name, tar.extractfile(m).read()))
        except tarfile.ReadError:
            pass
    return out


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(w: int, h: int) -> Image.Image:
    from skimage import data
    return Image.fromarray(data.astronaut()).resize((w, h), Image.Resampling.BILINEAR)


def judged(data: bytes) -> tuple:
    ref = R.image_ref("mem://x", size=len(data))
    return IR.judge_image(ref, DEFAULT, read=lambda _: data)


# --- the decode ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, data", [
    ("jpeg full scale", encoded(photo(200, 150), "JPEG", quality=90)),
    ("jpeg 1/2", encoded(photo(300, 280), "JPEG", quality=85)),
    ("jpeg 1/4", encoded(photo(600, 520), "JPEG", quality=80)),
    ("jpeg 1/8", encoded(photo(1100, 1030), "JPEG", quality=95)),
    ("jpeg 4:4:4", encoded(photo(640, 480), "JPEG", quality=90, subsampling=0)),
    ("jpeg progressive", encoded(photo(700, 500), "JPEG", quality=90, progressive=True)),
    ("jpeg grey", encoded(photo(640, 480).convert("L"), "JPEG", quality=90)),
    ("png rgba", encoded(photo(300, 200).convert("RGBA"), "PNG")),
    ("png palette", encoded(photo(300, 200).convert("P"), "PNG")),
    ("webp", encoded(photo(500, 400), "WEBP", quality=80)),
])
def test_the_filter_decode_gives_image_dedups_thumbnail_exactly(name, data):
    drop, fact = judged(data)
    assert drop is None
    assert fact.digest == F.bytes_digest(data)
    assert fact.thumb is not None, name
    np.testing.assert_array_equal(fact.thumb, F.thumbnail(data))


def test_images_judged_without_a_thumbnail_decode_carry_none():
    """A CMYK JPEG goes through its own decode (the old one): a digest, no thumbnail."""
    data = encoded(photo(400, 300).convert("CMYK"), "JPEG", quality=90)
    drop, fact = judged(data)
    assert drop is None and fact.thumb is None and fact.digest == F.bytes_digest(data)


def test_a_jpeg_cut_short_with_its_end_marker_is_still_truncated_with_the_same_detail():
    """Pillow refuses such data, libjpeg (through OpenCV) fills it: the fallback keeps the old verdict."""
    full = encoded(photo(800, 600), "JPEG", quality=90)
    for cut in (0.35, 0.7, 0.95):
        data = full[: int(len(full) * cut)] + b"\xff\xd9"
        old = IP.legacy_pixel_drop(I.open_image(data), data, DEFAULT)
        new, thumb = IP.decode_checks(I.open_image(data), data, DEFAULT)
        assert (new.reason, new.detail) == (old.reason, old.detail) and thumb is None
        assert old.reason == "image:truncated"


def _compare_pixel_verdicts(images: list[tuple[str, bytes]]) -> dict[str, int]:
    """Old decode (OpenCV 1/8) against the one decode, image by image: same reason, same detail; and
    every thumbnail the filter carries equals image_dedup's own."""
    seen: dict[str, int] = {}
    for name, data in images:
        try:
            im = I.open_image(data, DEFAULT.max_pixels)
        except I.UnreadableImage:
            seen["unopenable"] = seen.get("unopenable", 0) + 1
            continue
        old = IP.legacy_pixel_drop(im, data, DEFAULT)
        new, thumb = IP.decode_checks(I.open_image(data, DEFAULT.max_pixels), data, DEFAULT)
        assert (new and (new.reason, new.detail)) == (old and (old.reason, old.detail)), name
        if thumb is not None:
            np.testing.assert_array_equal(thumb, F.thumbnail(data), err_msg=name)
        key = old.reason if old else "passed"
        seen[key] = seen.get(key, 0) + 1
    return seen


def test_pixel_verdicts_on_the_bench_corpus_match_the_decode_they_replace(bench_tar):
    seen = _compare_pixel_verdicts(tar_images(bench_tar))
    assert seen["passed"] > 100 and seen.get("image:blank", 0) >= 1, seen


def test_pixel_verdicts_on_the_demo_photos_match_the_decode_they_replace(demo_tars):
    seen = _compare_pixel_verdicts([x for p in sorted(demo_tars.glob("*.tar")) for x in tar_images(p)])
    assert seen["passed"] >= 10 and seen.get("image:blank", 0) >= 2, seen


# --- facts only for a later reader --------------------------------------------------------------------
def _verdicts(result) -> dict[str, tuple]:
    out = {r["key"]: ("kept", None, None) for r in result.kept.select(["key"]).to_pylist()}
    for r in result.dropped.select(["key", R.STATUS, R.REASON, R.DETAIL]).to_pylist():
        out[r["key"]] = (r[R.STATUS], r[R.REASON], r[R.DETAIL])
    return out


def _filter_both_ways(table: pa.Table) -> dict[str, int]:
    """image_filter in a run where a dedup stage reads image_facts and in one where none does: the same
    samples kept and rejected with the same reasons and details; facts carried in the first only."""
    with_facts = S.build("image_filter", {"preset": "default"},
                         S.StageContext(later_reads=frozenset({"images", F.FACTS_COLUMN}))).run(table)
    without = S.build("image_filter", {"preset": "default"}, S.StageContext(later_reads=frozenset({"text"}))).run(table)
    assert _verdicts(with_facts) == _verdicts(without)
    assert sum(f is not None for f in F.row_facts(with_facts.kept)) >= 0.9 * with_facts.kept.num_rows
    assert without.kept.column(F.FACTS_COLUMN).null_count == without.kept.num_rows
    assert without.kept.schema == with_facts.kept.schema
    counts: dict[str, int] = {}
    for status, reason, _ in _verdicts(without).values():
        counts[reason or status] = counts.get(reason or status, 0) + 1
    return counts


def test_verdicts_without_facts_equal_those_with_facts_on_the_bench_corpus(bench_tar):
    counts = _filter_both_ways(read_source(str(bench_tar), "webdataset", source="photos").kept)
    assert counts["kept"] > 100 and counts.get("image:blank", 0) >= 1, counts


def test_verdicts_without_facts_equal_those_with_facts_on_the_demo_photos(demo_tars):
    counts = _filter_both_ways(read_source(str(demo_tars / "*.tar"), "webdataset", source="photos").kept)
    assert counts["kept"] >= 10 and counts.get("image:blank", 0) >= 2, counts


def test_pixel_verdicts_without_a_thumbnail_are_the_one_decodes_image_by_image(bench_tar, demo_tars):
    """decode_checks both ways on every image that opens (truncated ones included): same reason and
    detail; no thumbnail without facts."""
    images = tar_images(bench_tar) + [x for p in sorted(demo_tars.glob("*.tar")) for x in tar_images(p)]
    reasons = set()
    for name, data in images:
        try:
            I.open_image(data, DEFAULT.max_pixels)
        except I.UnreadableImage:
            continue
        with_thumb, _ = IP.decode_checks(I.open_image(data, DEFAULT.max_pixels), data, DEFAULT, thumbnail=True)
        bare, thumb = IP.decode_checks(I.open_image(data, DEFAULT.max_pixels), data, DEFAULT, thumbnail=False)
        assert (bare and (bare.reason, bare.detail)) == (with_thumb and (with_thumb.reason, with_thumb.detail)), name
        assert thumb is None
        reasons.add(bare.reason if bare else "passed")
    assert {"passed", "image:blank", "image:truncated"} <= reasons, reasons


def test_a_run_carries_facts_only_when_a_later_stage_reads_them_and_the_choice_is_in_the_fingerprint(tmp_path, bench_tar):
    from pipelines.recipe import parse
    from pipelines.runner import Runner
    (tmp_path / "00000.tar").symlink_to(bench_tar)
    (tmp_path / "out").mkdir()

    def image_filter_of(stages: list[str]) -> tuple[bool, str]:
        recipe = parse({"name": "r", "seed": 0, "stages": [{"name": n} for n in stages],
                        "sources": [{"name": "p", "path": str(tmp_path / "*.tar"), "format": "webdataset"}]})
        member = next(m for m in Runner(recipe, tmp_path / "out", executor="inline")._members(recipe.plan())
                      if m.name == "image_filter")
        return member.stage.carries_facts, member.fingerprint

    alone, alone_fp = image_filter_of(["image_filter", "text_filter", "count_tokens"])
    exact, exact_fp = image_filter_of(["image_filter", "text_filter", "exact_dedup"])
    near, near_fp = image_filter_of(["image_filter", "image_dedup"])
    assert (alone, exact, near) == (False, True, True)
    assert alone_fp != exact_fp and exact_fp == near_fp   # the same image_filter output, the same fingerprint
    assert not S.build("text_filter", {}, S.StageContext()).output_variant()   # other stages: no variant
    assert S.build("image_filter", {}, S.StageContext()).carries_facts        # built alone: facts carried
    assert S.columns_read("no_such_stage") == ("*",)


# --- the carried column -------------------------------------------------------------------------------
def _decisions(result) -> dict[str, tuple]:
    cols = ["key", R.STATUS, R.REASON, R.DETAIL, "dup_group", "dup_group_size"]
    extra = [c for c in ("content_hash", "image_hash", "image_phash") if c in result.kept.column_names]
    out = {}
    for part in (result.kept, result.dropped):
        for r in part.select(cols + [c for c in extra if c in part.column_names]).to_pylist():
            out[r["key"]] = tuple(r.get(c) if not isinstance(r.get(c), list) else tuple(r[c]) for c in cols[1:] + extra)
    return out


def _dedup_both_ways(table: pa.Table) -> None:
    """exact_dedup then image_dedup on image_filter's output, with the carried facts and without them
    (the column dropped: every row read and decoded again): the same decisions and columns."""
    filtered = S.build("image_filter", {"preset": "default"}).run(table).kept
    assert F.FACTS_COLUMN in filtered.column_names
    usable = F.row_facts(filtered, need_phash=True)
    assert sum(u is not None for u in usable) >= 0.9 * filtered.num_rows
    results = []
    for t in (filtered, filtered.drop_columns([F.FACTS_COLUMN])):
        exact = S.build("exact_dedup", {"survivor_by": "resolution"}).run(t, batch_size=32)
        image = S.build("image_dedup", {"survivor_by": "resolution"}).run(exact.kept, batch_size=32)
        results.append((_decisions(exact), _decisions(image)))
    assert results[0] == results[1]
    assert any(v[1] == "dedup:near_image" for v in results[0][1].values())


def test_dedup_decisions_are_the_same_with_and_without_the_carried_facts_on_the_bench_corpus(bench_tar):
    _dedup_both_ways(read_source(str(bench_tar), "webdataset", source="photos").kept)


def test_dedup_decisions_are_the_same_with_and_without_the_carried_facts_on_the_demo(demo_tars):
    _dedup_both_ways(read_source(str(demo_tars / "*.tar"), "webdataset", source="photos").kept)


def test_facts_that_do_not_match_their_images_are_not_used(bench_tar):
    """A stage that swapped images between rows leaves facts that name other references: the dedup
    stages then read those rows themselves, and decide as if no facts had been carried."""
    filtered = S.build("image_filter", {"preset": "default"}).run(
        read_source(str(bench_tar), "webdataset", source="photos").kept).kept
    images = filtered.column("images").to_pylist()
    images[0], images[1] = images[1], images[0]
    swapped = filtered.set_column(filtered.schema.get_field_index("images"), "images",
                                  pa.array(images, filtered.schema.field("images").type))
    usable = F.row_facts(swapped, need_phash=True)
    assert usable[0] is None and usable[1] is None and usable[2] is not None
    runs = [S.build("image_dedup", {"survivor_by": "resolution"}).run(t, batch_size=32)
            for t in (swapped, swapped.drop_columns([F.FACTS_COLUMN]))]
    assert _decisions(runs[0]) == _decisions(runs[1])


def test_header_only_images_carry_no_facts_and_dedup_reads_them(bench_tar):
    table = read_source(str(bench_tar), "webdataset", source="photos").kept
    filtered = S.build("image_filter", {"preset": "default", "blank_max_std": 0, "min_jpeg_quality": 0}
                       ).run(table).kept
    assert all(f is None for f in F.row_facts(filtered))
    image = S.build("image_dedup", {"survivor_by": "resolution"}).run(filtered, batch_size=32)
    assert image.kept.column("image_hash").null_count == 0


def test_phash_and_std_do_not_depend_on_the_batch_they_are_computed_in():
    rng = np.random.default_rng(0)
    thumbs = rng.integers(0, 256, (50, 32, 32)).astype(np.float32)
    whole_h, whole_s = F.phash_batch(thumbs), F.thumb_std(thumbs)
    for i in range(50):
        assert F.phash_batch(thumbs[i:i + 1])[0] == whole_h[i]
        assert F.thumb_std(thumbs[i:i + 1])[0] == whole_s[i]


# --- image_dedup's hash matrix ------------------------------------------------------------------------
_ROWS = st.lists(st.one_of(st.none(), st.lists(st.integers(0, 2**64 - 1), max_size=4)), max_size=30)


@given(chunks=st.lists(_ROWS, min_size=1, max_size=3), offset=st.integers(0, 3))
def test_phash_matrix_equals_the_row_by_row_layout(chunks, offset):
    """The vectorised matrix (list lengths + flattened values) against the obvious loop, on chunked and
    sliced Arrow columns with null and empty rows."""
    from curate.dedup.image_stage import phash_matrix
    typ = pa.list_(pa.uint64())
    arrays = [pa.array(rows, typ) for rows in chunks]
    arrays[0] = arrays[0].slice(min(offset, len(arrays[0])))
    column = pa.chunked_array(arrays, typ)
    rows = column.to_pylist()
    mat, counts, valid = phash_matrix(column)
    width = max([len(r) for r in rows if r] + [1])
    expected = np.zeros((len(rows), width), dtype=np.uint64)
    for i, r in enumerate(rows):
        expected[i, :len(r or [])] = r or []
    np.testing.assert_array_equal(mat, expected)
    np.testing.assert_array_equal(counts, [len(r or []) for r in rows])
    np.testing.assert_array_equal(valid, [bool(r) for r in rows])
