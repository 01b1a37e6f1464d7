"""Benchmark of the label stage on this machine (CPU, tiny random teachers).

1. Token-budget, length-sorted batches vs naive fixed-size batches in dataset order (what most notebooks did): same
   model, same rows (both orders of a synthetic pool shard), one process, one thread. Real tokens per second,
   by wall clock and by this process's CPU time (steadier on a shared machine), and the padding ratios.
2. Scaling 1 -> 2 actors (1 thread each) through the real driver on a private 2-CPU Ray head: rows/s from the moment
   the first actor has loaded its teacher to the last commit.

    python -m bench.label                 # ~2-4 minutes
    python -m bench.label --rows 800      # quicker look

Writes bench/results/label.json. No GPU here: the H200 prefill-MFU part of the issue is not measured.
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

# The tiny model / dataset fixtures live with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                     "RAY_USAGE_STATS_ENABLED": "0", "DS_ACCELERATOR": "cpu"}.items():
    os.environ.setdefault(_key, _value)
# The bench's Ray head and its driver share one token, set before Ray is imported (Ray reads it once per process;
# LocalRayHead takes $RAY_AUTH_TOKEN).
if not os.environ.get("RAY_AUTH_MODE") and not os.environ.get("RAY_AUTH_TOKEN"):
    import secrets

    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})

RESULTS = Path(__file__).resolve().parent / "results" / "label.json"
# A little wider than the test teacher so the forward pass, not Python, dominates a batch.
BENCH_MODEL = dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256)


def machine_info() -> dict:
    import ray
    import torch
    import transformers

    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
            "transformers": transformers.__version__, "ray": ray.__version__}


def timed_scoring(model, sequences, batches) -> dict:
    import torch

    from arena_dist.label.batching import pad_right, padding_stats
    from arena_dist.label.scoring import model_pad_id

    pad_id = model_pad_id(model)
    lengths = [len(s) for s in sequences]
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for batch in batches:
            ids, mask = pad_right([sequences[i] for i in batch], pad_id)
            model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = padding_stats(lengths, batches)
    return {**stats.as_dict(), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "real_tokens_per_s_wall": round(stats.real_tokens / wall, 1),
            "real_tokens_per_cpu_s": round(stats.real_tokens / cpu, 1)}


def bench_batching(work: Path, rows: int, max_tokens: int, naive_batch: int) -> dict:
    import torch

    from arena_dist.data.store import iter_records
    from arena_dist.formatting.encode import encode_records
    from arena_dist.label.batching import fixed_size_batches, token_budget_batches
    from arena_dist.label.scoring import format_from_meta
    from tiny_fixtures import make_pool_dataset, make_teacher_export
    from arena_dist.models.export import load_export

    torch.set_num_threads(1)
    dataset = make_pool_dataset(work / "batching-data", n_rows=rows, num_shards=1)
    export = make_teacher_export(work / "batching-teacher", max_length=1024, **BENCH_MODEL)
    model, tokenizer, meta = load_export(export)
    fmt = format_from_meta(meta)
    records = list(iter_records(dataset, "pool"))
    sequences = [row.input_ids for swap in (False, True) for row in encode_records(records, tokenizer, fmt, swap=swap)]
    lengths = [len(s) for s in sequences]
    timed_scoring(model, sequences[:64], fixed_size_batches(64, 16))  # warm-up
    budget = timed_scoring(model, sequences, token_budget_batches(lengths, max_tokens))
    naive = timed_scoring(model, sequences, fixed_size_batches(len(sequences), naive_batch))
    return {
        "rows": rows, "sequences": len(sequences), "max_length": 1024, "model": BENCH_MODEL, "threads": 1,
        "token_budget": {"max_tokens": max_tokens, **budget},
        "naive_fixed_size": {"batch_size": naive_batch, **naive},
        "speedup_wall": round(budget["real_tokens_per_s_wall"] / naive["real_tokens_per_s_wall"], 3),
        "speedup_cpu": round(budget["real_tokens_per_cpu_s"] / naive["real_tokens_per_cpu_s"], 3),
        "target_speedup": 1.5,
    }


def bench_scaling(work: Path, rows: int, shards: int, max_tokens: int) -> dict:
    import ray

    from arena_dist.label.driver import ActorSettings, label_shards
    from arena_dist.ray_local import connect_ray
    from arena_dist.label.store import LabelStore, input_shards
    from tiny_fixtures import make_pool_dataset, make_teacher_export
    from arena_dist.ray_local import LocalRayHead

    dataset = make_pool_dataset(work / "scaling-data", n_rows=rows, num_shards=shards)
    export = make_teacher_export(work / "scaling-teacher", max_length=512, **BENCH_MODEL)
    inputs = input_shards(dataset, "pool")
    results = {}
    head = LocalRayHead(num_cpus=2, dashboard=False).start()
    try:
        connect_ray(head.address, head.client_env(), log_to_driver=False)
        for actors in (1, 2):
            store = LabelStore(work / f"scaling-labels-{actors}" / "t", "t", "bench")
            settings = ActorSettings(num_actors=actors, cpus_per_actor=1, threads_per_actor=1)
            summary = label_shards("t", str(export), inputs, store, settings, max_tokens=max_tokens)
            store.finalize(inputs)
            records = [json.loads(store.done_path(s.index).read_text()) for s in inputs]
            actor_wall = sum(r["seconds"] for r in records)
            actor_cpu = sum(r["cpu_seconds"] for r in records)
            results[f"{actors}_actor"] = {
                **{k: summary[k] for k in ("rows_scored", "scoring_seconds", "seconds", "rows_per_s",
                                            "real_tokens_per_s")},
                # CPU the actors actually got while scoring: 1.0 = a whole core each; below that, other
                # processes on the machine took it (the scaling figure is then bounded by what was left)
                "actor_cpu_share": round(actor_cpu / actor_wall, 3),
                "rows_per_actor_cpu_s": round(summary["rows_scored"] / actor_cpu, 2),
            }
    finally:
        ray.shutdown()
        head.stop()
    one, two = results["1_actor"]["rows_per_s"], results["2_actor"]["rows_per_s"]
    return {"rows": rows, "shards": shards, "max_tokens": max_tokens, "model": BENCH_MODEL, **results,
            "scaling_1_to_2": round(two / one, 3), "target_scaling": 1.7,
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1500, help="pool rows for the batching comparison")
    parser.add_argument("--scaling-rows", type=int, default=1600)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--naive-batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--scaling-only", action="store_true", help="keep the batching result already in --out")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-label-"))
    try:
        result = {"machine": machine_info()}
        if args.scaling_only:
            result["batching"] = json.loads(args.out.read_text())["batching"]
        else:
            result["batching"] = bench_batching(work, args.rows, args.max_tokens, args.naive_batch)
        print(json.dumps(result["batching"], indent=2), flush=True)
        result["scaling"] = bench_scaling(work, args.scaling_rows, args.shards, args.max_tokens)
        print(json.dumps(result["scaling"], indent=2), flush=True)
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        result["not_measured"] = "H200 prefill MFU of a ~1B random Llama: no GPU on this machine"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from arena_dist.io import atomic_write_json

    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
