"""A vectorised screen in front of ``grounding_check``: the rows whose every text is certainly valid.

``grounding_check`` scans each caption and turn in Python (``curate.grounding.parse.validate``):
tens of microseconds a grounding answer, the whole cost of the stage on a grounding corpus. Almost
every label of a real corpus is well formed. This screen proves that for whole batches with Arrow's
regular expressions (RE2, linear time) and only the rows it cannot clear go through ``validate`` —
so every code, reason and detail is still the scanner's own.

A text is cleared when it has no ``|`` (no tag can start without one; and no ```json fence when
fences are checked), or when it is a sequence of well-formed labels and plain text that the scanner
reads without a problem:

* tags only of the grammar (``object_ref``, ``point``, ``box``, ``quad``), each closed before the
  next opens, and no ``|`` anywhere else (so no other tag, broken delimiter or table pipe);
* object names holding an ASCII letter or digit (never blank); shapes of exactly their points,
  ``(ddd,ddd)`` with three digits (so in [0, 999] and padded, whatever ``require_padding`` says);
* a shape that follows a closed tag either directly or after a gap with a visible ASCII character
  (a whitespace-only gap is ``whitespace_in_label``);
* at most one box, whose corners are in order (compared as three-digit strings); a text with two or
  more boxes is left to the scanner.

Anything else (a problem, or a shape this screen does not model) is "unknown": the scanner decides.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_C = r"\([0-9]{3},[0-9]{3}\)"
_SHAPE = (rf"(?:<\|point_start\|>{_C}<\|point_end\|>|<\|box_start\|>{_C},{_C}<\|box_end\|>"
          rf"|<\|quad_start\|>{_C},{_C},{_C},{_C}<\|quad_end\|>)")
_REF = r"<\|object_ref_start\|>[^|]*[0-9A-Za-z][^|]*<\|object_ref_end\|>"
_VISIBLE_GAP = r"[^|]*[!-{}~][^|]*"   # holds an ASCII character that is neither space nor '|'
CLEAN_LABELS = rf"^[^|]*(?:{_REF}|{_SHAPE})(?:[^|]*{_REF}|(?:{_VISIBLE_GAP})?{_SHAPE})*[^|]*$"
_BOX = r"<\|box_start\|>\((?P<x1>[0-9]{3}),(?P<y1>[0-9]{3})\),\((?P<x2>[0-9]{3}),(?P<y2>[0-9]{3})\)"


def cleared_texts(texts: pa.Array, check_json: bool) -> np.ndarray:
    """Per text: True when ``validate`` finds no problem in it for certain (null texts: True)."""
    n = len(texts)
    if n == 0:
        return np.zeros(0, dtype=bool)
    no_tags = pc.invert(pc.match_substring(texts, "|"))
    labels = pc.match_substring_regex(texts, CLEAN_LABELS)
    boxes = pc.count_substring(texts, "<|box_start|>")
    ok = pc.or_(no_tags, pc.and_(labels, pc.less_equal(boxes, 1)))
    if check_json:
        ok = pc.and_(ok, pc.invert(pc.match_substring(texts, "```json")))
    out = np.asarray(pc.fill_null(ok, True).to_numpy(zero_copy_only=False), dtype=bool)
    one_box = np.flatnonzero(out & np.asarray(pc.fill_null(pc.equal(boxes, 1), False).to_numpy(zero_copy_only=False),
                                              dtype=bool))
    if len(one_box):
        corners = pc.extract_regex(texts.take(pa.array(one_box)), _BOX)
        ordered = pc.and_(pc.less_equal(pc.struct_field(corners, "x1"), pc.struct_field(corners, "x2")),
                          pc.less_equal(pc.struct_field(corners, "y1"), pc.struct_field(corners, "y2")))
        out[one_box] = np.asarray(pc.fill_null(ordered, False).to_numpy(zero_copy_only=False), dtype=bool)
    return out


def cleared_rows(batch: pa.Table, check_json: bool) -> np.ndarray:
    """Per row: True when neither its text nor any turn's content has a grounding problem."""
    n = batch.num_rows
    out = np.ones(n, dtype=bool)
    if "text" in batch.column_names and pa.types.is_string(batch.schema.field("text").type):
        out &= cleared_texts(batch.column("text").combine_chunks(), check_json)
    elif "text" in batch.column_names and not pa.types.is_null(batch.schema.field("text").type):
        return np.zeros(n, dtype=bool)
    if "conversations" in batch.column_names and not pa.types.is_null(batch.schema.field("conversations").type):
        conv = batch.column("conversations").combine_chunks()
        contents = pc.struct_field(pc.list_flatten(conv), "content")
        if len(contents):
            lengths = np.asarray(pc.fill_null(pc.list_value_length(conv), 0).to_numpy(zero_copy_only=False),
                                 dtype=np.int64)
            parent = np.repeat(np.arange(n, dtype=np.int64), lengths)
            unclear = ~cleared_texts(contents, check_json)
            out[np.unique(parent[unclear])] = False
    return out
