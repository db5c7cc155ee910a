"""Stage registry: recipe names -> stage classes.

Stages are discovered through Python entry points in the group ``mmcurate.stages`` (name = the stage's
recipe name, value = ``module:Class``): the built-ins are declared in this project's pyproject.toml, and
a plugin package declares its own the same way — no list of module names lives in the base layer.
``register`` still adds a class in-process (notebooks, tests). Entry points are loaded on first use (so
`mmcurate stages` and `import curate` stay cheap, and torch/transformers load only inside a model stage's
setup()). An import error in one of them is a bug and surfaces as itself: it is never mistaken for
"unknown stage".
"""
from __future__ import annotations

import dataclasses
from importlib import metadata
from typing import Any, Mapping

from curate.base.stage import ALL_COLUMNS, Stage, StageContext

_REGISTRY: dict[str, type[Stage]] = {}

ENTRY_POINT_GROUP = "mmcurate.stages"

_loaded = False


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage available to recipes under `cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"stage name {cls.name!r} registered twice ({existing.__qualname__}, {cls.__qualname__})")
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a stage (tests and plugin reloads)."""
    _REGISTRY.pop(name, None)


def stage_entry_points() -> list[metadata.EntryPoint]:
    """Every installed ``mmcurate.stages`` entry point (this package's and plugins')."""
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def load_entry_points() -> None:
    """Load every stage entry point once. Errors propagate unchanged (a broken module is a bug)."""
    global _loaded
    if _loaded:
        return
    points = stage_entry_points()
    if not points:
        raise RuntimeError(f"no {ENTRY_POINT_GROUP!r} entry points are installed: install the package "
                           "(`make install`, or `pip install -e .`) so that its stages can be found")
    for ep in points:
        cls = ep.load()
        if getattr(cls, "name", None) != ep.name:
            raise ValueError(f"entry point {ep.name!r} = {ep.value!r} loads a stage named {getattr(cls, 'name', None)!r}")
        register(cls)
    _loaded = True


def registry() -> dict[str, type[Stage]]:
    load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> type[Stage]:
    reg = registry()
    if name not in reg:
        raise KeyError(f"unknown stage {name!r}; known stages: {', '.join(reg)}")
    return reg[name]


def build(name: str, settings: Mapping[str, Any] | None = None, context: StageContext | None = None) -> Stage:
    """A stage instance from its recipe name and settings; unknown settings are named in the error."""
    cls = get(name)
    cfg_fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(settings or {}) - cfg_fields
    if unknown:
        raise ValueError(f"stage {name!r}: unknown setting(s) {sorted(unknown)}; known: {sorted(cfg_fields)}")
    return cls(context=context, **dict(settings or {}))


def columns_read(name: str) -> tuple[str, ...]:
    """The columns stage `name` reads that an earlier stage wrote (its class's ``requires`` and
    ``reads_if_present``), for ``StageContext.later_reads``; ("*",) — every column — for a name no
    installed stage has (a plugin not imported where only a recipe is validated). ``global_columns``
    do not count: they are what the runner hands a global step, which passes along more than it
    reads (``shards`` takes "*" and writes only the columns it names; ``repeated_images`` realigns
    ``image_facts`` with the images it removes, null or not)."""
    try:
        cls = get(name)
    except KeyError:
        return ALL_COLUMNS
    return (*cls.requires, *cls.reads_if_present)
