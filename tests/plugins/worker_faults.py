"""Test-only stages that SIGKILL the Ray worker process running them, once per run: the fault "a Ray
worker dies mid-stage" (issue 26), at a chosen place and deterministically.

``kill_once_caption_length`` is an actor-pool (model-like) stage that kills its actor's process in
its second batch; ``kill_once_exact_dedup`` is ``exact_dedup`` whose shuffle reduce kills the worker
running it. Each kills only when the environment names a directory in ``MMCURATE_KILL_ONCE_DIR``
(the first process to create ``<dir>/<stage name>`` dies; every retry after finds the file), and
only inside a Ray worker (its process title is ``ray::...``): an inline run, or a run without the
variable, is the undisturbed run with the very same recipe.
"""
from __future__ import annotations

import os
import signal
from typing import Any, Callable

import pyarrow as pa

from curate.base import BatchResult, Resources, register
from curate.base.global_data import step_result
from curate.dedup.exact_stage import ExactDedupStage
from tests.plugins.slow_stage import SlowCaptionLength

KILL_DIR = "MMCURATE_KILL_ONCE_DIR"


def _in_ray_worker() -> bool:
    with open("/proc/self/cmdline", "rb") as fh:
        return fh.read().startswith(b"ray::")


def kill_once(what: str) -> None:
    """SIGKILL this process if it is the first, in this run, to get here for `what`."""
    directory = os.environ.get(KILL_DIR)
    if not directory or not _in_ray_worker():
        return
    try:
        os.close(os.open(os.path.join(directory, what), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


@register
class KillOnceCaptionLength(SlowCaptionLength):
    name = "kill_once_caption_length"
    description = "Test-only: slow_caption_length in an actor pool whose actor process is killed once, mid-stage."
    resources = Resources(cpus=1, batch_size=4, kind="actor", concurrency=1)

    def setup(self) -> None:
        self.batches = 0

    def process_batch(self, batch: pa.Table) -> BatchResult:
        self.batches += 1
        if self.batches == 2:   # mid-stage: one batch of this actor already done
            kill_once(self.name)
        return super().process_batch(batch)


class _KillingData:
    """A GlobalData whose shuffle reduces go through `kill_once` first (everything else passes through)."""

    def __init__(self, data: Any, what: str):
        self.data, self.what = data, what

    def shuffle_reduce(self, key: str, fn: Callable[[pa.Table], pa.Table], partitions: int) -> "_KillingData":
        what = self.what

        def reduce(group: pa.Table) -> pa.Table:
            kill_once(what)
            return fn(group)
        return _KillingData(self.data.shuffle_reduce(key, reduce, partitions), what)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.data, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            args = tuple(a.data if isinstance(a, _KillingData) else a for a in args)
            out = attr(*args, **kwargs)
            return _KillingData(out, self.what) if type(out) is type(self.data) else out
        return call


@register
class KillOnceExactDedup(ExactDedupStage):
    name = "kill_once_exact_dedup"
    description = "Test-only: exact_dedup whose shuffle reduce kills the Ray worker running it, once."

    def global_step(self, data: Any) -> Any:
        step = step_result(super().global_step(_KillingData(data, self.name)))
        if isinstance(step.decisions, _KillingData):
            step.decisions = step.decisions.data
        return step
