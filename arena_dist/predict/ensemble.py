"""The ensemble's arithmetic (numpy only): each row's probability from the passes done on it, and the uncertainty
that decides which rows a refinement pass takes first.

A pass is one member scoring rows in one order: direct (A, B) or swapped (B, A), the swapped probabilities mapped
back to (A, B). For row i, with O(i, m) the orders member m has scored it in and M(i) the members with at least one:

    p(i, m) = mean over o in O(i, m) of p(i, m, o)
    p(i)    = sum over m in M(i) of w(m) * p(i, m)  /  sum over m in M(i) of w(m)

so within a member the two orders count equally, and across members the configured weights are renormalised over
the members that scored that row. A row that only member 0's direct pass has reached is that pass's probability.

Uncertainty, highest first: `entropy` = -sum p log p over the classes; `margin` = 1 - |p(A) - p(B)| (a tie-heavy row
is uncertain too). Ties are broken by row order, so the order is deterministic.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

UNCERTAINTY_MEASURES = ("entropy", "margin")


def uncertainty(probs: np.ndarray, measure: str) -> np.ndarray:
    if measure == "entropy":
        p = np.clip(probs, 1e-12, 1.0)
        return -(p * np.log(p)).sum(axis=1)
    if measure == "margin":
        return 1.0 - np.abs(probs[:, 0] - probs[:, 1])
    raise ValueError(f"uncertainty measure must be one of {UNCERTAINTY_MEASURES}, got {measure!r}")


def most_uncertain_first(probs: np.ndarray, rows: np.ndarray, measure: str) -> np.ndarray:
    """`rows` (indices) ordered by the uncertainty of their probabilities, highest first, then by row index."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.lexsort((rows, -uncertainty(probs[rows], measure)))
    return rows[order]


class Ensemble:
    """Each pass's probabilities and the rows it has scored; `combined()` is the formula of the module docstring."""

    def __init__(self, num_rows: int, weights: Sequence[float], num_classes: int):
        weights = np.asarray(weights, dtype=np.float64)
        if (weights <= 0).any():
            raise ValueError(f"member weights must be positive, got {weights.tolist()}")
        self.weights = weights / weights.sum()
        self.num_rows, self.num_classes = num_rows, num_classes
        # (member, swap) -> probabilities (rows x classes; zero where not scored) and the rows scored
        self.probs: dict[tuple[int, bool], np.ndarray] = {}
        self.scored: dict[tuple[int, bool], np.ndarray] = {}

    def done(self, member: int, swap: bool) -> np.ndarray:
        return self.scored.get((member, swap), np.zeros(self.num_rows, dtype=bool))

    def record(self, member: int, swap: bool, rows: np.ndarray, probs: np.ndarray) -> None:
        """`probs`: the member's probabilities of `rows` in this order, already in (A, B[, tie]) of the task."""
        key = (member, swap)
        if key not in self.probs:
            self.probs[key] = np.zeros((self.num_rows, self.num_classes))
            self.scored[key] = np.zeros(self.num_rows, dtype=bool)
        self.probs[key][rows] = probs
        self.scored[key][rows] = True

    def combined(self) -> np.ndarray:
        total = np.zeros((self.num_rows, self.num_classes))
        weight = np.zeros(self.num_rows)
        for member, w in enumerate(self.weights):
            orders = [(self.probs[k], self.scored[k]) for k in ((member, False), (member, True)) if k in self.probs]
            if not orders:
                continue
            count = sum(scored.astype(np.float64) for _, scored in orders)
            summed = sum(probs for probs, _ in orders)  # zero where an order did not score the row
            has = count > 0
            total[has] += w * summed[has] / count[has, None]
            weight[has] += w
        if (weight == 0).any():
            raise ValueError(f"row {int(np.argmax(weight == 0))} has not been scored by any member")
        return total / weight[:, None]
