"""Resume fingerprints that see code changes, inputs and outputs.

A stage's fingerprint chains its upstream's with its settings, the seed, its inputs' identity and
its *code*: the package version plus a hash of the source of the stage's module and of every module
of this project it imports, transitively. So fixing a filter re-runs that filter and everything
after it on the next run, instead of resuming onto stale output. Files are found by parsing import
statements (no import side effects), which makes the fingerprint the same in every process.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

PROJECT_PACKAGES = ("curate", "pack", "pipelines")


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("mmcurate")
    except PackageNotFoundError:
        return "unknown"


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m.split(".")[0] in PROJECT_PACKAGES}


@lru_cache(maxsize=None)
def code_hash(module: str) -> str:
    """sha256 over the sources of `module` and the project modules it imports, transitively."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = path
        todo.extend(_imports(path, name) - seen.keys())
    h = hashlib.sha256(package_version().encode())
    for name in sorted(seen):
        h.update(name.encode() + b"\0" + seen[name].read_bytes() + b"\0")
    return h.hexdigest()


def file_inventory(paths: list[Path], base: Path) -> dict[str, int]:
    """{path relative to base: size} of every file under `paths`: what a complete stage must still
    have on disk for a re-run to skip it."""
    out: dict[str, int] = {}
    for root in paths:
        files = [root] if root.is_file() else [Path(d) / f for d, _, fs in os.walk(root) for f in fs]
        for p in files:
            if p.name != "_COMPLETE.json":
                out[os.path.relpath(p, base)] = p.stat().st_size
    return dict(sorted(out.items()))


def inventory_matches(recorded: dict[str, int], base: Path) -> bool:
    for rel, size in recorded.items():
        try:
            if os.stat(base / rel).st_size != size:
                return False
        except OSError:
            return False
    return True
