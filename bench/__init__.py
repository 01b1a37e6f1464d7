"""Benchmarks: `python -m bench.<name>` writes bench/results/<name>.json (never timed assertions in tests)."""
