"""mmcurate.curate — sample records, readers, the stage contract and the curation stages.

Notebook use::

    import curate
    read = curate.read_source("data/sample/caption/*.tar", format="webdataset", source="laion", category="caption")
    stage = curate.build_stage("text_filter", {"min_words": 3})
    result = stage.run(read.kept)      # read.dropped + result.kept + result.dropped = every row read
    curate.grounding.validate("<|box_start|>(010,020),(300,400)<|box_end|>")
"""
from __future__ import annotations

import importlib
from typing import Any

from curate.base import BatchResult, Drop, Resources, Stage, StageContext, register, split_drops  # noqa: F401
from curate.base import build as build_stage  # noqa: F401
from curate.base import get as get_stage  # noqa: F401
from curate.base import registry as stages  # noqa: F401

_LAZY = {
    "read_source": "curate.readers.read",
    "grounding": "curate.grounding",   # a submodule
    "records": "curate.base",
    "images": "curate.media.images",   # a submodule (moved from curate.images)
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod = _LAZY[name]
        if mod.endswith(f".{name}") or mod == f"curate.{name}":
            return importlib.import_module(mod)
        return getattr(importlib.import_module(mod), name)
    raise AttributeError(f"module 'curate' has no attribute {name!r}")
