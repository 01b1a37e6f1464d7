import math

import numpy as np
import pytest

from arena_dist.classes import from_p_a, to_classes
from arena_dist.evaluate import metrics


def test_log_loss_and_accuracy_match_hand_computation():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.7, 0.2], [0.2, 0.2, 0.6], [0.6, 0.3, 0.1]])
    labels = np.array([0, 1, 2, 1])
    expected = -(math.log(0.5) + math.log(0.7) + math.log(0.6) + math.log(0.3)) / 4
    assert metrics.log_loss(probs, labels) == pytest.approx(expected, rel=1e-12)
    assert metrics.accuracy(probs, labels) == 0.75


def test_log_loss_normalises_rows_and_clips_zeros():
    probs = np.array([[2.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    labels = np.array([0, 0])
    expected = -(math.log(0.5) + math.log(1e-15)) / 2
    assert metrics.log_loss(probs, labels) == pytest.approx(expected, rel=1e-12)


def test_two_class_restriction_drops_the_tie_mass():
    probs = np.array([[0.3, 0.1, 0.6]])
    two = to_classes(probs, 2)
    assert np.allclose(two, [[0.75, 0.25]])
    assert metrics.log_loss(two, np.array([1])) == pytest.approx(-math.log(0.25))


def test_group_metrics():
    probs = np.array([[0.8, 0.2], [0.4, 0.6], [0.9, 0.1]])
    labels = np.array([0, 0, 1])
    rows = metrics.group_metrics(probs, labels, np.array(["en", "ru", "en"]))
    assert [r["group"] for r in rows] == ["en", "ru"]
    en = rows[0]
    assert en["n"] == 2 and en["accuracy"] == 0.5
    assert en["log_loss"] == pytest.approx(-(math.log(0.8) + math.log(0.1)) / 2)
    assert rows[1]["log_loss"] == pytest.approx(-math.log(0.4))


def test_calibration_bins_and_ece():
    confidence = np.array([0.05, 0.15, 0.95, 0.91, 1.0])
    hit = np.array([0, 1, 1, 0, 1])
    bins = metrics.calibration_bins(confidence, hit, n_bins=10)
    assert [b["n"] for b in bins] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 3]
    assert bins[2]["mean_predicted"] is None
    assert bins[9]["mean_predicted"] == pytest.approx((0.95 + 0.91 + 1.0) / 3)
    assert bins[9]["observed"] == pytest.approx(2 / 3)
    expected = (1 * 0.05 + 1 * 0.85 + 3 * abs((0.95 + 0.91 + 1.0) / 3 - 2 / 3)) / 5
    assert metrics.expected_calibration_error(bins) == pytest.approx(expected)


def test_two_class_restriction_refuses_a_row_all_on_tie():
    with pytest.raises(ValueError, match="row 1 has no probability on the first 2 classes"):
        to_classes(np.array([[0.3, 0.1, 0.6], [0.0, 0.0, 1.0]]), 2)


def test_metrics_of_no_rows_are_none_not_nan():
    empty = np.zeros((0, 3))
    labels = np.zeros(0, dtype=int)
    assert metrics.log_loss(empty, labels) is None and metrics.accuracy(empty, labels) is None
    assert metrics.expected_calibration_error(metrics.top_label_calibration(empty, labels, 5)) is None


def test_one_class_layout_converter_both_ways():
    two = np.array([[0.2, 0.6], [0.5, 0.5]])
    three = to_classes(two, 3)
    assert np.allclose(three, [[0.25, 0.75, 0.0], [0.5, 0.5, 0.0]])  # tie 0, rows renormalised
    assert np.allclose(to_classes(three, 2), [[0.25, 0.75], [0.5, 0.5]])
    assert np.allclose(to_classes(from_p_a(np.array([0.9])), 3), [[0.9, 0.1, 0.0]])
    with pytest.raises(ValueError, match="expected"):
        to_classes(np.ones((2, 4)), 3)
