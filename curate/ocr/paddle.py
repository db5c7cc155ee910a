"""PaddleOCR adapter: the production engine (``pip install -e ".[ocr]"``). PaddleOCR downloads its
models on first use unless ``det_model_dir`` / ``rec_model_dir`` point at local copies; the CI
machine has neither paddle nor the models, so this adapter is exercised only where they exist.
"""
from __future__ import annotations

import time

import numpy as np
from PIL import Image

from curate.ocr.engines import EngineResult, OcrLine, as_quad, result_from_lines


class PaddleOcrEngine:
    name = "paddleocr"

    def __init__(self, lang: str = "en", det_model_dir: str | None = None, rec_model_dir: str | None = None):
        from paddleocr import PaddleOCR
        kwargs = {k: v for k, v in (("det_model_dir", det_model_dir), ("rec_model_dir", rec_model_dir)) if v}
        self.ocr = PaddleOCR(use_angle_cls=True, lang=lang, show_log=False, **kwargs)

    def read(self, image: Image.Image, timeout_s: float) -> EngineResult:
        start = time.perf_counter()
        pages = self.ocr.ocr(np.asarray(image.convert("RGB"))[:, :, ::-1], cls=True) or []
        found = (pages[0] or []) if pages else []
        lines = [OcrLine(str(text), as_quad(quad), float(score)) for quad, (text, score) in found if str(text).strip()]
        seconds = time.perf_counter() - start
        return result_from_lines(self.name, lines, seconds, timed_out=seconds > timeout_s)
