"""The student: soft-label joining, the config, the recipe of the shared training loop, exports and merges."""
