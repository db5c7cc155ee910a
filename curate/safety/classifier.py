"""NudeNet's detector (``nudenet`` 3.x ships ``320n.onnx`` — a YOLOv8n trained on exposed/covered
body-part classes — inside its wheel; nothing is downloaded).

The detector's own ``detect`` is used unchanged; only its ONNX session is rebuilt from the same
shipped file with one intra-op thread, because the stage parallelises over actors (one per core)
and onnxruntime's default (every core per session) would oversubscribe them.

The sample's score is the highest detection score among ``unsafe_classes`` (0 when none is found;
NudeNet reports detections from 0.2 up).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

# NudeNet's classes that show nudity; FACE_*, *_COVERED, FEET_*, ARMPITS_*, BELLY_* are not unsafe.
DEFAULT_UNSAFE = ("FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED",
                  "BUTTOCKS_EXPOSED", "ANUS_EXPOSED")


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[int, int, int, int]   # x, y, w, h in pixels


def known_classes() -> list[str]:
    """The detector's class names (module-level list in nudenet 3.x)."""
    import nudenet.nudenet as nn
    return list(getattr(nn, "__labels"))


def model_path() -> str:
    import nudenet
    path = os.path.join(os.path.dirname(nudenet.__file__), "320n.onnx")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the nudenet wheel ships its model here; reinstall nudenet>=3.4")
    return path


class NudityDetector:
    def __init__(self, threads: int = 1):
        import onnxruntime
        from nudenet import NudeDetector
        self.detector = NudeDetector(model_path=model_path())
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.detector.onnx_session = onnxruntime.InferenceSession(model_path(), sess_options=opts,
                                                                  providers=["CPUExecutionProvider"])

    def detect(self, image: Image.Image) -> list[Detection]:
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        found = self.detector.detect(bgr)
        out = [Detection(d["class"], float(d["score"]), tuple(int(v) for v in d["box"])) for d in found]
        return sorted(out, key=lambda d: (-d.score, d.label, d.box))


def unsafe_score(detections: Sequence[Detection], unsafe: Sequence[str]) -> tuple[float, Detection | None]:
    """The highest score among unsafe classes, and that detection."""
    wanted = set(unsafe)
    hits = [d for d in detections if d.label in wanted]
    return (hits[0].score, hits[0]) if hits else (0.0, None)
