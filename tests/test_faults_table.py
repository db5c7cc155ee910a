"""The README's fault table names tests that exist: every row's test column points at a test file and
functions in it (``path::name``, or ``::name`` for the row's previous file)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fault_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Faults and what survives them", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| fault ")]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]


def test_every_fault_row_names_tests_that_exist():
    rows = fault_rows()
    assert len(rows) >= 10
    last_file = None
    for fault, _seen, _kept, tests in rows:
        refs = re.findall(r"`((?:tests/[\w/]+\.py)?)::(\w+)`", tests)
        if tests == "same":
            continue
        assert refs, f"row {fault!r} names no test"
        for path, name in refs:
            last_file = path or last_file
            assert last_file, f"row {fault!r}: ::{name} without a file before it"
            tree = ast.parse((ROOT / last_file).read_text())
            names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert name in names, f"row {fault!r}: {last_file}::{name} does not exist"
