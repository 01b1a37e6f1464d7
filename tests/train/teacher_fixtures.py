"""Tiny teacher configs for the tests (the dataset comes from signal_data.py)."""

from __future__ import annotations

from pathlib import Path

from signal_data import make_signal_dataset


def make_dataset(root: Path, rows: int = 160, num_folds: int = 4, seed: int = 0) -> Path:
    return make_signal_dataset(root, rows=rows, num_folds=num_folds, seed=seed)


def tiny_config(dataset_dir: Path, storage: Path, run_name: str, **sections) -> dict:
    """A teacher config dict (before validation); `sections` update it, e.g. training={"max_steps": 4}."""
    config = {
        "data": {"dataset_dir": str(dataset_dir), "fold": 0, "num_folds": 4},
        "model": {"arch": "llama", "hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                  "intermediate_size": 128, "head": "linear"},
        "format": {"template": "llama3", "max_length": 128, "label_mode": "2class"},
        "training": {"lr": 2e-3, "global_batch": 8, "micro_batch": 2, "epochs": 2, "seed": 3, "log_every": 2,
                     "eval_every": None, "checkpoint_every": None, "warmup_steps": 0, "schedule": "constant",
                     # tiny model: partition every parameter (the default threshold would keep them all whole)
                     "ds_overrides": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}},
        "ray": {"num_workers": 2, "cpus_per_worker": 1, "storage_path": str(storage), "max_failures": 0},
        "output": {"run_name": run_name},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config
