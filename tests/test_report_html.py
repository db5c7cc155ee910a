"""report.html: self-contained, small, every plot drawn — checked in a real headless Chromium."""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.recipe import parse
from pipelines.runner import run
from tests.corpus import caption_corpus, jpeg, write_tar

EXPECTED_PLOTS = {"funnel", "mixture-category", "hist-num_tokens", "hist-text_tokens", "pack-fill",
                  "balance-attention", "balance-ratio"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    caption_corpus(root / "photos", n_files=2, per_file=12)
    write_tar(root / "photos" / "part-00009.tar",
              [(f"tiny{i}.jpg", jpeg(24, 24, seed=i)) for i in range(3)]
              + [(f"tiny{i}.txt", b"a small red square on a plain background") for i in range(3)])
    pq.write_table(pa.table({"uid": [f"t{i}" for i in range(6)],
                             "text": [f"lesson {i}: " + "words " * (20 + 7 * i) for i in range(6)]}),
                   root / "text.parquet")
    recipe = parse({
        "name": "report_test", "seed": 5,
        "sources": [{"name": "photos", "path": str(root / "photos" / "*.tar"), "format": "webdataset",
                     "category": "caption"},
                    {"name": "text", "path": str(root / "text.parquet"), "format": "parquet", "category": "text",
                     "key_column": "uid"}],
        "stages": [{"name": "image_filter", "settings": {"preset": "default"}},
                   {"name": "exact_dedup"},   # nested report numbers (the "other stage numbers" table)
                   {"name": "count_tokens"},
                   {"name": "pack", "settings": {"context_length": 1024}},
                   {"name": "shards", "settings": {"dp_size": 2, "micro_batches": 1}}],
        "mixture": {"ratios": {"caption": 0.6, "text": 0.4}, "total": 30, "max_repeat": 3}})
    result = run(recipe, out=root / "out", executor="inline", progress=False)
    assert result.report["stages"][0]["rejected"] or result.report["stages"][1]["rejected"]
    return root / "out"


def _page(run_dir: Path) -> str:
    return (run_dir / "report.html").read_text(encoding="utf-8")


def test_page_is_self_contained_and_small(run_dir: Path):
    page = _page(run_dir)
    assert len(page.encode()) < 1_000_000
    # nothing fetched: the only URL is the SVG namespace, which browsers never load
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page and "url(http" not in page
    assert set(re.findall(r'data-plot="([^"]+)"', page)) >= EXPECTED_PLOTS


def test_header_and_times_come_from_run_json(run_dir: Path):
    text = re.sub(r"<[^>]+>", " ", _page(run_dir))
    assert "executor inline" in text and "executor None" not in text
    seconds = re.findall(r"<td>count_tokens</td>(?:<td>[^<]*</td>){5}<td>([^<]*)</td>", _page(run_dir))
    assert seconds and float(seconds[0]) >= 0
    assert "fused into exact_dedup" in text                 # image_filter ran inside exact_dedup's pass
    assert "06_shards" not in text and "07_shards" not in text and "kept after stage shards" in text
    assert "attention cost" in text and '"max"' not in _page(run_dir)


def test_mixture_and_funnel_numbers_come_from_the_run(run_dir: Path):
    page = _page(run_dir)
    assert "repeats)" in page                      # the mixture's up-sampled rows are shown in the funnel
    assert "image_filter" in page and "mixture:downsampled" in page


def test_rejected_samples_show_small_thumbnails(run_dir: Path):
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', _page(run_dir))
    assert uris
    for u in uris:
        im = Image.open(io.BytesIO(base64.b64decode(u)))
        assert max(im.size) <= 96


def test_notebook_repr_is_the_report_without_scripts(run_dir: Path):
    from pipelines.runner import RunResult
    import json
    fragment = RunResult(run_dir, json.loads((run_dir / "report.json").read_text()))._repr_html_()
    assert fragment.startswith('<div class="mmc-report">') and "<script" not in fragment
    assert 'data-plot="funnel"' in fragment


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                "--disable-dev-shm-usage"]


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (make install installs it with apt-get)")
def test_chromium_renders_every_plot_without_errors(run_dir: Path, tmp_path: Path):
    url = (run_dir / "report.html").resolve().as_uri()
    dom = subprocess.run([_chromium(), *CHROME_FLAGS, "--virtual-time-budget=3000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    n = int(attrs["data-plots"])
    assert n >= len(EXPECTED_PLOTS)
    assert int(attrs["data-plots-rendered"]) == n          # every SVG laid out with a non-empty box
    assert attrs["data-errors"] == "" and attrs["data-broken-images"] == "0"
    # every field filled or gone: no None / null / NaN / raw JSON in the text a person reads, no empty cell
    assert attrs["data-raw-text"] == "", attrs["data-raw-text"]
    assert int(attrs["data-cells"]) > 50 and attrs["data-empty-cells"] == "0"
    shot = tmp_path / "report.png"
    subprocess.run([_chromium(), *CHROME_FLAGS, "--window-size=1100,3000", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=True)
    im = Image.open(shot).convert("L")
    assert im.size == (1100, 3000)
    lo, hi = im.getextrema()
    assert hi - lo > 100                                    # not a blank page


def test_pack_fill_plot_reads_whole_packs_of_any_partition_without_holding_every_row(tmp_path, monkeypatch):
    from curate.base import records as R
    from pipelines.present import report_html as H
    stage = tmp_path / "stages" / "05_pack"
    (stage / "data").mkdir(parents=True)
    # two partitions' packs (ids part << 32 | n), rows of a pack spread over the manifest
    ids = [(part << 32) | n for part in (0, 3) for n in range(50) for _ in range(4)]
    pq.write_table(pa.table({"pack_id": pa.array(ids[::-1], pa.int64()), "num_tokens": [25] * len(ids),
                             R.STATUS: [R.KEPT] * len(ids), R.ORDINAL: list(range(len(ids)))}),
                   stage / "data" / "part-00000.parquet")
    fills = H._pack_fills(stage, kept_rows=len(ids), L=100)
    assert sorted(fills.tolist()) == [1.0] * 100            # every pack whole: 4 x 25 tokens
    monkeypatch.setattr(H, "PLOT_ROWS", 100)                 # past the plot budget: a stride of pack ids
    sampled = H._pack_fills(stage, kept_rows=len(ids), L=100)
    assert 0 < sampled.size < 100 and set(sampled.tolist()) == {1.0}   # fewer packs, still whole


def test_lengths_section_reads_texts_only_without_token_counts(tmp_path):
    """With num_tokens the section plots tokens and never reads the texts; without, character
    lengths per category."""
    from curate.base import records as R
    from pipelines.present import report_html as H
    stage = tmp_path / "stages" / "01_text_filter"
    (stage / "data").mkdir(parents=True)
    texts = ["ab", "héllo", None, "xyz"]
    pq.write_table(pa.table({"category": ["a", "a", "b", "b"], "text": texts, R.STATUS: [R.KEPT] * 4,
                             R.ORDINAL: list(range(4))}), stage / "data" / "part-00000.parquet")
    html = H.tokens_section([stage])
    assert "text length (characters) per category" in html
    counted = tmp_path / "stages" / "02_count_tokens"
    (counted / "data").mkdir(parents=True)
    pq.write_table(pa.table({"category": ["a", "b"], "num_tokens": [3, 4], R.STATUS: [R.KEPT] * 2,
                             R.ORDINAL: [0, 1]}), counted / "data" / "part-00000.parquet")
    assert "tokens per sample (text and images), per category" in H.tokens_section([stage, counted])
    assert "text length" not in H.tokens_section([stage, counted])
