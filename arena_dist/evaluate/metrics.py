"""Metrics on arrays (numpy only): the competitions' log loss and accuracy, grouped tables, calibration bins.

Log loss follows the LMSYS rule: each row is divided by its sum, then clipped to [1e-15, 1 − 1e-15]. For a 2-class
task (WSDM) scored from 3-class probabilities the tie column is dropped and A/B renormalised; accuracy is the argmax
over the task's classes. A metric of no rows is None, never NaN, so every summary stays strict JSON.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-15


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float | None:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return None
    probs = probs / probs.sum(axis=1, keepdims=True)
    picked = np.clip(probs[np.arange(len(labels)), labels], EPS, 1 - EPS)
    return float(-np.log(picked).mean())


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float | None:
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return None
    return float((np.asarray(probs).argmax(axis=1) == labels).mean())


def group_metrics(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> list[dict]:
    """One row per group value: n, log_loss, accuracy; largest groups first, then by name."""
    groups = np.asarray(groups).astype(str)
    rows = []
    for value in np.unique(groups):
        pick = groups == value
        rows.append({"group": str(value), "n": int(pick.sum()), "log_loss": log_loss(probs[pick], labels[pick]),
                     "accuracy": accuracy(probs[pick], labels[pick])})
    rows.sort(key=lambda row: (-row["n"], row["group"]))
    return rows


def calibration_bins(confidence: np.ndarray, hit: np.ndarray, n_bins: int) -> list[dict]:
    """Equal-width bins over [0, 1] of a predicted probability vs the observed frequency of the event (None when
    a bin is empty, so the JSON stays strict)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(hit, dtype=np.float64)
    index = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    bins = []
    for b in range(n_bins):
        pick = index == b
        n = int(pick.sum())
        bins.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": n,
                     "mean_predicted": float(confidence[pick].mean()) if n else None,
                     "observed": float(hit[pick].mean()) if n else None})
    return bins


def expected_calibration_error(bins: list[dict]) -> float | None:
    total = sum(b["n"] for b in bins)
    if not total:
        return None
    return float(sum(b["n"] * abs(b["mean_predicted"] - b["observed"]) for b in bins if b["n"]) / total)


def top_label_calibration(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> list[dict]:
    """Confidence of the predicted class vs how often it was right."""
    probs = np.asarray(probs, dtype=np.float64)
    return calibration_bins(probs.max(axis=1), probs.argmax(axis=1) == np.asarray(labels), n_bins)


def class_calibration(probs: np.ndarray, labels: np.ndarray, cls: int, n_bins: int) -> list[dict]:
    """Predicted P(class) vs the observed frequency of that class."""
    return calibration_bins(np.asarray(probs)[:, cls], np.asarray(labels) == cls, n_bins)
