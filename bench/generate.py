"""Benchmark of the generate stage on this machine (CPU, tiny random Llama / Qwen2 / Gemma-2 chat models).

1. Scaling 1 -> 2 actors (1 thread each) through the real driver on a private 2-CPU Ray head: generated tokens per
   second from the moment the first actor has loaded its generators to the last commit. Every reply is exactly
   `--new-tokens` long (greedy, min = max new tokens), so both runs do the same work.
2. The machine's own ceiling for that figure: the same generation work in 1 plain process, then split over 2
   concurrent processes (1 thread each, no Ray). What 2 processes reach here bounds what 2 Ray actors can.
3. Padding of the generation batches: padded / real prompt tokens of the length-sorted token-budget batches the run
   used, beside naive fixed-size batches in dataset order over the same prompts (what most scripts do).

    python -m bench.generate                  # ~2-4 minutes
    python -m bench.generate --prompts 128 --new-tokens 16 --out /tmp/generate.json   # a quicker look, not
                                              # written over the committed results

Prints JSON and writes it to bench/results/generate.json (`--out` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

# The tiny hub-layout checkpoints live with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                     "RAY_USAGE_STATS_ENABLED": "0", "DS_ACCELERATOR": "cpu"}.items():
    os.environ.setdefault(_key, _value)
# The bench's Ray head and its driver share one token, set before Ray is imported (LocalRayHead takes it).
if not os.environ.get("RAY_AUTH_MODE") and not os.environ.get("RAY_AUTH_TOKEN"):
    import secrets

    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})

RESULTS = Path(__file__).resolve().parent / "results" / "generate.json"
FAMILIES = ("llama", "qwen2", "gemma2")
# Wider than the test checkpoints so the forward passes, not Python, dominate a generation step.
BENCH_DIMS = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2)


def machine_info() -> dict:
    import ray
    import torch
    import transformers

    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
            "transformers": transformers.__version__, "ray": ray.__version__}


def build_generator(root: Path, family: str) -> Path:
    """A hub-layout chat checkpoint of the family (its real template and special tokens), BENCH_DIMS wide."""
    import torch
    from hub_checkpoints import build_tokenizer, model_config
    from transformers import AutoModelForCausalLM

    tokenizer = build_tokenizer(family)
    config = model_config(family, tokenizer)
    for key, value in BENCH_DIMS.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    directory = root / f"{family}-bench"
    AutoModelForCausalLM.from_config(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def build_prompts(root: Path, prompts: int, shards: int) -> Path:
    """A `conversations` file of prompts from 3 to ~120 words, prepared into a dataset's `prompts` split."""
    import random

    from arena_dist.data.sources import SourceConfig
    from arena_dist.data.store import build_dataset

    rng = random.Random(0)
    words = "why how what model answer question data token long short fast slow good bad".split()
    with open(root / "conversations.jsonl", "w") as out:
        for i in range(prompts):
            text = " ".join(rng.choice(words) for _ in range(rng.choice([3, 8, 20, 50, 120])))
            out.write(json.dumps({"id": i, "messages": [{"role": "user", "content": f"{i}: {text}?"}]}) + "\n")
    dataset = root / "dataset"
    build_dataset([SourceConfig(name="conv", kind="conversations", path=root / "conversations.jsonl")], dataset,
                  num_shards=shards, num_folds=1, seed=0)
    return dataset


def naive_padding(dataset: Path, generator: Path, batch_size: int) -> dict:
    """Fixed-size batches in dataset order over the same prompts (one model's chat template)."""
    from transformers import AutoTokenizer

    from arena_dist.data.store import iter_records
    from arena_dist.label.batching import fixed_size_batches, padding_stats

    tokenizer = AutoTokenizer.from_pretrained(generator)
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"][0]}],
                                              add_generation_prompt=True, tokenize=False)
                for r in iter_records(dataset, "prompts")]
    lengths = [len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]
    stats = padding_stats(lengths, fixed_size_batches(len(lengths), batch_size))
    return {"batch_size": batch_size, "padding_ratio": round(stats.ratio, 4)}


def bench_scaling(work: Path, dataset: Path, generators: dict, new_tokens: int, max_tokens: int) -> dict:
    import ray

    from arena_dist.generate.backend import SamplingSettings
    from arena_dist.generate.driver import generate_shards
    from arena_dist.generate.store import PoolStore
    from arena_dist.generate.worker import GeneratorSpec
    from arena_dist.label.driver import ActorSettings
    from arena_dist.label.store import input_shards
    from arena_dist.ray_local import LocalRayHead, connect_ray

    shards = input_shards(dataset, "prompts")
    specs = [GeneratorSpec(family, str(path)) for family, path in generators.items()]
    sampling = SamplingSettings(temperature=0.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                max_tokens=max_tokens)
    results = {}
    head = LocalRayHead(num_cpus=2, dashboard=False).start()
    try:
        connect_ray(head.address, head.client_env(), log_to_driver=False)
        for actors in (1, 2):
            store = PoolStore(work / f"pool-{actors}", "generate", "bench")
            settings = ActorSettings(num_actors=actors, cpus_per_actor=1, threads_per_actor=1)
            summary = generate_shards(shards, store, settings, specs, sampling)
            store.finalize(shards)
            records = [json.loads(store.done_path(s.index).read_text()) for s in shards]
            actor_wall = sum(r["seconds"] for r in records)
            actor_cpu = sum(r["cpu_seconds"] for r in records)
            results[f"{actors}_actor"] = {
                **{k: summary[k] for k in ("rows_generated", "new_tokens", "generating_seconds", "seconds",
                                            "new_tokens_per_s", "batches", "prompt_padding_ratio")},
                # CPU the actors actually got while generating: 1.0 = a whole core each; below that, other
                # processes on the machine took it (the scaling figure is then bounded by what was left)
                "actor_cpu_share": round(actor_cpu / actor_wall, 3),
                "new_tokens_per_actor_cpu_s": round(summary["new_tokens"] / actor_cpu, 1),
            }
    finally:
        ray.shutdown()
        head.stop()
    one, two = results["1_actor"]["new_tokens_per_s"], results["2_actor"]["new_tokens_per_s"]
    return {**results, "scaling_1_to_2": round(two / one, 3), "target_scaling": 1.7,
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def _generate_share(generator: str, conversations: list, sampling, start, results) -> None:
    """One process's share of the ceiling run: load, wait for the others, generate; puts (new tokens, seconds)."""
    import time

    import torch

    from arena_dist.generate.backend import TransformersGenerator

    torch.set_num_threads(1)
    model = TransformersGenerator(generator)
    model.generate_detailed(conversations[:4], sampling)  # warm-up outside the timed part, as an actor's first shard
    start.wait()
    started = time.perf_counter()
    new_tokens = sum(item.new_tokens for item in model.generate_detailed(conversations, sampling))
    results.put((new_tokens, time.perf_counter() - started))


def bench_machine_ceiling(dataset: Path, generator: Path, new_tokens: int, max_tokens: int) -> dict:
    """Tokens/s of the same prompts in 1 process and split over 2 concurrent processes (the Ray-free bound)."""
    import multiprocessing
    import queue

    from arena_dist.data.store import iter_records
    from arena_dist.generate.backend import SamplingSettings

    sampling = SamplingSettings(temperature=0.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                max_tokens=max_tokens)
    conversations = [[{"role": "user", "content": r["prompt"][0]}] for r in iter_records(dataset, "prompts")]
    context = multiprocessing.get_context("spawn")
    rates = {}
    for count in (1, 2):
        start, results = context.Barrier(count), context.Queue()
        processes = [context.Process(target=_generate_share,
                                     args=(str(generator), conversations[i::count], sampling, start, results))
                     for i in range(count)]
        for process in processes:
            process.start()
        done = []
        while len(done) < count:  # a child that died (import error, OOM) must fail the bench, not hang it
            try:
                done.append(results.get(timeout=5))
            except queue.Empty:
                dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"machine ceiling: a generating process exited with {dead[0]}") from None
                if all(p.exitcode is not None for p in processes) and results.empty():
                    raise RuntimeError(f"machine ceiling: {count - len(done)} generating processes ended without "
                                       "a result") from None
        for process in processes:
            process.join()
        rates[count] = sum(tokens for tokens, _ in done) / max(seconds for _, seconds in done)
    return {"prompts": len(conversations), "1_process_new_tokens_per_s": round(rates[1], 1),
            "2_process_new_tokens_per_s": round(rates[2], 1), "scaling_1_to_2": round(rates[2] / rates[1], 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--naive-batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS, help="write the result here (JSON)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    try:
        result = {"machine": machine_info(), "prompts": args.prompts, "shards": args.shards,
                  "new_tokens_per_reply": args.new_tokens, "max_tokens": args.max_tokens, "model": BENCH_DIMS}
        generators = {family: build_generator(work, family) for family in FAMILIES}
        dataset = build_prompts(work, args.prompts, args.shards)
        result["scaling"] = bench_scaling(work, dataset, generators, args.new_tokens, args.max_tokens)
        result["machine_ceiling"] = bench_machine_ceiling(dataset, generators["llama"], args.new_tokens,
                                                          args.max_tokens)
        result["padding"] = {"token_budget_sorted": result["scaling"]["2_actor"]["prompt_padding_ratio"],
                             "naive_fixed_size": naive_padding(dataset, generators["llama"], args.naive_batch)}
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2), flush=True)
    from arena_dist.io import atomic_write_json

    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
