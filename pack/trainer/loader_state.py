"""Checking a saved loader state before a resume uses any of it.

Why a whole check, not field by field as they are used: a state comes from a checkpoint file that a
person may have edited, merged or truncated, and ``int("-3")`` is happily an epoch. A state that
resumes at epoch -3, or at a position past the rank's packs, or with counters that are not counts,
would train on the wrong data without a word. So every field is checked for its type and range, and
the fields are checked against each other (``packs_consumed`` is what ``epoch`` and ``position`` say
was consumed), and the first problem is an error naming the field and the value.
"""
from __future__ import annotations

import numbers
from typing import Any, Mapping

FIELDS = ("version", "shards", "rank", "world_size", "shuffle", "seed", "epoch", "position", "packs_consumed",
          "consumed_samples", "consumed_tokens")


class LoaderStateError(ValueError):
    """A saved loader state that cannot be resumed from; the message names the field."""


def _int(state: Mapping[str, Any], name: str, low: int = 0) -> int:
    value = state[name]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise LoaderStateError(f"loader state: {name} must be an integer, got {type(value).__name__} {value!r}")
    if value < low:
        raise LoaderStateError(f"loader state: {name} must be >= {low}, got {value}")
    return int(value)


def _counts(state: Mapping[str, Any], name: str) -> dict[str, int]:
    value = state[name]
    if not isinstance(value, Mapping):
        raise LoaderStateError(f"loader state: {name} must be a mapping of source -> count, got {type(value).__name__}")
    out = {}
    for source, n in value.items():
        if not isinstance(source, str):
            raise LoaderStateError(f"loader state: {name} has a non-text source name {source!r}")
        out[source] = _int({f"{name}[{source!r}]": n}, f"{name}[{source!r}]")
    return out


def check_state(state: Any, version: int, num_packs: int) -> dict[str, Any]:
    """The state's fields, typed and in range for a rank of `num_packs` packs, or LoaderStateError.
    Identity fields (shards, rank, world_size, shuffle, seed) are type-checked here and compared with
    the loader by its caller."""
    if not isinstance(state, Mapping):
        raise LoaderStateError(f"loader state must be a mapping, got {type(state).__name__}")
    missing = [f for f in FIELDS if f not in state]
    if missing:
        raise LoaderStateError(f"loader state: missing {', '.join(missing)}")
    unknown = sorted(set(state) - set(FIELDS), key=str)
    if unknown:
        raise LoaderStateError(f"loader state: unknown field(s) {', '.join(map(repr, unknown))}")
    if state["version"] != version or isinstance(state["version"], bool):
        raise LoaderStateError(f"loader state version {state['version']!r}, expected {version}")
    if not isinstance(state["shards"], str):
        raise LoaderStateError(f"loader state: shards must be the shards' identity (text), got {state['shards']!r}")
    if not isinstance(state["shuffle"], bool):
        raise LoaderStateError(f"loader state: shuffle must be true or false, got {state['shuffle']!r}")
    out: dict[str, Any] = {"version": version, "shards": state["shards"], "shuffle": state["shuffle"]}
    out["rank"], out["world_size"] = _int(state, "rank"), _int(state, "world_size", low=1)
    out["seed"] = _int(state, "seed", low=-(1 << 63))
    out["epoch"], out["position"] = _int(state, "epoch"), _int(state, "position")
    out["packs_consumed"] = _int(state, "packs_consumed")
    if out["position"] >= max(num_packs, 1):
        raise LoaderStateError(f"cannot resume: position {out['position']} outside this rank's {num_packs} packs")
    expected = out["epoch"] * num_packs + out["position"]
    if out["packs_consumed"] != expected:
        raise LoaderStateError(f"loader state: packs_consumed={out['packs_consumed']} but epoch {out['epoch']} and "
                               f"position {out['position']} of {num_packs} packs mean {expected} were consumed")
    out["consumed_samples"] = _counts(state, "consumed_samples")
    out["consumed_tokens"] = _counts(state, "consumed_tokens")
    if set(out["consumed_samples"]) != set(out["consumed_tokens"]):
        raise LoaderStateError("loader state: consumed_samples and consumed_tokens name different sources")
    return out
