"""Small per-partition results that workers leave beside the output for the driver.

A distributed step's decisions flow back through the executor, but the shard writers also produce
a result per shard (its checksum, sizes, failures) that the driver needs to write the manifest.
Workers write them as JSON files under a directory of the run's output (the one location every
worker and the driver share); the driver reads them once the step has run and removes the
directory. JSON, never pickle. (Numbers for report.json do not come this way: a global step
returns them, see curate.base.global_data.StepResult.)
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any


def write_partial(directory: str, index: int, doc: dict[str, Any]) -> None:
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{index:09d}.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(doc, fh, sort_keys=True)
    os.replace(tmp, os.path.join(directory, f"{index:09d}.json"))


def read_partials(directory: str, remove: bool = True) -> dict[int, dict[str, Any]]:
    """{index: doc} of every partial written under `directory`."""
    out: dict[int, dict[str, Any]] = {}
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            if name.endswith(".json") and not name.startswith("."):
                with open(os.path.join(directory, name)) as fh:
                    out[int(name.split(".")[0])] = json.load(fh)
        if remove:
            shutil.rmtree(directory)
    return out
