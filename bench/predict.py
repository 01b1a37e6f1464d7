"""Benchmark of predict's inference on this machine (CPU, a tiny random export).

1. replicas: 1 -> 2 model replicas (`ReplicaPool`, one thread each: on CPU a replica's share of the cores stands in
   for its own device), rows/s over both orders of synthetic pool rows, measured after a warm-up call; also one
   replica with both threads, the in-process alternative. The 2-replica probabilities are checked against the
   1-replica ones.

Each section is one entry of `sections()`, whose result lands under its name in the results file.

    python -m bench.predict                # ~2-3 minutes on an idle 2-core machine
    python -m bench.predict --rows 200     # quicker look

Writes bench/results/predict.json with the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

# The tiny export / dataset fixtures live with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                     "DS_ACCELERATOR": "cpu"}.items():
    os.environ.setdefault(_key, _value)

RESULTS = Path(__file__).resolve().parent / "results" / "predict.json"
# Wider than the test export, so a forward pass (not pipes or pickling) is what a replica spends its time on.
BENCH_MODEL = dict(hidden_size=256, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=512)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict:
    import torch
    import transformers

    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_at_start": load_average(), "torch": torch.__version__,
            "transformers": transformers.__version__}


def members(export: Path) -> list[dict]:
    """Predict's member dicts (its config's model fields) for one float32 export."""
    return [{"export_path": str(export), "dtype": "float32", "quantization": "auto", "trust_remote_code": False,
             "base_path": None}]


def timed_pool(export: Path, sequences: list, replicas: int, threads: int, max_tokens: int) -> dict:
    """One pool: start it, warm every replica up, then time one score call over all `sequences`."""
    from arena_dist.predict.infer import build_local_scorer
    from arena_dist.predict.replicas import ReplicaPool

    started = time.perf_counter()
    with ReplicaPool(build_local_scorer, (members(export), max_tokens), replicas, threads) as pool:
        ready = time.perf_counter() - started
        pool.score(0, sequences[:: max(1, len(sequences) // (16 * replicas))])  # warm-up: a few rows each
        wall = time.perf_counter()
        probs, stats = pool.score(0, sequences)
        wall = time.perf_counter() - wall
        shares = pool.last_shares
    tokens = [share["tokens"] for share in shares]
    return {
        "replicas": replicas, "threads_per_replica": threads, "ready_s": round(ready, 2), "wall_s": round(wall, 3),
        "rows_per_s": round(len(sequences) / wall, 2), "real_tokens_per_s": round(stats.real_tokens / wall, 1),
        "padding_ratio": round(stats.ratio, 4),
        "token_share_max_over_mean": round(max(tokens) / (sum(tokens) / len(tokens)), 4),
        # CPU the replicas got while scoring: 1.0 = a whole core per thread; below that, other processes took it.
        "replica_cpu_share": round(sum(s["cpu_seconds"] for s in shares)
                                   / (threads * sum(s["seconds"] for s in shares)), 3),
        # Rows per CPU-second spent inside the replicas: the per-core cost, which other load on the machine changes
        # far less than wall time (two replicas with no overhead match one).
        "rows_per_replica_cpu_s": round(len(sequences) / sum(s["cpu_seconds"] for s in shares), 2),
        "probs": probs,
    }


def bench_replicas(work: Path, rows: int, max_tokens: int) -> dict:
    import numpy as np
    from tiny_fixtures import make_pool_dataset, make_teacher_export

    from arena_dist.data.store import iter_records
    from arena_dist.predict.infer import LocalScorer

    dataset = make_pool_dataset(work / "data", n_rows=rows, num_shards=1)
    export = make_teacher_export(work / "export", max_length=1024, head_std=0.1, **BENCH_MODEL)
    records = list(iter_records(dataset, "pool"))
    encoder = LocalScorer(members(export), max_tokens)
    sequences = encoder.encode(0, records, False) + encoder.encode(0, records, True)
    cores = os.cpu_count() or 1
    runs = {"1_replica": timed_pool(export, sequences, 1, 1, max_tokens),
            "2_replicas": timed_pool(export, sequences, 2, 1, max_tokens),
            f"1_replica_{cores}_threads": timed_pool(export, sequences, 1, cores, max_tokens)}
    reference = runs["1_replica"]["probs"]
    max_diff = max(float(np.abs(run.pop("probs") - reference).max()) for run in runs.values())
    return {"rows": rows, "sequences": len(sequences), "max_tokens": max_tokens, "model": BENCH_MODEL, **runs,
            "scaling_1_to_2": round(runs["2_replicas"]["rows_per_s"] / runs["1_replica"]["rows_per_s"], 3),
            "target_scaling": 1.7, "max_abs_prob_diff_vs_1_replica": max_diff}


def sections(args) -> dict[str, Callable[[Path], dict]]:
    """name -> a function of a scratch directory returning that section's results."""
    from bench import predict_budget

    return {"replicas": lambda work: bench_replicas(work, args.rows, args.max_tokens),
            "budget": lambda work: predict_budget.run()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500, help="pool rows (each scored in both orders)")
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", choices=["replicas", "budget"],
                        help="measure one section again; the other sections of --out are kept as they were")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    result = json.loads(args.out.read_text()) if args.only and args.out.exists() else {}
    result["machine"] = machine_info()  # of this run; the budget section also records its own
    try:
        for name, run in sections(args).items():
            if args.only in (None, name):
                result[name] = run(work / name)
                print(json.dumps({name: result[name]}, indent=2), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_average_at_end"] = load_average()
    result["machine"]["sections"] = [args.only] if args.only else list(sections(args))
    result["not_measured"] = "one replica per GPU: no GPU on this machine"
    from arena_dist.io import atomic_write_json

    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
