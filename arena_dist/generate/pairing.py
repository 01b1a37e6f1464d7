"""Which two generators answer a prompt: a seeded, weighted draw of two distinct models per prompt id.

Drawn from a hash of (seed, prompt id) rather than a shared random stream, so a prompt's pair does not depend on
which actor handles its shard, in which order shards finish, or whether the run was resumed: a rerun of a shard
writes the same pair. Sides are part of the draw (the first drawn is A), so no model sits in A more than chance says.
"""

from __future__ import annotations

from typing import Sequence

from arena_dist.data.normalize import hash64

_UNIT = float(2**64)


def _uniform(seed: int, prompt_id: str, draw: int) -> float:
    return hash64(prompt_id, salt=f"generate-pair/{seed}/{draw}") / _UNIT


def _weighted_pick(ids: Sequence[str], weights: Sequence[float], u: float) -> int:
    total = sum(weights)
    point, running = u * total, 0.0
    for index, weight in enumerate(weights):
        running += weight
        if point < running:
            return index
    return len(ids) - 1  # u * total rounded up to the sum


def pick_pair(prompt_id: str, generator_ids: Sequence[str], weights: Sequence[float] | None = None,
              seed: int = 0) -> tuple[str, str]:
    """(model_a, model_b), two distinct generators; each drawn in proportion to its weight (equal by default), the
    second from the ones left."""
    if len(generator_ids) < 2:
        raise ValueError(f"two distinct generators are needed per prompt, got {len(generator_ids)}")
    weights = list(weights) if weights is not None else [1.0] * len(generator_ids)
    ids = list(generator_ids)
    first = _weighted_pick(ids, weights, _uniform(seed, prompt_id, 0))
    model_a = ids.pop(first)
    weights.pop(first)
    model_b = ids[_weighted_pick(ids, weights, _uniform(seed, prompt_id, 1))]
    return model_a, model_b
