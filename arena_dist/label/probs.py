"""Probability arithmetic shared by scoring and ensembles (numpy only)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

EPS = 1e-12


def swap_back(p_swapped: np.ndarray) -> np.ndarray:
    """Probabilities of the swapped input, (B', A'[, tie]) seen from the original order: exchange columns 0 and 1.

    The swapped input shows the original B as "A", so its P(A wins) is the original P(B wins); tie stays a tie.
    """
    p_swapped = np.asarray(p_swapped, dtype=np.float64)
    mapped = p_swapped.copy()
    mapped[:, 0], mapped[:, 1] = p_swapped[:, 1], p_swapped[:, 0]
    return mapped


def swap_average(p_ab: np.ndarray, p_ba_mapped: np.ndarray | None) -> np.ndarray:
    """Mean of both orders (each row sums to 1 because both inputs do); `p_ab` alone without swap-TTA."""
    p_ab = np.asarray(p_ab, dtype=np.float64)
    if p_ba_mapped is None:
        return p_ab.copy()
    return (p_ab + np.asarray(p_ba_mapped, dtype=np.float64)) / 2.0


def prob_mean(members: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    stacked = np.stack([np.asarray(m, dtype=np.float64) for m in members])
    w = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
    mean = np.tensordot(w / w.sum(), stacked, axes=1)
    return mean / mean.sum(axis=1, keepdims=True)


def logit_mean(members: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """softmax(mean of log-probabilities) — the mean of logits, since a softmax ignores each member's shift."""
    stacked = np.stack([np.log(np.clip(np.asarray(m, dtype=np.float64), EPS, 1.0)) for m in members])
    w = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
    mean = np.tensordot(w / w.sum(), stacked, axes=1)
    mean -= mean.max(axis=1, keepdims=True)
    exp = np.exp(mean)
    return exp / exp.sum(axis=1, keepdims=True)
