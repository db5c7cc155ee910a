"""The hostile-input corpus: every input of issue 17 (and issue 9's source traps) in one run.

Each input either completes with a named per-row reason or is refused with a clear message; every
sample is accounted for at every stage; no byte of a file outside the sources' roots reaches any
file of the output (shards included), and the 127.0.0.1 server is never contacted unless a source
allows its host.
"""
from __future__ import annotations

import codecs
import datetime as dt
import decimal
import io
import json
import os
import signal
import tarfile
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curate.base import records as R
from curate.readers.read import SourceSpec, read_file
from pipelines.recipe import parse
from pipelines.runner import run
from tests.corpus import jpeg, png, write_tar


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (a FIFO opened for reading blocks forever without O_NONBLOCK)."""
    def boom(*_):
        raise TimeoutError(f"took longer than {seconds}s: something blocked")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@contextmanager
def image_server(payload: bytes, redirect_to: str | None = None):
    """A real HTTP server on 127.0.0.1 that counts requests; stops by itself when the block ends."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 — http.server's name
            hits.append(self.path)
            if redirect_to and self.path.startswith("/redirect"):
                self.send_response(302)
                self.send_header("Location", redirect_to)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 1
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def tar_with_special_members(path: Path, good: bytes) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        def add(name: str, data: bytes = b"", **kw) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            for k, v in kw.items():
                setattr(info, k, v)
            tar.addfile(info, io.BytesIO(data) if data else None)
        add("good.jpg", good)
        add("good.txt", b"a fine caption")
        add("link.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        add("link.txt", b"symlink image")
        add("hard.jpg", type=tarfile.LNKTYPE, linkname="good.jpg")
        add("hard.txt", b"hardlink image")
        add("dev.jpg", type=tarfile.CHRTYPE, devmajor=1, devminor=5)
        add("fifo.jpg", type=tarfile.FIFOTYPE)
        add("inf.jpg", good)
        add("inf.txt", b"overflowing metadata")
        add("inf.json", b'{"score": 1e999999}')
        add("deep.jpg", good)
        add("deep.txt", b"deep metadata")
        add("deep.json", b"[" * 5000 + b"]" * 5000)


def conv(i: str, image=None) -> dict:
    rec = {"id": i, "conversations": [{"from": "human", "value": "What is shown?"},
                                      {"from": "gpt", "value": "Something."}]}
    if image is not None:
        rec["image"] = image
    return rec


def build_corpus(root: Path, port: int) -> tuple[dict, bytes]:
    """The corpus, and {source/key: (status, reason)} for every sample that must not be kept."""
    secret = png(64, 64, seed=777)
    (root / "secret").mkdir(parents=True)
    secret_path = root / "secret" / "secret.png"
    secret_path.write_bytes(secret)
    src = root / "src"
    (src / "img").mkdir(parents=True)
    good = jpeg(320, 240, seed=1)
    (src / "img" / "ok.jpg").write_bytes(good)
    os.mkfifo(src / "img" / "fifo.jpg")
    os.symlink("/dev/zero", src / "img" / "zero.jpg")
    os.symlink(secret_path, src / "img" / "escape.jpg")
    (src / "img" / "big.png").write_bytes(png(400, 400, seed=3))   # ~480 kB > max_image_bytes below
    records = [conv("ok", "img/ok.jpg"), conv("dotdot", "../secret/secret.png"), conv("abs", str(secret_path)),
               conv("fileurl", f"file://{secret_path}"), conv("http", f"http://127.0.0.1:{port}/secret.png"),
               conv("gopher", "gopher://example.org/x.png"), conv("intimg", 7), conv("listint", [1]),
               conv("fifo", "img/fifo.jpg"), conv("zero", "img/zero.jpg"), conv("escape", "img/escape.jpg"),
               conv("big", "img/big.png"), conv("text-only")]
    (src / "conv.json").write_bytes(codecs.BOM_UTF8 + json.dumps(records, indent=2).encode())
    (src / "lines.jsonl").write_text("\n".join([
        json.dumps(conv("fine")), '{"id": "inf", "x": 1e999999, "conversations": []}',
        '{"id": "deep", "x": ' + "[" * 5000 + "]" * 5000 + "}", '{"id": "nan", "x": NaN}']) + "\n")
    (src / "pq").mkdir()
    pq.write_table(pa.table({
        "key": ["meta"], "text": ["typed metadata"], "image": [good],
        "ts": pa.array([dt.datetime(2024, 5, 1, 12, 30)], pa.timestamp("us")),
        "dec": pa.array([decimal.Decimal("12.345")], pa.decimal128(10, 3)),
        "day": pa.array([dt.date(2024, 5, 1)], pa.date32())}), src / "pq" / "a-types.parquet")
    pq.write_table(pa.table({"key": ["listimg"], "text": ["two images in a list"],
                             "image": pa.array([[good, good]], pa.list_(pa.binary()))}), src / "pq" / "b-list.parquet")
    pq.write_table(pa.table({"key": ["intimg"], "text": ["an int image"], "image": pa.array([5], pa.int64())}),
                   src / "pq" / "c-int.parquet")
    pq.write_table(pa.table({"key": ["escape"], "text": ["path escape"], "image": ["../secret/secret.png"]}),
                   src / "pq" / "d-escape.parquet")
    (src / "wds").mkdir()
    tar_with_special_members(src / "wds" / "00000.tar", good)
    (src / "wds" / "00000.parquet").write_bytes(b"img2dataset sidecar")
    (src / "wds" / "00000_stats.json").write_text("{}")
    expected = {
        "ll/dotdot": "image:outside_root", "ll/abs": "image:outside_root", "ll/fileurl": "image:outside_root",
        "ll/http": "image:remote_not_allowed", "ll/gopher": "image:unsupported_protocol",
        "ll/intimg": "image:invalid_reference", "ll/listint": "image:invalid_reference",
        "ll/fifo": "image:not_regular_file", "ll/zero": "image:outside_root", "ll/escape": "image:outside_root",
        "ll/big": "image:too_large",
        # an unparseable line has no id: it is named by file and line number
        "jl/0-2": "invalid_json_line", "jl/0-3": "invalid_json_line", "jl/0-4": "invalid_json_line",
        "pq/listimg": "image:unsupported_value", "pq/intimg": "image:unsupported_value",
        "pq/escape": "image:outside_root",
        "wds/link": "unsupported_member_type", "wds/hard": "unsupported_member_type",
        "wds/dev": "unsupported_member_type", "wds/fifo": "unsupported_member_type",
        "wds/inf": "invalid_metadata", "wds/deep": "invalid_metadata",
    }
    return expected, secret


def hostile_recipe(src: Path) -> object:
    return parse({"name": "hostile", "seed": 3, "sources": [
        {"name": "ll", "path": str(src / "conv.json"), "format": "llava", "max_image_bytes": 200_000},
        {"name": "jl", "path": str(src / "lines.jsonl"), "format": "llava"},
        {"name": "pq", "path": str(src / "pq" / "*.parquet"), "format": "parquet", "image_root": str(src)},
        {"name": "wds", "path": str(src / "wds" / "*"), "format": "webdataset"}],
        "stages": [{"name": "count_tokens"}, {"name": "pack", "settings": {"context_length": 4096}},
                   {"name": "shards", "settings": {"dp_size": 1, "micro_batches": 1}}]})


def test_hostile_corpus_completes_accounts_for_every_sample_and_leaks_nothing(tmp_path):
    with image_server(b"never served") as (port, hits), deadline(180):
        expected, secret = build_corpus(tmp_path, port)
        out = tmp_path / "out"
        result = run(hostile_recipe(tmp_path / "src"), out=out, executor="inline", progress=False)
    assert hits == [], "a record made the curation machine fetch a URL no source allowed"
    for entry in result.report["stages"]:
        assert entry["in"] == entry["out"] + sum(entry["rejected"].values()) + sum(entry["quarantined"].values())
    ingest = result.report["stages"][0]
    assert ingest["in"] == 13 + 4 + 4 + 7     # every record/sample of every file, sidecars skipped
    rejects = pq.read_table(out / "stages" / "00_ingest" / "rejects.parquet").to_pylist()
    got = {r["key"]: r[R.REASON] for r in rejects}
    for key, reason in expected.items():
        assert got.get(key) == reason, f"{key}: expected {reason}, got {got.get(key)}"
    assert set(got) == set(expected)
    kept = set(result.kept(0, ["key"]).column("key").to_pylist())
    assert kept == {"ll/ok", "ll/text-only", "jl/fine", "pq/meta", "wds/good"}
    meta = json.loads(result.kept(0, ["key", "meta"]).filter(
        pa.compute.equal(result.kept(0, ["key"]).column("key"), "pq/meta")).column("meta")[0].as_py())
    assert meta == {"ts": "2024-05-01T12:30:00", "dec": "12.345", "day": "2024-05-01"}
    probe = secret[200:264]
    leaked = [p for p in out.rglob("*") if p.is_file() and probe in p.read_bytes()]
    assert leaked == [], f"bytes from outside the source roots in {leaked}"
    assert list((out / "shards").rglob("*.tar")), "the good samples must still reach the shards"


def test_remote_images_are_fetched_only_from_allowed_hosts_and_redirects_are_checked(tmp_path):
    img = jpeg(100, 80, seed=4)
    with image_server(img, redirect_to="http://169.254.169.254/latest/meta-data") as (port, hits), deadline(60):
        spec = SourceSpec(name="r", path="x", format="llava", allowed_hosts=("127.0.0.1",), fetch_timeout_s=5)
        (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in [
            conv("fetched", f"http://127.0.0.1:{port}/a.jpg"), conv("bounced", f"http://127.0.0.1:{port}/redirect"),
            conv("other", "http://localhost:1/a.jpg")]) + "\n")
        rows = {r["key"]: r for r in read_file(spec, str(tmp_path / "r.jsonl"), 0, 0).to_pylist()}
    assert rows["r/fetched"][R.STATUS] == R.KEPT and rows["r/fetched"]["images"][0]["width"] == 100
    assert rows["r/bounced"][R.REASON] == "image:remote_not_allowed"
    assert rows["r/other"][R.REASON] == "image:remote_not_allowed"
    assert hits == ["/a.jpg", "/redirect"]


def test_special_source_files_are_never_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.tar")
    with deadline(20):
        with pytest.raises(ValueError, match=r"sources\[0\]\.path"):
            run(parse({"name": "f", "seed": 0, "stages": [], "sources": [
                {"name": "p", "path": str(tmp_path / "pipe.tar"), "format": "webdataset"}]}),
                out=tmp_path / "out", executor="inline", progress=False)
        with pytest.raises(ValueError, match=r"sources\[0\]\.path"):
            run(parse({"name": "z", "seed": 0, "stages": [], "sources": [
                {"name": "z", "path": "/dev/zero", "format": "llava"}]}),
                out=tmp_path / "out2", executor="inline", progress=False)


# --- hostile sizes (issue 26, item 6) ------------------------------------------------------------
GIANT_CLAIM = 2 << 30        # what the forged tar header says the member holds
HUGE_CAPTION = 50 << 20      # one caption of 50 MB
MANY_IMAGES = 5_000          # image references in one record
# The bound: ingest holds one record (a JSONL line <= json_reader.MAX_RECORD_BYTES) or one tar member
# (<= max_image_bytes) per reader at a time, plus its decoded copy; a rejected record carries no text
# on, so count_tokens never sees the 50 MB. Peak RSS over a run of the same recipe on the good samples
# alone stays under 6x the largest record.
RSS_BOUND_OVER_BASELINE = 6 * HUGE_CAPTION


def sparse_tar_with_giant_member(path: Path, good: bytes) -> None:
    """A tar whose first member's header claims GIANT_CLAIM bytes, held as a sparse hole (nothing on
    disk), then one good sample: the reader must skip the claim without reading it."""
    giant = tarfile.TarInfo("giant.txt")
    giant.size, giant.mtime = GIANT_CLAIM, 0
    with open(path, "wb") as fh:
        fh.write(giant.tobuf(format=tarfile.USTAR_FORMAT))
        fh.seek(GIANT_CLAIM, os.SEEK_CUR)          # a hole: the claimed bytes are zeros, never written
        for name, data in [("giant.jpg", good), ("after.jpg", good), ("after.txt", b"after the giant")]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            fh.write(info.tobuf(format=tarfile.USTAR_FORMAT))
            fh.write(data + b"\0" * (-len(data) % 512))
        fh.write(b"\0" * 1024)


def hostile_sizes_corpus(src: Path, hostile: bool) -> None:
    good = jpeg(64, 48, seed=5)
    (src / "img").mkdir(parents=True)
    (src / "img" / "ok.jpg").write_bytes(good)
    many = conv("many", ["img/ok.jpg"] * MANY_IMAGES)
    many["conversations"][0]["value"] = "<image>" * MANY_IMAGES + " what are these?"
    huge = conv("huge")
    huge["conversations"][1]["value"] = "word " * (HUGE_CAPTION // 5)
    lines = [conv("fine", "img/ok.jpg")] + ([many, huge] if hostile else [])
    (src / "conv.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    (src / "wds").mkdir()
    if hostile:
        sparse_tar_with_giant_member(src / "wds" / "00000.tar", good)
    else:
        write_tar(src / "wds" / "00000.tar", [("after.jpg", good), ("after.txt", b"after the giant")])
    pq.write_table(pa.table({"key": ["short"] + (["long"] if hostile else []),
                             "text": ["a short caption"] + (["x" * HUGE_CAPTION] if hostile else [])}),
                   src / "captions.parquet")


HOSTILE_SIZES_RUN = """
import json, resource, sys
from pipelines.recipe import parse
from pipelines.runner import run
src, out = sys.argv[1], sys.argv[2]
recipe = parse({"name": "sizes", "seed": 1, "sources": [
    {"name": "ll", "path": src + "/conv.jsonl", "format": "llava"},
    {"name": "wds", "path": src + "/wds/*.tar", "format": "webdataset"},
    {"name": "pq", "path": src + "/captions.parquet", "format": "parquet"}],
    "stages": [{"name": "count_tokens"}]})
result = run(recipe, out=out, executor="inline", progress=False)
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "stages": result.report["stages"]}))
"""


def _sizes_run(tmp_path: Path, hostile: bool) -> dict:
    import subprocess
    import sys
    src, out = tmp_path / f"src-{hostile}", tmp_path / f"out-{hostile}"
    hostile_sizes_corpus(src, hostile)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", HOSTILE_SIZES_RUN, str(src), str(out)], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["rejects"] = {r["key"]: (r[R.REASON], r[R.DETAIL]) for r in
                         pq.read_table(out / "stages" / "00_ingest" / "rejects.parquet").to_pylist()}
    return report


def test_hostile_sizes_each_get_a_reason_and_memory_stays_bounded(tmp_path):
    """5,000 image references in one record, a 50 MB caption (LLaVA and parquet), a tar member whose
    header claims 2 GB (a sparse hole): each is rejected with its reason, the good samples around
    them are kept, and the run's peak RSS stays within RSS_BOUND_OVER_BASELINE of the same run
    without them."""
    baseline = _sizes_run(tmp_path, hostile=False)
    hostile = _sizes_run(tmp_path, hostile=True)
    rejects = hostile["rejects"]
    assert rejects["ll/many"][0] == "too_many_images" and "5000" in rejects["ll/many"][1]
    assert rejects["ll/huge"][0] == "text_too_long"
    assert rejects["pq/long"][0] == "text_too_long"
    assert rejects["wds/giant"][0] == "member_too_large" and str(GIANT_CLAIM) in rejects["wds/giant"][1]
    assert set(rejects) == {"ll/many", "ll/huge", "pq/long", "wds/giant"}
    ingest, tokens = hostile["stages"][0], hostile["stages"][1]
    assert ingest["in"] == 3 + 2 + 2 and ingest["out"] == 3      # fine, after, short
    assert tokens["in"] == tokens["out"] == 3
    grown = hostile["peak_rss"] - baseline["peak_rss"]
    print(f"peak RSS: {baseline['peak_rss'] >> 20} MiB without the hostile inputs, "
          f"{hostile['peak_rss'] >> 20} MiB with them (+{grown >> 20} MiB; bound +{RSS_BOUND_OVER_BASELINE >> 20} MiB)")
    assert grown < RSS_BOUND_OVER_BASELINE


def test_size_limits_are_settings():
    spec = SourceSpec(name="s", path="x", format="llava", max_text_bytes=10, max_images_per_record=2)
    from curate.readers.sources import BadSample, make_row
    with pytest.raises(BadSample, match="text_too_long"):
        make_row(spec, "k", 0, {"uri": "x"}, text="é" * 6)            # 12 UTF-8 bytes > 10
    with pytest.raises(BadSample, match="too_many_images"):
        make_row(spec, "k", 0, {"uri": "x"}, text="ok", images=[{}, {}, {}])
    assert make_row(spec, "k", 0, {"uri": "x"}, text="é" * 5, images=[{}, {}])["text"] == "é" * 5
    with pytest.raises(Exception, match="max_text_bytes"):
        parse({"name": "n", "seed": 0, "stages": [], "sources": [
            {"name": "s", "path": "x", "format": "llava", "max_text_bytes": 0}]})


def test_the_text_limit_counts_utf8_bytes_across_every_turn():
    from curate.readers.sources import BadSample, check_text_size
    spec = SourceSpec(name="s", path="x", format="llava", max_text_bytes=100)
    turns = [{"role": "user", "content": "€" * 10} for _ in range(4)]        # 40 characters, 120 bytes
    with pytest.raises(BadSample, match="text_too_long"):
        check_text_size(spec, None, turns)
    check_text_size(spec, "€" * 33, None)                                     # 99 bytes
    with pytest.raises(BadSample, match="text_too_long"):
        check_text_size(spec, "a" * 50, [{"role": "user", "content": "b" * 51}])
    check_text_size(spec, "a" * 50, [{"role": "user", "content": "b" * 50}, {"role": "user", "content": None}])


@given(st.one_of(st.none(), st.text(max_size=40)), st.lists(st.one_of(st.none(), st.text(max_size=40)), max_size=5),
       st.integers(1, 200))
def test_the_text_limit_is_exactly_the_utf8_byte_count(text, contents, limit):
    from curate.readers.sources import BadSample, check_text_size
    spec = SourceSpec(name="s", path="x", format="llava", max_text_bytes=limit)
    turns = [{"role": "user", "content": c} for c in contents]
    size = sum(len(p.encode("utf-8", "surrogatepass")) for p in [text, *contents] if p is not None)
    try:
        check_text_size(spec, text, turns)
        refused = False
    except BadSample as bad:
        refused = bad.reason == "text_too_long"
    assert refused == (size > limit)
