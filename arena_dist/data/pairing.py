"""Which pairs a set of rated completions gives, and their labels (pure: no I/O).

Rated sets (UltraFeedback: one prompt, N completions each with a score) and scored pairs (UltraFeedback binarized:
chosen/rejected with `score_chosen`/`score_rejected`) both become comparisons by the same rule, so the same two
completions give the same record whichever file shape they come from.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import Field

from arena_dist.config import StrictModel


class PairingConfig(StrictModel):
    # best_vs_worst: one pair per prompt, the highest score against the lowest.
    # all_pairs_above_gap: every pair whose scores differ by at least min_gap.
    rule: Literal["best_vs_worst", "all_pairs_above_gap"] = "best_vs_worst"
    min_gap: float = Field(0.0, ge=0.0)
    # True (3-class): equal scores give a tie. False (2-class): equal scores give no pair.
    ties: bool = True
    score_key: str = "overall_score"  # a completion's score (UltraFeedback; the binarized layout has its own columns)
    response_key: str = "response"
    model_key: str = "model"


class Pair(NamedTuple):
    winner: int  # completion indices; on a tie, winner is simply the earlier one
    loser: int
    tie: bool


def pair_of(first: int, second: int, scores: list[float], config: PairingConfig) -> Pair | None:
    """The pair of two completions under the gap and tie rules, or None when the rule gives none."""
    gap = abs(scores[first] - scores[second])
    if gap < config.min_gap or (gap == 0 and not config.ties):
        return None
    if scores[second] > scores[first]:
        return Pair(second, first, False)
    return Pair(first, second, gap == 0)


def select_pairs(scores: list[float], config: PairingConfig) -> list[Pair]:
    if len(scores) < 2:
        return []
    if config.rule == "best_vs_worst":
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # the first of the best
        worst = min((i for i in range(len(scores)) if i != best), key=lambda i: (scores[i], i))
        pair = pair_of(min(best, worst), max(best, worst), scores, config)
        return [] if pair is None else [pair]
    pairs = (pair_of(i, j, scores, config) for i in range(len(scores)) for j in range(i + 1, len(scores)))
    return [pair for pair in pairs if pair is not None]
