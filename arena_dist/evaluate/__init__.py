"""Scoring predictions against answers: log loss, accuracy, per-language / per-source tables, calibration."""
