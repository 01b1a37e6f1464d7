"""The class layouts of a preference, (A, B) for WSDM-style 2-class tasks and (A, B, tie) for LMSYS, and the one
converter between them (numpy only). Predict, evaluate and the synthetic generator all go through it, so a model,
a predictions file and an answers file are compared in the same layout."""

from __future__ import annotations

import numpy as np


def to_classes(probs: np.ndarray, num_classes: int) -> np.ndarray:
    """(A, B[, tie]) probabilities as `num_classes` columns, each row renormalised: 2 -> 3 adds tie = 0, 3 -> 2
    drops the tie and renormalises A/B. A row with nothing on the kept classes (all its mass on tie) has no 2-class
    reading: refused (ValueError naming the row), where dividing would give NaN and an argmax of A."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] not in (2, 3) or num_classes not in (2, 3):
        raise ValueError(f"expected (rows, 2 or 3) probabilities into 2 or 3 classes, got {probs.shape} into "
                         f"{num_classes}")
    if probs.shape[1] < num_classes:
        probs = np.hstack([probs, np.zeros((len(probs), num_classes - probs.shape[1]))])
    probs = probs[:, :num_classes]
    sums = probs.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise ValueError(f"row {int(np.argmax(sums[:, 0] <= 0))} has no probability on the first {num_classes} classes")
    return probs / sums


def from_p_a(p_a: np.ndarray) -> np.ndarray:
    """P(A wins) of a 2-class task -> (A, B) columns."""
    p_a = np.asarray(p_a, dtype=np.float64).reshape(-1)
    return np.stack([p_a, 1.0 - p_a], axis=1)
