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
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & {"ray", "pipelines", "demo_data"})
                 for p in (ROOT / package).rglob("*.py") if _imports(p) & {"ray", "pipelines", "demo_data"}}
    assert offenders == {}


def test_no_product_package_imports_the_demo_data_and_fixtures():
    offenders = {str(p.relative_to(ROOT)) for package in ("curate", "pack", "pipelines")
                 for p in (ROOT / package).rglob("*.py") if "demo_data" in _imports(p)}
    assert offenders == set()


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


def test_every_registered_builtin_has_its_entry_point_and_every_entry_point_loads():
    """The registry has no list of module names: pyproject's entry points are the list, so a stage class
    without one would silently vanish from recipes. Find every @register class in the source and check."""
    declared = {}
    for path in [*(ROOT / "curate").rglob("*.py"), *(ROOT / "pack").rglob("*.py")]:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "register" for d in node.decorator_list):
                names = [s.value.value for s in node.body if isinstance(s, (ast.Assign, ast.AnnAssign))
                         and getattr(s.targets[0] if isinstance(s, ast.Assign) else s.target, "id", None) == "name"]
                module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
                declared[names[0]] = f"{module}:{node.name}"
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"][reg.ENTRY_POINT_GROUP] == declared
    installed = {ep.name: ep.value for ep in reg.stage_entry_points()}
    assert {k: v for k, v in installed.items() if k in declared} == declared, "re-run `make install`"
    assert set(reg.registry()) >= set(declared)


def _fake_distribution(root: Path, name: str, entry_points: dict[str, str]) -> None:
    dist = root / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    body = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[{reg.ENTRY_POINT_GROUP}]\n{body}\n")


def test_a_plugin_package_adds_a_stage_through_its_entry_point(monkeypatch, tmp_path):
    (tmp_path / "my_plugin_stages.py").write_text(
        "from dataclasses import dataclass\nfrom curate.base import BatchResult, Stage\n"
        "class Shout(Stage):\n    name = 'shout_filter'\n"
        "    @dataclass\n    class Config:\n        pass\n"
        "    def process(self, batch):\n        return BatchResult(kept=batch)\n")
    _fake_distribution(tmp_path, "my_plugin", {"shout_filter": "my_plugin_stages:Shout"})
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(reg, "_loaded", False)
    monkeypatch.setattr(reg, "_REGISTRY", dict(reg._REGISTRY))
    assert reg.get("shout_filter").__name__ == "Shout"
    assert reg.get("shards").name == "shards"


def test_a_broken_plugin_fails_as_itself_not_as_an_unknown_stage(monkeypatch, tmp_path):
    (tmp_path / "broken_stage_mod.py").write_text("from curate.base import Stage\nimport not_a_real_dependency_xyz\n")
    _fake_distribution(tmp_path, "broken_plugin", {"broken": "broken_stage_mod:Broken"})
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(reg, "_loaded", False)
    monkeypatch.setattr(reg, "_REGISTRY", dict(reg._REGISTRY))
    with pytest.raises(ModuleNotFoundError, match="not_a_real_dependency_xyz"):
        reg.get("shards")


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (imports for annotations never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = child.test if isinstance(child, ast.If) else None
            if test is not None and (getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING"):
                todo.extend(child.orelse)
                continue
            todo.append(child)


def _module_graph() -> dict[str, set[str]]:
    """Every project module -> the project modules it imports (at any depth in the file, lazy ones too)."""
    modules: dict[str, Path] = {}
    for package in ("curate", "pack", "pipelines", "demo_data"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets.add(node.module)
                targets.update(f"{node.module}.{a.name}" for a in node.names)
        # a package's __init__ importing its own submodules is how packages export names, not a loop
        graph[name] = {t for t in targets if t in modules and t != name and not t.startswith(name + ".")}
    return graph


def test_no_two_modules_import_each_other_directly_or_through_others():
    graph = _module_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []

    def visit(v: str) -> None:   # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert loops == [], "\n".join(" <-> ".join(loop) for loop in loops)
