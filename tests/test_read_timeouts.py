"""Reads that hang (issue 26, item 5): a source file or image read that blocks ends at its time limit
with a recorded reason instead of hanging the run.

A stalled mount is simulated by a FIFO where a file is expected (its reads block while a writer holds
it open and writes nothing more; its open blocks while no writer has it) and by a TCP server on
127.0.0.1 that accepts connections and never answers.
"""
from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate.base import records as R
from curate.readers.read import SourceSpec, read_file
from curate.readers.timed_io import ReadTimeout, call_with_deadline
from pipelines.recipe import parse
from pipelines.runner import run
from tests.corpus import jpeg
from tests.test_hostile_inputs import conv, deadline

LIMIT = 1.0


@contextmanager
def stalled_fifo(path: Path, head: bytes | None):
    """A FIFO at `path`. `head` None: no writer ever opens it (an open blocks). Else a writer opens it,
    writes `head` and then stalls, holding it open, until the block ends."""
    os.mkfifo(path)
    release = threading.Event()

    def writer() -> None:
        fd = os.open(path, os.O_WRONLY)   # blocks until the reader opens
        try:
            os.write(fd, head)
            release.wait(60)
        finally:
            os.close(fd)

    thread = threading.Thread(target=writer, daemon=True) if head is not None else None
    if thread:
        thread.start()
    try:
        yield
    finally:
        release.set()
        # unblock a reader the time limit left behind in open(): a writer that opens and closes at once
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        if thread:
            thread.join(5)


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def accounted(rows: list[dict]) -> dict[str, str | None]:
    return {r["key"]: r[R.REASON] for r in rows}


def test_call_with_deadline_gives_up_on_a_blocked_call_and_the_next_call_still_works():
    blocked = threading.Event()
    start = time.monotonic()
    with pytest.raises(ReadTimeout, match=r"reading x: no answer within read_timeout_s=0.2"):
        call_with_deadline(lambda: blocked.wait(30), 0.2, "reading x")
    assert time.monotonic() - start < 5
    assert call_with_deadline(lambda: 41 + 1, 1, "y") == 42
    with pytest.raises(ZeroDivisionError):
        call_with_deadline(lambda: 1 / 0, 1, "z")
    blocked.set()


def test_a_webdataset_tar_that_stalls_keeps_the_samples_before_and_quarantines_the_rest(tmp_path):
    good = jpeg(64, 48, seed=1)
    whole = tar_bytes([("a.jpg", good), ("a.txt", b"first"), ("b.jpg", good), ("b.txt", b"second")])
    head = whole[:whole.index(b"b.txt")]   # sample a complete, b begun, then the pipe says nothing more
    spec = SourceSpec(name="w", path=str(tmp_path / "*.tar"), format="webdataset", read_timeout_s=LIMIT)
    with stalled_fifo(tmp_path / "s.tar", head), deadline(30):
        start = time.monotonic()
        rows = read_file(spec, str(tmp_path / "s.tar"), 0, 0).to_pylist()
        took = time.monotonic() - start
    got = accounted(rows)
    assert got["w/a"] is None and rows[0][R.STATUS] == R.KEPT
    stalled = [r for r in rows if r[R.REASON] == "read_timeout"]
    assert len(rows) == 2 and len(stalled) == 1   # b, begun when the read stalled, is in the rest and stalled[0][R.STATUS] == R.QUARANTINED
    assert "read_timeout_s=1" in stalled[0][R.DETAIL] and "s.tar" in stalled[0][R.DETAIL]
    assert len({r[R.ORDINAL] for r in rows}) == len(rows)
    assert took < LIMIT + 10


@pytest.mark.parametrize("fmt,name,head", [
    ("llava", "s.jsonl", b"".join(json.dumps(conv(f"r{i}")).encode() + b"\n" for i in range(60))),
    ("parquet", "s.parquet", None),
    ("webdataset", "s.tar", None),      # nobody ever writes: the open itself blocks
])
def test_every_reader_ends_a_stalled_file_at_read_timeout(tmp_path, fmt, name, head):
    spec = SourceSpec(name="s", path=str(tmp_path / name), format=fmt, read_timeout_s=LIMIT)
    with stalled_fifo(tmp_path / name, head), deadline(30):
        start = time.monotonic()
        rows = read_file(spec, str(tmp_path / name), 0, 0).to_pylist()
        took = time.monotonic() - start
    assert [r[R.REASON] for r in rows if r[R.STATUS] != R.KEPT] == ["read_timeout"]
    assert took < 4 * LIMIT + 10     # a reader may open a file twice (a JSON array check, the parquet column path)


@contextmanager
def silent_server():
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], held
    finally:
        stop.set()
        thread.join(5)
        for s in held:
            s.close()
        listener.close()


def test_an_image_host_that_never_answers_ends_at_fetch_timeout_and_the_run_completes(tmp_path):
    src = tmp_path / "src"
    (src / "img").mkdir(parents=True)
    (src / "img" / "ok.jpg").write_bytes(jpeg(64, 48, seed=2))
    with silent_server() as (port, held), deadline(120):
        (src / "r.jsonl").write_text("\n".join(json.dumps(r) for r in [
            conv("local", "img/ok.jpg"), conv("silent", f"http://127.0.0.1:{port}/a.jpg")]) + "\n")
        recipe = parse({"name": "t", "seed": 0, "stages": [], "sources": [
            {"name": "r", "path": str(src / "r.jsonl"), "format": "llava", "allowed_hosts": ["127.0.0.1"],
             "fetch_timeout_s": LIMIT}]})
        start = time.monotonic()
        result = run(recipe, out=tmp_path / "out", executor="inline", progress=False)
        took = time.monotonic() - start
        assert held, "the fetch must have reached the silent server"
    ingest = result.report["stages"][0]
    assert ingest["in"] == 2 and ingest["out"] == 1 and ingest["quarantined"] == {"image:fetch_timeout": 1}
    rejects = pq.read_table(tmp_path / "out" / "stages" / "00_ingest" / "rejects.parquet").to_pylist()
    assert [(r["key"], r[R.REASON]) for r in rejects] == [("r/silent", "image:fetch_timeout")]
    assert "fetch_timeout_s=1" in rejects[0][R.DETAIL]
    assert took < 60


def test_the_read_timeout_is_a_source_setting():
    recipe = parse({"name": "t", "seed": 0, "stages": [], "sources": [
        {"name": "r", "path": "x.jsonl", "format": "llava", "read_timeout_s": 2.5}]})
    assert recipe.sources[0].read_timeout_s == 2.5
    assert SourceSpec(name="d", path="x", format="llava").read_timeout_s == 60.0
    with pytest.raises(Exception, match="read_timeout_s"):
        parse({"name": "t", "seed": 0, "stages": [], "sources": [
            {"name": "r", "path": "x.jsonl", "format": "llava", "read_timeout_s": 0}]})


def test_hashing_a_stalled_source_for_the_resume_fingerprint_ends_at_the_limit(tmp_path):
    """The driver hashes every source file before ingest (curate.media.identity): a stalled one must not hang
    the run there; its identity says so, and its reader then records the file as read_timeout."""
    from curate.media.identity import file_identity
    with stalled_fifo(tmp_path / "s.tar", b"x" * 1000), deadline(30):
        start = time.monotonic()
        identity = file_identity(str(tmp_path / "s.tar"), read_timeout_s=LIMIT)
        took = time.monotonic() - start
    assert identity == {"size": 0, "read_timeout": True}
    assert took < LIMIT + 10
    (tmp_path / "ok.tar").write_bytes(b"y" * 3000)
    assert file_identity(str(tmp_path / "ok.tar"))["size"] == 3000


def test_image_reads_after_ingest_are_bounded_and_a_stalled_container_fails_its_images_at_once(tmp_path, monkeypatch):
    """The image filters and the shard writer read image bytes again (curate.media.images): a container on a
    stalled mount costs its samples a ReadTimeout (reason read_timeout), once per file, not the run."""
    from curate.media import images as I
    monkeypatch.setattr(I, "DEFAULT_READ_TIMEOUT_S", LIMIT)
    refs = [{"uri": str(tmp_path / "s.tar"), "member": f"{k}.jpg", "offset": 512 * (1 + 3 * k), "size": 100}
            for k in range(3)]
    good = tmp_path / "ok.jpg"
    good.write_bytes(jpeg(32, 32, seed=3))
    plain = {"uri": str(good), "member": None, "offset": 0, "size": good.stat().st_size}
    with stalled_fifo(tmp_path / "s.tar", None), deadline(30):
        start = time.monotonic()
        got = I.read_many(refs + [plain])
        took = time.monotonic() - start
        with pytest.raises(ReadTimeout) as err:
            I.read_image_bytes({"uri": str(tmp_path / "s.tar"), "member": None, "offset": -1, "size": -1})
    assert all(isinstance(g, ReadTimeout) and g.reason == "read_timeout" for g in got[:3])
    assert got[3] == good.read_bytes()
    assert took < 3 * LIMIT + 5          # one wait for the stalled file, not one per image
    assert "s.tar" in str(err.value)
