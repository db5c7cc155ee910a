"""OCR intersection of two engines (MindVL's scene-OCR line) and OCR-with-grounding output.

``engines`` (the interface and registry), ``normalize`` (comparison keys), ``matching`` (words of two
engines -> agreements and metrics), ``lines`` (agreed lines and grounding labels), ``reading`` (one
image through both engines), ``stage`` (the ``ocr`` pipeline stage). Engine adapters: ``rapid``,
``tesseract``, ``paddle``.
"""
