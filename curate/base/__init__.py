"""The base layer: records, the stage contract, verdicts, the registry, inline execution with
accounting, and the global-data protocol whole-dataset steps are written against.

It imports nothing above it (no domain stage, no `pipelines`, no Ray): `curate/` domain code and
`pack/` build on it, and `pipelines/` adds recipes, the Ray executor and the CLI on top.
"""
from curate.base import records  # noqa: F401
from curate.base.global_data import StepResult  # noqa: F401
from curate.base.registry import build, columns_read, get, register, registry, unregister  # noqa: F401
from curate.base.stage import (  # noqa: F401
    ALL_COLUMNS, BadSample, BatchResult, Resources, Stage, StageContext, error_detail, set_status,
)
from curate.base.drops import Drop, split_drops  # noqa: F401
