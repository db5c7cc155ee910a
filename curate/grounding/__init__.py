"""Grounding labels: the one grammar openPangu-VL trains pointing, grounding and counting on.

    <|object_ref_start|>red car<|object_ref_end|><|box_start|>(012,340),(560,780)<|box_end|>

Read and check (``parse``, ``validate``), write (``format_label``), normalize (pixels or other scales
to [0, 999], polygons to minimum-area quads), convert from COCO / RefCOCO / Qwen2-VL / JSON box
lists, make negative samples, and check annotation files (``validate_file``). The pipeline stages
``grounding_check`` and ``grounding_negatives`` live in ``curate.grounding.stage``.
"""
from __future__ import annotations

from curate.grounding.convert import (GROUNDING_PROMPT, REFERRING_PROMPT, GroundingTask, coco_label, from_coco_bbox,
                                      from_coco_polygon, from_json_boxes, from_qwen2vl, refcoco_to_tasks)
from curate.grounding.files import FileProblem, format_file_problems, validate_file
from curate.grounding.grammar import (REL_MAX, Label, Shape, format_label, format_labels, format_shape)
from curate.grounding.negatives import (NEGATIVE_ANSWER, NEGATIVE_PROMPT, absent_categories, make_negatives,
                                        negatives_for_ratio)
from curate.grounding.normalize import (box_from_pixels, min_area_rect, normalize_text, order_quad, pixels_to_rel,
                                        point_from_pixels, polygon_to_quad, quad_or_box, rel_to_pixels, rescale)
from curate.grounding.parse import has_grounding, parse, scan, validate
from curate.grounding.problems import CODES, GroundingSyntaxError, Problem

__all__ = [
    "CODES", "FileProblem", "GROUNDING_PROMPT", "GroundingSyntaxError", "GroundingTask", "Label", "NEGATIVE_ANSWER",
    "NEGATIVE_PROMPT", "Problem", "REFERRING_PROMPT", "REL_MAX", "Shape", "absent_categories", "box_from_pixels",
    "coco_label", "format_file_problems", "format_label", "format_labels", "format_shape", "from_coco_bbox",
    "from_coco_polygon", "from_json_boxes", "from_qwen2vl", "has_grounding", "make_negatives", "min_area_rect",
    "negatives_for_ratio", "normalize_text", "order_quad", "parse", "pixels_to_rel", "point_from_pixels",
    "polygon_to_quad", "quad_or_box", "refcoco_to_tasks", "rel_to_pixels", "rescale", "scan", "validate",
    "validate_file",
]
