"""A small prepared dataset with an easy, learnable preference signal (tests, benchmark, smoke runs)."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = "the a of to and in is it you that for on with as are this be at or have from".split()


def write_signal_parquet(path: Path, rows: int, seed: int = 0, repeats: int = 3) -> Path:
    """WSDM-format rows: the preferred response contains 'excellent', the other 'awful' (`repeats` times each, at
    random positions), so a tiny classifier learns it in a few dozen steps."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)

    def text(marker: str) -> str:
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
        for _ in range(repeats):
            words.insert(rng.randint(0, len(words)), marker)
        return " ".join(words)

    out = []
    for i in range(rows):
        winner = rng.choice(["model_a", "model_b"])
        good, bad = text("excellent"), text("awful")
        response_a, response_b = (good, bad) if winner == "model_a" else (bad, good)
        out.append({
            "id": f"r{i}", "prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + f" q{i}",
            "response_a": response_a, "response_b": response_b, "winner": winner,
            "model_a": rng.choice(["gpt-4", "llama-3"]), "model_b": rng.choice(["claude", "qwen"]),
            "language": "English",
        })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(out), path)
    return path


def make_signal_dataset(root: Path, rows: int = 160, num_folds: int = 4, seed: int = 0, repeats: int = 3) -> Path:
    """Write the parquet source and prepare it with the real dataset builder; returns the dataset directory."""
    from arena_dist.data.sources import SourceConfig
    from arena_dist.data.store import build_dataset

    root = Path(root)
    source = write_signal_parquet(root / "signal.parquet", rows, seed, repeats)
    out = root / "dataset"
    build_dataset([SourceConfig(name="signal", kind="wsdm_parquet", path=source)], out, num_shards=2,
                  num_folds=num_folds, seed=seed)
    return out
