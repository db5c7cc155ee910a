"""The layering the project promises: a base layer that imports nothing above it, one engine boundary."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import importlib

reg = importlib.import_module("curate.base.registry")

ROOT = Path(__file__).resolve().parents[1]


def test_base_layer_imports_with_pipelines_made_unimportable():
    code = (
        "import sys; sys.modules['pipelines'] = None; sys.modules['ray'] = None\n"
        "import curate.base as B\n"
        "from curate.base import inline, global_data, records\n"
        "t = records.rows_to_table([{'key': 'a/1', 'source': 'a', 'category': 'caption', 'text': 'hi'}])\n"
        "res = B.split_drops(t, [B.Drop('x')])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('curate', 'pack', 'pipelines') and sys.modules[m])\n"
        "print(loaded)\n"
        "assert all(m == 'curate' or m.startswith('curate.base') for m in loaded), loaded\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["curate", "pack"])
def test_only_pipelines_imports_ray_and_nothing_below_imports_pipelines(package):
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & {"ray", "pipelines"})
                 for p in (ROOT / package).rglob("*.py") if _imports(p) & {"ray", "pipelines"}}
    assert offenders == {}


def test_base_layer_imports_no_domain_module():
    offenders = {str(p.relative_to(ROOT)) for p in (ROOT / "curate" / "base").rglob("*.py")
                 if any(m for m in _module_imports(p) if m.startswith(("curate.", "pack")) and not m.startswith("curate.base"))}
    assert offenders == set()


def _module_imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_every_builtin_stage_module_exists_and_a_broken_one_fails_as_itself(monkeypatch, tmp_path):
    for mod in reg.BUILTIN_STAGE_MODULES:
        __import__(mod)  # no phantom entries
    (tmp_path / "broken_stage_mod.py").write_text("from curate.base import Stage\nimport not_a_real_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(reg, "BUILTIN_STAGE_MODULES", reg.BUILTIN_STAGE_MODULES + ("broken_stage_mod",))
    monkeypatch.setattr(reg, "_loaded", False)
    with pytest.raises(ModuleNotFoundError, match="not_a_real_dependency_xyz"):
        reg.get("shards")
