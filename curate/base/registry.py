"""Stage registry: recipe names -> stage classes.

Built-in stage modules are imported on first use (so `mmcurate stages` and `import curate` stay cheap,
and torch/transformers load only inside a model stage's setup()). An import error in one of them is a
bug in this package and surfaces as itself: it is never mistaken for "unknown stage".
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping

from curate.base.stage import Stage, StageContext

_REGISTRY: dict[str, type[Stage]] = {}

# Every module that defines built-in stages. Each must exist and import cleanly (a test checks it).
BUILTIN_STAGE_MODULES = (
    "curate.readers.ingest_stage",
    "curate.dedup",
    "curate.mixture",
    "curate.filters.annotations",
    "curate.filters.image_rules",
    "curate.filters.text_rules",
    "curate.documents.document_filter",
    "curate.documents.repeated_images",
    "curate.scoring.stages",
    "curate.grounding.stage",
    "curate.ocr.stage",
    "curate.safety.stage",
    "curate.mllm.score_stage",
    "curate.mllm.recaption_stage",
    "curate.embed",
    "curate.cluster",
    "pack.tokens.stage",
    "pack.packing.stage",
    "pack.shards.stage",
)

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


def load_builtins() -> None:
    """Import every built-in stage module once. Errors propagate unchanged (a broken module is a bug)."""
    global _loaded
    if _loaded:
        return
    for mod in BUILTIN_STAGE_MODULES:
        importlib.import_module(mod)
    _loaded = True


def registry() -> dict[str, type[Stage]]:
    load_builtins()
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
