"""Problem codes reported by ``validate``: one short snake_case code per way a label can be wrong.

The codes are the contract with users: the ``grounding_check`` stage rejects with reason
``grounding:<code>``, recipes name codes in ``reject_on``, and ``mmcurate validate annotations`` prints
them. Each code has one sentence here that says what it means; the messages carry the specifics.
"""
from __future__ import annotations

from dataclasses import dataclass

CODES: dict[str, str] = {
    "unbalanced_tag": "a start tag is never closed, or an end tag has no start tag",
    "mismatched_tag": "an end tag closes a different tag than the one that is open",
    "nested_tag": "a grounding tag opens inside an object reference or a shape",
    "malformed_tag": "a grounding tag name written without its <| |> delimiters (e.g. '<box_start|>')",
    "unknown_shape": "a <|X_start|>/<|X_end|> tag for a shape the grammar does not have (point, box, quad)",
    "empty_object_ref": "an object reference with no name",
    "whitespace_in_label": "whitespace inside a shape tag or between consecutive tags of one label",
    "missing_parentheses": "coordinates not enclosed in '(' ')' pairs",
    "malformed_coordinates": "shape content is not a comma-separated list of (x,y) pairs",
    "wrong_point_count": "a shape with the wrong number of points (point 1, box 2, quad 4)",
    "non_integer_coordinate": "a coordinate that is not an integer",
    "negative_coordinate": "a coordinate below 0",
    "coordinate_out_of_range": "a coordinate above 999",
    "pixel_coordinates": "a coordinate above 999 that fits the image's pixel size: the label was never normalized",
    "not_zero_padded": "a coordinate not written with exactly three digits (008, not 8)",
    "box_corners_out_of_order": "a box whose first corner is not upper-left of its second (x1 > x2 or y1 > y2)",
    "invalid_json": "a ```json block that does not parse",
    "not_text": "the value checked is not a string",
    "invalid_image_size": "width/height given for the check are not positive integers",
}

# Codes that make a label unreadable (parse(strict=True) raises on these); the others are about values.
STRUCTURAL_CODES = frozenset({
    "unbalanced_tag", "mismatched_tag", "nested_tag", "malformed_tag", "unknown_shape", "empty_object_ref",
    "whitespace_in_label", "missing_parentheses", "malformed_coordinates", "wrong_point_count",
    "non_integer_coordinate",
})


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a text: a code from CODES, a message, and the character offset it starts at."""
    code: str
    message: str
    offset: int = 0

    def __str__(self) -> str:
        return f"{self.code} at {self.offset}: {self.message}"


class GroundingSyntaxError(ValueError):
    """Raised by ``parse(strict=True)``: the text holds labels that cannot be read as the grammar says."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        first = problems[0] if problems else Problem("unknown", "unknown problem")
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{first}{more}")
