"""Prediction: test files -> model probabilities (token-budget batches, swap-TTA, second-model blend) -> a checked
competition submission."""
