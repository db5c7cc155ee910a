"""Reads with a time limit: a source file or image on a stalled mount (NFS, a FUSE bucket, a peer that
accepts and never answers) must end in a named reason, not hang the run.

Why a thread: a blocked ``open()`` or ``read()`` on a stalled mount cannot be interrupted from Python
(no signal reaches it in a worker thread, and ``select`` says a regular file is always ready). So each
bounded call runs on a helper thread while the caller waits at most ``seconds``; on time-out the
caller raises ``ReadTimeout`` and gives up on that thread (a daemon, left blocked in the kernel until
the mount answers or the process ends) and the next read gets a fresh one. One helper thread per
calling thread, reused, so a bounded read costs a hand-over (~15 µs of CPU, ~45 µs wall on the 2-core
CI machine), not a thread start; files are read through a 256 KiB buffer, so a hand-over happens
once per 256 KiB, not per ``read(512)`` of a tar header. (Measured: webdataset ingest unchanged; a LLaVA record
with one small referenced JPEG, 159 -> 187 CPU-µs at ingest, and ``images.read_image_bytes`` of such
a file 36 -> 50 CPU-µs: the one hand-over per image read.)

``ReadTimeout`` is a ``TimeoutError`` (an ``OSError``): readers that record unreadable input record it,
with the reason ``read_timeout``.
"""
from __future__ import annotations

import io
import queue
import threading
from typing import Any, Callable, TypeVar

import fsspec

T = TypeVar("T")
BUFFER_BYTES = 256 << 10
# A source or image read that blocks (a stalled mount, a peer that accepts and never answers) ends here.
DEFAULT_READ_TIMEOUT_S = 60.0
READ_TIMEOUT_REASON = "read_timeout"


class ReadTimeout(TimeoutError):
    """A read that did not answer within its limit; the message names what was read and the limit."""
    reason = READ_TIMEOUT_REASON   # what a stage that records a failed read by its reason records


class _Helper:
    """A daemon thread running one call at a time for the thread that owns it. Calls and answers go
    through two C-level queues (no Event or Condition per call: the hand-over is the whole cost)."""

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue = queue.SimpleQueue()
        self.answers: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, daemon=True, name="mmcurate-timed-read").start()

    def _serve(self) -> None:
        while True:
            fn = self.calls.get()
            try:
                self.answers.put((True, fn()))
            except BaseException as exc:  # noqa: BLE001 — handed to the caller, who raises it
                self.answers.put((False, exc))


_local = threading.local()


def call_with_deadline(fn: Callable[[], T], seconds: float, what: str) -> T:
    """``fn()``, or ReadTimeout when it has not returned within `seconds` (its exceptions are re-raised)."""
    helper = getattr(_local, "helper", None)
    if helper is None:
        helper = _local.helper = _Helper()
    helper.calls.put(fn)
    try:
        ok, value = helper.answers.get(timeout=seconds)
    except queue.Empty:
        _local.helper = None   # left blocked in fn (its late answer goes to a queue nobody reads)
        raise ReadTimeout(f"{what}: no answer within read_timeout_s={seconds:g}") from None
    if ok:
        return value
    raise value


class _TimedRaw(io.RawIOBase):
    """An open file whose every read and seek is bounded by `seconds` (see the module docstring)."""

    def __init__(self, fh: Any, seconds: float, what: str):
        super().__init__()
        self.fh, self.seconds, self.what = fh, seconds, what
        self.stalled = False
        self.pos = 0   # kept here: a seek to where the file already is costs no call (and works on a pipe)
        # The helper reads into memory of its own, never into the caller's buffer: a read that times out
        # may still complete later, when the buffer it was given could be freed (by then, the scratch
        # is only the abandoned helper's).
        self.scratch = memoryview(bytearray(BUFFER_BYTES))

    def _bounded(self, fn: Callable[[], T]) -> T:
        try:
            return call_with_deadline(fn, self.seconds, self.what)
        except ReadTimeout:
            self.stalled = True
            raise

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        """At most BUFFER_BYTES a call (a buffered reader asks again for the rest)."""
        want = min(len(buffer), BUFFER_BYTES)
        if hasattr(self.fh, "readinto"):
            scratch = self.scratch[:want]
            n = self._bounded(lambda: self.fh.readinto(scratch)) or 0
            buffer[:n] = scratch[:n]
        else:
            data = self._bounded(lambda: self.fh.read(want))
            n = len(data)
            buffer[:n] = data
        self.pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET and offset == self.pos or whence == io.SEEK_CUR and offset == 0:
            return self.pos
        self.pos = self._bounded(lambda: self.fh.seek(offset, whence))
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        if not self.closed:
            try:
                if not self.stalled:   # a helper blocked in a read holds the file's lock: closing would block too
                    self.fh.close()
            finally:
                super().close()


def open_timed(uri: str, seconds: float) -> io.BufferedReader:
    """`uri` (a local path or an fsspec URL) opened for reading, every open / read / seek bounded by
    `seconds`; ReadTimeout names the URI."""
    fs, path = fsspec.core.url_to_fs(uri)
    what = f"reading {uri}"
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    if protocol in ("file", "local"):   # unbuffered: the one buffer is ours (fsspec's local file seeks at open)
        fh = call_with_deadline(lambda: open(path, "rb", buffering=0), seconds, what)
    else:
        fh = call_with_deadline(lambda: fs.open(path, "rb"), seconds, what)
    return io.BufferedReader(_TimedRaw(fh, seconds, what), buffer_size=BUFFER_BYTES)
