"""Readers and ingest on real bytes, including the bad-input corpus of the foundation issue."""
from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.media import images as I
from curate.base import records as R
from curate.readers.read import SourceSpec, read_file, read_source
from pipelines.recipe import parse
from pipelines.runner import run
from tests.corpus import jpeg, png, write_tar


def all_rows(read) -> list[dict]:
    """Kept and dropped rows of a read_source result."""
    return read.kept.to_pylist() + read.dropped.to_pylist()


def build_bad_corpus(root: Path) -> dict[str, tuple[str, str]]:
    """Every hard case of the foundation issue, with the status and reason each must get."""
    good = jpeg(320, 240, seed=1)
    members = [
        ("good-1.jpg", good), ("good-1.txt", b"a good caption"),
        ("zero.jpg", b""), ("zero.txt", b"zero byte image"),
        ("trunc.jpg", jpeg(640, 480, seed=2)[:3000]), ("trunc.txt", b"truncated jpeg"),
        ("html.jpg", b"<html><body>404 not found</body></html>"), ("html.txt", b"an html page saved as jpg"),
        ("nocap.jpg", good),
        ("latin.jpg", good), ("latin.txt", "d\xe9j\xe0 vu".encode("latin-1")),
        ("../x.jpg", good),
        ("nan.jpg", good), ("nan.txt", b"nan metadata"), ("nan.json", b'{"score": NaN}'),
        ("good-2.png", png(200, 100, seed=3)), ("good-2.txt", "一张图片 with unicode".encode()),
        ("dup.jpg", good), ("dup.txt", b"first of two"),
    ]
    # A decompression bomb: a valid PNG header claiming 30000 x 30000 pixels.
    from demo_data.sample import bomb_png
    members += [("bomb.png", bomb_png(30000, 30000)), ("bomb.txt", b"bomb")]
    write_tar(root / "part-00000.tar", members)
    write_tar(root / "part-00001.tar", [("dup.jpg", good), ("dup.txt", b"second of two"),
                                        ("good-3.jpg", jpeg(500, 300, seed=4)), ("good-3.txt", b"third good")])
    full = root / "cut.full"
    write_tar(full, [("good-4.jpg", jpeg(300, 300, seed=5)), ("good-4.txt", b"before the cut"),
                     ("cutoff.jpg", jpeg(800, 600, seed=6)), ("cutoff.txt", b"never complete")])
    data = full.read_bytes()
    full.unlink()
    (root / "part-00002.tar").write_bytes(data[: data.rfind(b"\xff\xd8\xff") + 1500])
    return {
        "zero": ("quarantined", "image:empty_image"),
        "trunc": ("quarantined", "image:truncated_image"),
        "html": ("quarantined", "image:not_an_image"),
        "bomb": ("quarantined", "image:decompression_bomb"),
        "nocap": ("rejected", "missing_text"),
        "latin": ("rejected", "caption_not_utf8"),
        "../x.jpg": ("rejected", "unsafe_member_name"),
        "nan": ("rejected", "invalid_metadata"),
        "dup": ("rejected", "duplicate_key"),
        "cutoff": ("quarantined", "truncated_tar"),
    }


def test_bad_input_corpus_runs_to_completion_with_named_reasons(tmp_path):
    data = tmp_path / "corpus"
    data.mkdir()
    expected = build_bad_corpus(data)
    recipe = parse({"name": "bad", "seed": 0, "stages": [],
                    "sources": [{"name": "web", "path": str(data / "*.tar"), "format": "webdataset"}]})
    out = tmp_path / "out"
    result = run(recipe, out=out, executor="inline", progress=False)
    ingest = result.report["stages"][0]
    rejected, quarantined = ingest["rejected"], ingest["quarantined"]
    # in = kept + rejected[reason] + quarantined[reason]
    assert ingest["in"] == ingest["out"] + sum(rejected.values()) + sum(quarantined.values())
    rejects = pq.read_table(out / "stages" / "00_ingest" / "rejects.parquet").to_pylist()
    by_key = {}
    for r in rejects:
        by_key.setdefault(r["key"].split("/", 1)[1], []).append((r["_status"], r["_reason"]))
    for key, want in expected.items():
        assert want in by_key.get(key, []), f"{key}: expected {want}, got {by_key.get(key)}"
    assert len(rejects) == len(expected)
    kept = result.kept(columns=["key", "images", "text"]).to_pylist()
    kept_keys = sorted(r["key"] for r in kept)
    assert kept_keys == ["web/dup", "web/good-1", "web/good-2", "web/good-3", "web/good-4"]
    dims = {r["key"]: (r["images"][0]["width"], r["images"][0]["height"]) for r in kept}
    assert dims["web/good-1"] == (320, 240) and dims["web/good-2"] == (200, 100) and dims["web/good-3"] == (500, 300)
    assert next(r["text"] for r in kept if r["key"] == "web/dup") == "first of two"
    # nothing escaped the output directory: no file named x.jpg anywhere above it
    assert not (tmp_path / "x.jpg").exists() and not (out / "x.jpg").exists()
    assert [p for p in tmp_path.rglob("x.jpg")] == []


def test_image_refs_point_at_the_original_bytes(tmp_path):
    img = jpeg(123, 77, seed=9)
    write_tar(tmp_path / "a.tar", [("k1.jpg", img), ("k1.txt", b"caption"), ("k2.png", png(10, 20)),
                                   ("k2.txt", b"c2")])
    table = read_source(str(tmp_path / "*.tar"), format="webdataset", source="s")
    refs = {r["key"]: r["images"][0] for r in all_rows(table)}
    assert refs["s/k1"]["width"] == 123 and refs["s/k1"]["height"] == 77 and refs["s/k1"]["format"] == "JPEG"
    assert I.read_image_bytes(refs["s/k1"]) == img
    assert refs["s/k2"]["format"] == "PNG"


def test_fsspec_urls_are_read_like_local_paths(tmp_path):
    """memory:// stands in for s3:// — the same fsspec code path, without a network."""
    img = jpeg(64, 48, seed=3)
    local = write_tar(tmp_path / "m.tar", [("a.jpg", img), ("a.txt", b"in memory")])
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/shards/m-000.tar", local.read_bytes())
    table = read_source("memory://bucket/shards/*.tar", format="webdataset", source="mem")
    row = all_rows(table)[0]
    assert row["key"] == "mem/a" and row["text"] == "in memory"
    assert row["images"][0]["uri"].startswith("memory://")
    assert I.read_image_bytes(row["images"][0]) == img


def test_llava_records_normalise_roles_and_placeholders(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(jpeg(40, 30))
    recs = [
        {"id": "ok", "image": "img/a.jpg", "conversations": [{"from": "human", "value": "What is it?"},
                                                             {"from": "gpt", "value": "A gradient."}]},
        {"id": "two", "image": ["img/a.jpg", "img/a.jpg"],
         "conversations": [{"from": "human", "value": "<image> vs <image>"}, {"from": "gpt", "value": "same"}]},
        {"id": "bad", "image": "img/a.jpg",
         "conversations": [{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "x"}]},
        {"id": "text-only", "conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ]
    path = tmp_path / "conv.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n{not json}\n")
    rows = {r["key"]: r for r in all_rows(read_source(str(path), format="llava", source="c", category="vqa"))}
    ok = rows["c/ok"]
    assert [t["role"] for t in ok["conversations"]] == ["user", "assistant"]
    assert ok["conversations"][0]["content"].startswith("<image>\n")
    assert ok["images"][0]["width"] == 40
    assert len(rows["c/two"]["images"]) == 2
    assert rows["c/bad"][R.REASON] == "image_placeholder_mismatch"
    assert rows["c/text-only"]["images"] == [] and rows["c/text-only"][R.STATUS] == R.KEPT
    bad_line = [r for k, r in rows.items() if r[R.REASON] == "invalid_json_line"]
    assert len(bad_line) == 1


def test_parquet_with_image_bytes_and_paths(tmp_path):
    img = png(30, 20, seed=5)
    (tmp_path / "p.png").write_bytes(img)
    table = pa.table({"key": ["a", "b", "c"], "text": ["bytes", "path", None],
                      "image": [{"bytes": img, "path": None}, {"bytes": None, "path": "p.png"},
                                {"bytes": None, "path": None}]})
    pq.write_table(table, tmp_path / "d.parquet")
    rows = {r["key"]: r for r in all_rows(read_source(str(tmp_path / "d.parquet"), format="parquet", source="pq"))}
    assert I.read_image_bytes(rows["pq/a"]["images"][0]) == img
    assert I.read_image_bytes(rows["pq/b"]["images"][0]) == img
    assert rows["pq/c"][R.REASON] == "missing_text"


def test_unreadable_container_is_quarantined_not_raised(tmp_path):
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file at all" * 3)
    spec = SourceSpec(name="j", path=str(tmp_path / "junk.tar"), format="webdataset")
    t = read_file(spec, str(tmp_path / "junk.tar"), 0, 0).to_pylist()
    assert len(t) == 1 and t[0][R.STATUS] == R.QUARANTINED


@pytest.mark.parametrize("data,reason", [(b"", "empty_image"), (b"GIF89a-garbage", "not_an_image"),
                                         (b"<!DOCTYPE html><p>x", "not_an_image")])
def test_probe_reasons(data, reason):
    with pytest.raises(I.UnreadableImage) as err:
        I.probe(data)
    assert err.value.reason == reason


# --- sources: brace ranges, sidecars, key qualification, notebook accounting ----------------------
from hypothesis import given, strategies as st  # noqa: E402

from curate.readers.sources import expand_braces, list_files  # noqa: E402


@given(lo=st.integers(0, 300), n=st.integers(0, 40), width=st.integers(1, 6))
def test_brace_range_expands_like_bash(lo, n, width):
    hi = lo + n
    pattern = "s/{" + str(lo).zfill(width) + ".." + str(hi).zfill(width) + "}.tar"
    names = expand_braces(pattern)
    pad = width if str(lo).zfill(width).startswith("0") else 0
    assert len(names) == n + 1
    assert names[0] == f"s/{str(lo).zfill(pad)}.tar" and names[-1] == f"s/{str(hi).zfill(pad)}.tar"


def test_brace_lists_and_literals():
    assert expand_braces("a{x,y}b{1..2}") == ["axb1", "axb2", "ayb1", "ayb2"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert expand_braces("lit{eral}.tar") == ["lit{eral}.tar"]
    with pytest.raises(ValueError, match="more than"):
        expand_braces("{0..99999999}")


def test_img2dataset_layout_ranges_sidecars_and_key_prefix(tmp_path):
    """Two img2dataset runs with the same shard and key names, globbed into one source."""
    for run_name in ("run1", "run2"):
        d = tmp_path / run_name
        d.mkdir()
        for shard in range(3):
            write_tar(d / f"{shard:05d}.tar", [("000000000.jpg", jpeg(64, 48, seed=shard)),
                                               ("000000000.txt", f"{run_name} {shard}".encode())])
            (d / f"{shard:05d}.parquet").write_bytes(b"sidecar")
            (d / f"{shard:05d}_stats.json").write_text("{}")
    assert [Path(p).name for p in list_files(str(tmp_path / "run1" / "{00000..00001}.tar"))] == \
        ["00000.tar", "00001.tar"]
    assert len(list_files(str(tmp_path / "run*" / "*"), "webdataset")) == 6      # sidecars skipped
    plain = parse({"name": "a", "seed": 0, "stages": [], "sources": [
        {"name": "w", "path": str(tmp_path / "run*" / "*"), "format": "webdataset"}]})
    r = run(plain, out=tmp_path / "o1", executor="inline", progress=False).report["stages"][0]
    assert r["out"] == 1 and r["rejected"] == {"duplicate_key": 5}
    qualified = parse({"name": "b", "seed": 0, "stages": [], "sources": [
        {"name": "w", "path": str(tmp_path / "run{1,2}" / "{00000..00002}.tar"), "format": "webdataset",
         "key_prefix": "shard"}]})
    r = run(qualified, out=tmp_path / "o2", executor="inline", progress=False).report["stages"][0]
    assert r["out"] == 6 and r["rejected"] == {}
    keys = run(qualified, out=tmp_path / "o2", executor="inline", progress=False).kept(0, ["key"])
    assert "w/run2/00001/000000000" in keys.column("key").to_pylist()


def test_read_source_accounts_for_every_row_through_a_stage(tmp_path):
    from curate.base import build
    write_tar(tmp_path / "a.tar", [("k1.jpg", jpeg(300, 200, seed=1)), ("k1.txt", b"a long enough caption here"),
                                   ("k2.jpg", b""), ("k2.txt", b"empty image"),
                                   ("k3.jpg", jpeg(300, 200, seed=2)), ("k3.txt", b"x"),
                                   ("k4.jpg", jpeg(300, 200, seed=3))])
    read = read_source(str(tmp_path / "*.tar"), format="webdataset", source="s")
    assert read.num_rows == 4 and read.dropped.num_rows == 2    # k2 quarantined, k4 has no text
    out = build("text_filter", {"preset": "default"}).run(read.kept)
    assert read.dropped.num_rows + out.kept.num_rows + out.dropped.num_rows == 4


def test_file_tables_are_streamed_in_bounded_batches(tmp_path):
    from curate.readers.read import iter_file_tables
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "conversations": [{"from": "human", "value": "q"},
                                                                   {"from": "gpt", "value": "a"}]})
                              for i in range(10)) + "\n")
    spec = SourceSpec(name="c", path=str(path), format="llava")
    sizes = [t.num_rows for t in iter_file_tables(spec, str(path), 0, 0, rows_per_table=4)]
    assert sizes == [4, 4, 2]
    assert read_file(spec, str(path), 0, 0).column("key").to_pylist() == [f"c/{i}" for i in range(10)]


def test_parquet_parts_read_the_same_rows_as_the_whole_file(tmp_path):
    from curate.readers.parquet import plan_parts, read_parquet
    n = 1000
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(n)], "text": [f"caption {i}" for i in range(n)]}),
                   tmp_path / "t.parquet", row_group_size=64)
    spec = SourceSpec(name="t", path=str(tmp_path / "t.parquet"), format="parquet")
    uri = str(tmp_path / "t.parquet")
    parts = plan_parts(uri, rows_per_part=150)
    assert len(parts) > 3 and parts[0][0] == 0 and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    whole = list(read_parquet(spec, uri, 0, 0))
    pieces = [row for part in parts for row in read_parquet(spec, uri, 0, 0, row_groups=part)]
    assert pieces == whole and len(whole) == n
