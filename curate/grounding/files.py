"""``mmcurate validate annotations FILE``: check every grounding label of a JSONL / JSON / parquet file.

Meant for users' CI, so every problem names where it is: the line (JSONL) or row (parquet, JSON
array), the field (``conversations[1].value``) and the character offset inside it.

Accepted records:

* LLaVA / ShareGPT style ``{"id", "image", "width"?, "height"?, "conversations": [{"from", "value"}]}``
  (also ``messages`` and ``{"role", "content"}``, with content as text or a list of ``{"text": ...}``
  parts);
* flat ``{"text": ...}`` (also ``caption``);
* mmcurate manifests (``images`` is a list of refs carrying width/height).

``width``/``height`` are taken from the record, or from its only image; they refine the code of
coordinates above 999 (see ``validate``).
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from curate.grounding.parse import validate

TEXT_FIELDS = ("text", "caption")
TURN_LISTS = ("conversations", "messages")
TURN_TEXT = ("value", "content")


@dataclass(frozen=True)
class FileProblem:
    """One problem in an annotations file. `line` (1-based, JSONL) or `row` (0-based) says where."""
    path: str
    field: str
    code: str
    message: str
    line: int | None = None
    row: int | None = None
    offset: int = 0

    @property
    def location(self) -> str:
        if self.line is not None:
            return f"{self.path}:{self.line}"
        if self.row is not None:
            return f"{self.path}[row {self.row}]"
        return self.path

    def __str__(self) -> str:
        where = f"{self.field} @{self.offset}: " if self.field else ""
        return f"{self.location}: {where}{self.code}: {self.message}"


def validate_file(path: str | Path, *, require_padding: bool = True, check_json: bool = True) -> list[FileProblem]:
    """Every problem of every text field of every record. Raises ValueError for an unknown file type;
    unreadable lines are reported as ``invalid_json_line`` problems, not raised."""
    p = str(path)
    problems: list[FileProblem] = []
    for line, row, rec, err in _records(p):
        if err is not None:
            problems.append(FileProblem(p, "", "invalid_json_line", err, line=line, row=row))
            continue
        problems += _check_record(p, rec, line, row, require_padding, check_json)
    return problems


def format_file_problems(problems: list[FileProblem], limit: int | None = 50) -> str:
    """Human summary: one line per problem (the first `limit`), then counts per code."""
    if not problems:
        return "no problems"
    shown = problems if limit is None else problems[:limit]
    lines = [str(p) for p in shown]
    if len(shown) < len(problems):
        lines.append(f"... and {len(problems) - len(shown)} more")
    counts: dict[str, int] = {}
    for p in problems:
        counts[p.code] = counts.get(p.code, 0) + 1
    lines.append(f"{len(problems)} problem(s): " + ", ".join(f"{c}={n}" for c, n in sorted(counts.items())))
    return "\n".join(lines)


def _records(path: str) -> Iterator[tuple[int | None, int | None, Any, str | None]]:
    """(line, row, record, error) for each record of the file."""
    name = path.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq
        row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for rec in batch.to_pylist():
                yield None, row, rec, None
                row += 1
        return
    opener = gzip.open if name.endswith(".gz") else open
    base = name[:-3] if name.endswith(".gz") else name
    if base.endswith((".jsonl", ".ndjson")):
        with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
            for i, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    yield i, None, json.loads(raw), None
                except (ValueError, RecursionError) as exc:
                    yield i, None, None, f"line is not JSON: {exc}"[:200]
        return
    if base.endswith(".json"):
        with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
            try:
                data = json.load(f)
            except (ValueError, RecursionError) as exc:
                yield None, None, None, f"file is not JSON: {exc}"[:200]
                return
        for i, rec in enumerate(data if isinstance(data, list) else [data]):
            yield None, i, rec, None
        return
    raise ValueError(f"{path}: annotations must be .jsonl, .ndjson, .json (optionally .gz) or .parquet")


def _image_size(rec: Mapping[str, Any]) -> tuple[int | None, int | None]:
    w, h = rec.get("width"), rec.get("height")
    if w is None and h is None:
        images = rec.get("images")
        if isinstance(images, list) and len(images) == 1 and isinstance(images[0], Mapping):
            w, h = images[0].get("width"), images[0].get("height")
    if isinstance(w, int) and isinstance(h, int) and not isinstance(w, bool) and w > 0 and h > 0:
        return w, h
    return None, None


def record_texts(rec: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """(field name, value) for every text-bearing field of a record (values may be non-strings)."""
    for key in TEXT_FIELDS:
        if rec.get(key) is not None:
            yield key, rec[key]
    for lk in TURN_LISTS:
        turns = rec.get(lk)
        if not isinstance(turns, list):
            continue
        for i, turn in enumerate(turns):
            if not isinstance(turn, Mapping):
                yield f"{lk}[{i}]", turn
                continue
            for tk in TURN_TEXT:
                value = turn.get(tk)
                if isinstance(value, list):  # OpenAI-style content parts
                    for j, part in enumerate(value):
                        if isinstance(part, Mapping) and part.get("type", "text") == "text":
                            yield f"{lk}[{i}].{tk}[{j}].text", part.get("text")
                elif value is not None:
                    yield f"{lk}[{i}].{tk}", value


def _check_record(path: str, rec: Any, line: int | None, row: int | None, require_padding: bool,
                  check_json: bool) -> list[FileProblem]:
    if not isinstance(rec, Mapping):
        return [FileProblem(path, "", "not_an_object", f"record is {type(rec).__name__}, not an object",
                            line=line, row=row)]
    width, height = _image_size(rec)
    out: list[FileProblem] = []
    fields = 0
    for field, value in record_texts(rec):
        fields += 1
        for prob in validate(value, width, height, require_padding=require_padding, check_json=check_json):
            out.append(FileProblem(path, field, prob.code, prob.message, line=line, row=row, offset=prob.offset))
    if fields == 0:
        out.append(FileProblem(path, "", "no_text_fields",
                               f"record has none of {', '.join(TEXT_FIELDS + TURN_LISTS)}", line=line, row=row))
    return out
