"""A deliberately slow, deterministic stage, so that tests can kill a run in the middle of a stage."""
from __future__ import annotations

import time
from dataclasses import dataclass

import pyarrow as pa

from curate.base import BatchResult, Drop, Resources, Stage, register, split_drops


@register
class SlowCaptionLength(Stage):
    name = "slow_caption_length"
    description = "Test-only: records caption length, rejects long captions, sleeps per batch."
    requires = ("text",)
    adds = {"text_tokens": pa.int64()}
    resources = Resources(cpus=1, batch_size=4)

    @dataclass
    class Config:
        seconds_per_batch: float = 0.2
        max_words: int = 30

    def process_batch(self, batch: pa.Table) -> BatchResult:
        time.sleep(self.config.seconds_per_batch)
        words = [len((t or "").split()) for t in batch.column("text").to_pylist()]
        batch = batch.append_column("text_tokens", pa.array(words, type=pa.int64()))
        return split_drops(batch, [None if w <= self.config.max_words else Drop("too_many_words") for w in words])


@register
class ActorCaptionLength(SlowCaptionLength):
    """The same, as an actor-pool stage (a model stage's shape, without a model)."""
    name = "actor_caption_length"
    description = "Test-only: slow_caption_length run by an actor pool (adds caption_words)."
    adds = {"caption_words": pa.int64()}
    resources = Resources(cpus=1, batch_size=4, kind="actor", concurrency=1)

    def process_batch(self, batch: pa.Table) -> BatchResult:
        time.sleep(self.config.seconds_per_batch)
        words = [len((t or "").split()) for t in batch.column("text").to_pylist()]
        batch = batch.append_column("caption_words", pa.array(words, type=pa.int64()))
        return split_drops(batch, [None if w <= self.config.max_words else Drop("too_many_words") for w in words])
