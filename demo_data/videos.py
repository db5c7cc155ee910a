"""Tiny sample videos for the bundled corpus, encoded here with PyAV (nothing downloaded).

    videos/part-00000.tar   clip-bars.mp4 (MPEG-4 Part 2 in MP4), clip-ball.webm (VP8 in WebM),
                            each with a caption (.txt), plus a planted broken video

Frames are drawn from numpy (a bar sweeping across, a ball bouncing), a handful at a few frames per
second and a small size, so the whole tar is a few kilobytes. Encoding is single-threaded with
libavformat/libavcodec's ``bitexact`` flags (no encoder version string, no random Matroska segment
id), so the same PyAV build gives the same bytes.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np

WIDTH, HEIGHT, FPS, FRAMES = 64, 48, 4, 8
# (key, container, codec, caption)
CLIPS = (
    ("clip-bars", "mp4", "mpeg4", "A white bar sweeps from the left edge of a dark screen to the right edge."),
    ("clip-ball", "webm", "libvpx", "A red ball bounces across a blue background from left to right."),
)


def _bars(i: int) -> np.ndarray:
    img = np.full((HEIGHT, WIDTH, 3), 16, np.uint8)
    step = WIDTH // FRAMES
    img[:, i * step:(i + 1) * step] = 240
    return img


def _ball(i: int) -> np.ndarray:
    img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    img[..., 2] = 200
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    cx = 6 + i * (WIDTH - 12) // (FRAMES - 1)
    cy = HEIGHT - 8 - abs((i % 4) - 2) * 10
    ball = (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
    img[ball] = (230, 30, 30)
    return img


DRAW: dict[str, Callable[[int], np.ndarray]] = {"clip-bars": _bars, "clip-ball": _ball}


def encode_video(frames: list[np.ndarray], container: str, codec: str, fps: int = FPS) -> bytes:
    """Encode RGB frames (H x W x 3 uint8) into a video file held in memory."""
    import av
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container, options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream(codec, rate=fps, options={"flags": "+bitexact", "threads": "1"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def sample_clip(key: str) -> bytes:
    """The bytes of one of the sample clips (CLIPS), for tests and the sample corpus."""
    _, container, codec, _ = next(c for c in CLIPS if c[0] == key)
    return encode_video([DRAW[key](i) for i in range(FRAMES)], container, codec)


def build_videos(root: Path) -> dict[str, tuple[str, str]]:
    """Write ``videos/part-00000.tar``; returns the planted cases {source/key: (stage, reason)}."""
    from demo_data.tarfiles import write_tar
    out = root / "videos"
    out.mkdir(parents=True, exist_ok=True)
    members: list[tuple[str, bytes]] = []
    for key, container, _, caption in CLIPS:
        members += [(f"{key}.{container}", sample_clip(key)), (f"{key}.txt", caption.encode())]
    # a video whose container is cut before its header: ingest must quarantine it, not crash
    members += [("clip-broken.mp4", sample_clip("clip-bars")[:64]), ("clip-broken.txt", b"A clip that cannot be read.")]
    write_tar(out / "part-00000.tar", members)
    return {"videos/clip-broken": ("ingest", "video:not_a_video")}
