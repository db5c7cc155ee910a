"""Mixture: the recipe's ratios (one or two levels, samples or tokens, with a budget) made real.

``targets`` turns settings into leaf shares, ``plan`` is the seeded, partition-independent selection
(partial aggregates -> plan -> per-row copies), ``report`` the per-level numbers, ``stage`` the
registered `mixture` stage.
"""
from curate.mixture.plan import repeat_key, repeat_ordinal, seeded_rank
from curate.mixture.stage import REPEAT_OF, REPEAT_SOURCE, MixtureShortfall, MixtureStage

__all__ = ["MixtureStage", "MixtureShortfall", "REPEAT_OF", "REPEAT_SOURCE", "seeded_rank", "repeat_key",
           "repeat_ordinal"]
