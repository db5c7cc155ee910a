"""Dedup and decontamination: exact_dedup, text_dedup, image_dedup, decontaminate.

Modules by job: ``normalize`` (text normal forms, content hashes), ``minhash`` (signatures, band
choice), ``phash`` (perceptual hashes, bit-sampling LSH), ``lsh`` (buckets -> verified chained
edges), ``star_components`` (connected components as large/small-star rounds of shuffle_reduce),
``components`` (scipy, the one-process oracle), ``survivor`` (which copy survives), ``global_step``
(the distributed steps as table functions), ``base`` (the shared global step), one module per stage.
"""
from curate.dedup.decontaminate import DecontaminateStage
from curate.dedup.exact_stage import ExactDedupStage
from curate.dedup.image_stage import ImageDedupStage
from curate.dedup.text_stage import TextDedupStage

__all__ = ["DecontaminateStage", "ExactDedupStage", "ImageDedupStage", "TextDedupStage"]
