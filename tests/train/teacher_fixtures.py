"""A small prepared dataset with an easy, learnable preference signal, and tiny teacher configs for the tests."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WORDS = "the a of to and in is it you that for on with as are this be at or have from".split()


def write_signal_parquet(path: Path, rows: int, seed: int = 0, repeats: int = 1) -> Path:
    """WSDM-format rows: the preferred response contains 'excellent', the other 'awful' (`repeats` times each,
    at random positions)."""
    rng = random.Random(seed)
    out = []
    for i in range(rows):
        def text(marker: str) -> str:
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
            for _ in range(repeats):
                words.insert(rng.randint(0, len(words)), marker)
            return " ".join(words)

        winner = rng.choice(["model_a", "model_b"])
        good, bad = text("excellent"), text("awful")
        response_a, response_b = (good, bad) if winner == "model_a" else (bad, good)
        out.append({
            "id": f"r{i}", "prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + f" q{i}",
            "response_a": response_a, "response_b": response_b, "winner": winner,
            "model_a": rng.choice(["gpt-4", "llama-3"]), "model_b": rng.choice(["claude", "qwen"]),
            "language": "English",
        })
    pq.write_table(pa.Table.from_pylist(out), path)
    return path


def make_dataset(root: Path, rows: int = 160, num_folds: int = 4, seed: int = 0, repeats: int = 3) -> Path:
    from arena_dist.data.sources import SourceConfig
    from arena_dist.data.store import build_dataset

    source = write_signal_parquet(root / "signal.parquet", rows, seed, repeats)
    out = root / "dataset"
    build_dataset([SourceConfig(name="signal", kind="wsdm_parquet", path=source)], out, num_shards=2,
                  num_folds=num_folds, seed=seed)
    return out


def tiny_config(dataset_dir: Path, storage: Path, run_name: str, **sections) -> dict:
    """A teacher config dict (before validation); `sections` deep-update it, e.g. training={"max_steps": 4}."""
    config = {
        "data": {"dataset_dir": str(dataset_dir), "fold": 0, "num_folds": 4},
        "model": {"arch": "llama", "hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                  "intermediate_size": 128, "head": "linear"},
        "format": {"template": "llama3", "max_length": 128, "label_mode": "2class"},
        "training": {"lr": 2e-3, "global_batch": 8, "micro_batch": 2, "epochs": 2, "seed": 3, "log_every": 2,
                     "eval_every": 0, "checkpoint_every": 0, "warmup_steps": 0, "schedule": "constant",
                     # tiny model: partition every parameter (the default threshold would keep them all whole)
                     "ds_overrides": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}},
        "ray": {"num_workers": 2, "cpus_per_worker": 1, "storage_path": str(storage), "max_failures": 0},
        "output": {"run_name": run_name},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config
