"""Benchmark of packed vs padded training micro-batches on this machine (CPU, small random Llama classifiers).

The same seeded rows, with token lengths drawn log-normal like LMSYS Arena conversations (median `--median` = 400
tokens, sigma `--sigma` = 0.9 of the natural log, cut at format.max_length = 2048; bench/gpu.py's draw), train
through the real loop once with padded micro-batches of `--micro-batch` right-padded rows, then once per token budget
of `--budgets` (2048 and 1024) with packed micro-batches (`training.micro_batch_tokens`; a row longer than the budget
is a micro-batch of its own). Every run sees the same global batches (the data order does not depend on the
micro-batching), so the real tokens per step are the same in all of them.

- teacher: 2-rank ZeRO-3 (DeepSpeed on gloo, 1 thread a rank) through bare `torchrun` of `arena_dist.train.loop`
  (as bench/teacher.py; Ray adds nothing to a step);
- student: 4-bit NF4 base (bitsandbytes on CPU) with LoRA, 1 rank (one plain process, 1 thread).

Attention (sdpa, the models' default): a pack runs sdpa once per example on its own tokens
(`arena_dist.models.packed_attention`), so it pays the sum of its rows' squares, as flash_attention_2's varlen kernel
does on a GPU; a padded micro-batch pays rows x (longest row)^2. Two budgets show what the pack size still changes
(the number of forwards per step, and how evenly the ranks' tokens split).

Measured per run: real (non-pad) training tokens/s = real tokens of the timed steps / their `step_time_s` from
metrics.jsonl (rank 0; the steps after `--warmup`; with `--repeats`, the best run of each mode); padded / real
tokens over every step (padded: rows x longest row of each micro-batch; packed: the tokens of the step plan's packs,
recomputed from the rows' lengths, not assumed); rank imbalance (max / mean tokens per rank; packed: the
`rank_imbalance` the loop logs per step, checked against the plan; padded: from each rank's share of the rows).
Targets (issue 15): packed / padded tokens/s >= 1.5, packed padded / real <= 1.05, rank imbalance <= 1.1.

    python -m bench.packing                            # ~4-5 minutes on 2 shared cores
    python -m bench.packing --repeats 3                # steadier ratios on a busy machine (3x as long)
    python -m bench.packing --steps 3 --warmup 1 --rows 64 --out elsewhere.json   # a quick look (~1-2 minutes)

Writes bench/results/packing.json (`--out` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "packing.json"
REPO = Path(__file__).resolve().parents[1]
# DeepSpeed JIT-builds its CPU shared-memory op on first use; the tests' build directory (tests/conftest.py) keeps it
# built between runs (~/.cache's is rebuilt whenever another checkout's paths used it last: minutes on 2 cores).
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "RAY_USAGE_STATS_ENABLED": "0", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
       "TORCH_EXTENSIONS_DIR": str(REPO / ".venv" / "torch_extensions")}
for _key, _value in ENV.items():
    os.environ.setdefault(_key, _value)
MAX_LENGTH = 2048
# Small enough that a step over ~10k tokens takes seconds on one core; every parameter partitioned under ZeRO-3.
MODEL = dict(arch="llama", hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=512)
WORDS = "the a of to and in is it you that for on with as are this be at or have from".split()
LENGTH_SIGMA = 0.9  # as bench/gpu.py
TARGETS = {"speedup": 1.5, "padded_over_real": 1.05, "rank_imbalance": 1.1}


def machine_info() -> dict:
    import bitsandbytes
    import deepspeed
    import torch
    import transformers

    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
            "deepspeed": deepspeed.__version__, "transformers": transformers.__version__,
            "bitsandbytes": bitsandbytes.__version__, "threads_per_rank": 1}


# ------------------------------------------------------------------------------------------------ data
def template_overhead() -> int:
    """Tokens the llama3 template adds to a conversation (instruction, headers, options, each text's first word):
    subtracted from the drawn lengths so the encoded rows, not the raw texts, follow the distribution."""
    from arena_dist.formatting.encode import encode_records
    from arena_dist.formatting.templates import FormatConfig
    from arena_dist.formatting.tokenizer import load_tokenizer

    words = 5
    text = " ".join([WORDS[0]] * words)
    record = {"id": "x", "prompt": [text], "response_a": [text], "response_b": [text], "label": 0}
    row = encode_records([record], load_tokenizer("local"), FormatConfig(max_length=MAX_LENGTH,
                                                                         label_mode="2class"))[0]
    return len(row.input_ids) - 3 * words


def write_parquet(path: Path, lengths: list[int], overhead: int, seed: int) -> Path:
    """WSDM-format rows whose texts add up to each drawn length (`WORDS` and the markers are one token each after a
    space with the local tokenizer): prompt 1/5, each response 2/5; the preferred response carries 'good', the
    other 'no' (a signal a classifier can learn; the benchmark does not need it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed + 1)

    def text(n: int, marker: str | None = None) -> str:
        words = [WORDS[0]] + [rng.choice(WORDS) for _ in range(max(1, n) - 1)]  # first word as calibrated
        if marker is not None:
            words[rng.randrange(1, len(words)) if len(words) > 1 else 0] = marker
        return " ".join(words)

    out = []
    for i, length in enumerate(lengths):
        words = max(length - overhead, 6)
        prompt = max(1, words // 5)
        first = (words - prompt) // 2
        second = words - prompt - first
        winner = rng.choice(["model_a", "model_b"])
        a, b = (text(first, "good"), text(second, "no")) if winner == "model_a" else \
            (text(first, "no"), text(second, "good"))
        out.append({"id": f"r{i}", "prompt": text(prompt), "response_a": a, "response_b": b, "winner": winner,
                    "model_a": "gpt-4", "model_b": "claude", "language": "English"})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(out), path)
    return path


def make_dataset(root: Path, rows: int, median: int, sigma: float, seed: int) -> Path:
    """A prepared dataset (the real builder) whose encoded rows have the drawn lengths (rows shorter than the
    template's own tokens come out a little longer)."""
    from arena_dist.data.sources import SourceConfig
    from arena_dist.data.store import build_dataset

    from bench.gpu import lmsys_like_lengths  # the GPU bench's distribution (cut at the cap there already)

    lengths = lmsys_like_lengths(rows, seed, median=median, cap=MAX_LENGTH, sigma=sigma)
    source = write_parquet(root / "lengths.parquet", lengths, template_overhead(), seed)
    out = root / "dataset"
    build_dataset([SourceConfig(name="lengths", kind="wsdm_parquet", path=source)], out, num_shards=2, num_folds=4,
                  seed=seed)
    return out


# ------------------------------------------------------------------------------------------------ runs
def common(dataset: Path, name: str, budget: int | None, args) -> dict:
    return {
        "data": {"dataset_dir": str(dataset), "fold": None, "num_folds": 4},
        "format": {"template": "llama3", "max_length": MAX_LENGTH, "label_mode": "2class"},
        "training": {"lr": 1e-3, "global_batch": args.global_batch, "micro_batch": args.micro_batch,
                     "micro_batch_tokens": budget, "epochs": 100, "max_steps": args.steps,
                     "log_every": args.steps, "schedule": "constant", "threads": 1, "seed": args.seed},
        "output": {"run_name": name},
    }


def teacher_config(dataset: Path, storage: Path, name: str, budget: int | None, args):
    from arena_dist.stages.teacher import Config

    config = common(dataset, name, budget, args)
    config["model"] = {**MODEL, "head": "linear"}
    config["training"]["ds_overrides"] = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}
    config["ray"] = {"num_workers": 2, "cpus_per_worker": 1, "storage_path": str(storage), "max_failures": 0}
    return Config.model_validate(config)


def student_config(dataset: Path, storage: Path, name: str, budget: int | None, args):
    from arena_dist.distill.config import StudentConfig

    config = common(dataset, name, budget, args)
    # No head dropout: packed and padded micro-batches have different shapes, so they would draw different masks
    # and their losses could not be compared.
    config["model"] = {**MODEL, "head": "mlp", "head_dropout": 0.0, "quantization": "4bit",
                       "lora": {"r": 8, "alpha": 16, "dropout": 0.0}}
    config["data"].update({"soft_labels": None, "use_pool": False})
    config["loss"] = {"w_ce": 1.0, "w_kl": 0.0, "w_cos": 0.0}
    config["ray"] = {"enabled": False}
    config["merge"] = {"enabled": False}
    config["output"]["run_dir"] = str(storage / name)
    return StudentConfig.model_validate(config)


def launch(config, recipe: str, world: int, work: Path) -> float:
    """`torchrun` of the loop on `world` ranks (static rendezvous on 127.0.0.1), or one plain process for 1 rank."""
    from arena_dist.ray_local import free_port
    from arena_dist.train.launch import absolute_paths, make_payload

    absolute_paths(config)
    payload = work / f"{config.output.run_name}.json"
    payload.write_text(json.dumps(make_payload(config, recipe)))
    loop = ["-m", "arena_dist.train.loop", str(payload)]
    if world > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--node-rank=0",
                   "--master-addr=127.0.0.1", f"--master-port={free_port()}", f"--nproc-per-node={world}", *loop]
    else:
        command = [sys.executable, *loop]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}  # ENV set above
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{config.output.run_name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def step_shapes(config, recipe: str, world: int) -> tuple[list[dict], list[int]]:
    """Per step, from the run's own data order and encoder: the real tokens, and per rank the tokens each
    micro-batch costs, padded (rows x longest) and packed (the plan's packs). Also every training row's length."""
    from arena_dist.train.data import micro_batches
    from arena_dist.train.loop import Trainer, recipe_class
    from arena_dist.train.packing import imbalance, plan_step

    trainer = Trainer(recipe_class(recipe)(config, None), 0, world, {"attempt_id": "plan"}, under_ray=False)
    trainer.recipe.prepare = lambda _trainer: None  # the DeepSpeed config is not needed to replay the order
    trainer.setup()
    training, shapes = config.training, []
    for step in range(trainer.total_steps):
        indices, swaps = trainer.order.batch(step)
        lengths = [len(e.input_ids) for e in trainer.encoder.encode([trainer.train_samples[i] for i in indices],
                                                                      list(swaps))]
        shape = {"step": step + 1, "rows": len(lengths), "real_tokens": sum(lengths), "lengths": lengths}
        if training.micro_batch_tokens:
            plan = plan_step(lengths, world, training.micro_batch_tokens)
            per_rank = [[sum(lengths[i] for i in pack) for pack in packs] for packs in plan]
            shape.update(computed_tokens=sum(map(sum, per_rank)), micro_batches_per_rank=len(plan[0]),
                         rank_imbalance=imbalance(plan, lengths), max_pack_tokens=max(map(max, per_rank)))
        else:
            real, padded = [], []
            for rank in range(world):
                share, share_swaps = trainer.order.rank_share(step, rank, world)
                rank_lengths = [len(e.input_ids) for e in trainer.encoder.encode(
                    [trainer.train_samples[i] for i in share], list(share_swaps))]
                chunks = micro_batches(rank_lengths, training.micro_batch)
                real.append(sum(rank_lengths))
                padded.append(sum(len(c) * max(c) for c in chunks))
            if sum(real) != shape["real_tokens"]:
                raise RuntimeError(f"step {step + 1}: the ranks' shares hold {sum(real)} tokens, the batch "
                                   f"{shape['real_tokens']}")
            shape.update(computed_tokens=sum(padded), micro_batches_per_rank=len(chunks),
                         rank_imbalance=max(real) / (sum(real) / world),
                         rank_imbalance_padded_tokens=max(padded) / (sum(padded) / world))
        shapes.append(shape)
    everything = trainer.encoder.encode(trainer.train_samples, [False] * len(trainer.train_samples))
    return shapes, [len(e.input_ids) for e in everything]


def measure(config, recipe: str, world: int, work: Path, warmup: int) -> dict:
    wall = launch(config, recipe, world, work)
    shapes, dataset_lengths = step_shapes(config, recipe, world)
    rows = [json.loads(line) for line in (config.experiment_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in rows if "train_loss" in r}
    if sorted(logged) != [s["step"] for s in shapes]:
        raise RuntimeError(f"{config.output.run_name}: metrics.jsonl has steps {sorted(logged)}, the plan "
                           f"{len(shapes)}")
    for shape in shapes:
        if "rank_imbalance" in logged[shape["step"]] and \
                abs(logged[shape["step"]]["rank_imbalance"] - shape["rank_imbalance"]) > 1e-9:
            raise RuntimeError(f"step {shape['step']}: logged rank_imbalance {logged[shape['step']]['rank_imbalance']}"
                               f" but the replayed plan gives {shape['rank_imbalance']}")
    timed = [s for s in shapes if s["step"] > warmup]
    if not timed:
        raise RuntimeError(f"--steps must exceed --warmup ({warmup})")
    seconds = [logged[s["step"]]["step_time_s"] for s in timed]
    real = sum(s["real_tokens"] for s in shapes)
    imbalances = [s["rank_imbalance"] for s in shapes]
    out = {"world_size": world, "wall_s": round(wall, 1), "steps": len(shapes), "steps_timed": len(timed),
           "real_tokens_per_s": round(sum(s["real_tokens"] for s in timed) / sum(seconds), 1),
           "median_step_s": round(statistics.median(seconds), 3),
           "padded_over_real": round(sum(s["computed_tokens"] for s in shapes) / real, 4),
           "micro_batches_per_rank_mean": round(statistics.mean(s["micro_batches_per_rank"] for s in shapes), 2),
           "rank_imbalance_mean": round(statistics.mean(imbalances), 4),
           "rank_imbalance_max": round(max(imbalances), 4),
           "loss_first": logged[1]["train_loss"], "loss_last": logged[len(shapes)]["train_loss"]}
    if "rank_imbalance_padded_tokens" in shapes[0]:
        out["rank_imbalance_padded_tokens_mean"] = round(statistics.mean(s["rank_imbalance_padded_tokens"]
                                                                         for s in shapes), 4)
    if "max_pack_tokens" in shapes[0]:
        out["max_pack_tokens"] = max(s["max_pack_tokens"] for s in shapes)
    out["_lengths"] = {"trained_rows": length_stats([n for s in shapes for n in s["lengths"]]),
                       "dataset_rows": length_stats(dataset_lengths)}
    return out


def length_stats(lengths: list[int]) -> dict:
    ordered = sorted(lengths)

    def quantile(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"rows": len(ordered), "median": quantile(0.5), "p90": quantile(0.9), "p99": quantile(0.99),
            "max": ordered[-1], "mean": round(statistics.mean(ordered), 1),
            "share_at_cap": round(sum(n >= MAX_LENGTH for n in ordered) / len(ordered), 4)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    parser.add_argument("--rows", type=int, default=400, help="dataset rows (the steps cycle through them)")
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=4, help="rows per padded micro-batch")
    parser.add_argument("--budgets", default=f"{MAX_LENGTH},{MAX_LENGTH // 2}",
                        help="comma-separated token budgets of the packed runs (one packed run each)")
    parser.add_argument("--median", type=int, default=400, help="median row length in tokens")
    parser.add_argument("--sigma", type=float, default=LENGTH_SIGMA, help="sigma of log(row length)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each mode, alternating; the best tokens/s of each counts (all are recorded)")
    parser.add_argument("--stages", default="teacher,student", help="comma-separated subset of teacher,student")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - {"teacher", "student"}
    if unknown or not stages:
        parser.error(f"--stages: unknown {sorted(unknown)} (teacher, student)")
    budgets = [int(b) for b in args.budgets.split(",") if b]
    if not budgets or min(budgets) <= 0:
        parser.error(f"--budgets {args.budgets!r}: one or more positive token counts")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} must exceed --warmup {args.warmup}")

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bench-packing-"))
    try:
        result = {"machine": machine_info(), "model": MODEL, "steps": args.steps, "warmup": args.warmup,
                  "repeats": args.repeats,
                  "global_batch": args.global_batch, "micro_batch": args.micro_batch, "budgets_tokens": budgets,
                  "lengths": {"distribution": "log-normal", "median": args.median, "sigma": args.sigma,
                              "cap": MAX_LENGTH, "seed": args.seed, "dataset_rows": args.rows},
                  "targets": TARGETS}
        dataset = make_dataset(work, args.rows, args.median, args.sigma, args.seed)
        storage = work / "runs"
        build = {"teacher": (teacher_config, 2), "student": (student_config, 1)}
        result["stages"] = {}
        for stage in stages:
            make, world = build[stage]
            runs: dict[str, dict] = {}
            for repeat in range(args.repeats):  # the modes alternate, so a disturbance hits one run, not one mode
                for mode, budget in [("padded", None)] + [(f"packed_{b}", b) for b in budgets]:
                    config = make(dataset, storage, f"{stage}_{mode}_{repeat}", budget, args)
                    run = measure(config, stage, world, work, args.warmup)
                    lengths = run.pop("_lengths")
                    print(stage, mode, repeat, json.dumps(run), flush=True)
                    rates = runs.get(mode, {}).get("real_tokens_per_s_runs", []) + [run["real_tokens_per_s"]]
                    if mode not in runs or run["real_tokens_per_s"] > runs[mode]["real_tokens_per_s"]:
                        runs[mode] = run  # the best run of the mode: the least disturbed one
                    runs[mode]["real_tokens_per_s_runs"] = rates
            padded = runs["padded"]
            result["stages"][stage] = {
                **runs, "speedup_tokens_per_s": {str(b): round(runs[f"packed_{b}"]["real_tokens_per_s"]
                                                               / padded["real_tokens_per_s"], 3) for b in budgets},
                "row_lengths": lengths,  # the encoded rows (the same in both runs of a stage)
                "note": ("2 ranks, ZeRO-3, bare torchrun" if stage == "teacher" else
                         "1 rank (one process): 4-bit NF4 base + LoRA r=8, bitsandbytes on CPU; no rank imbalance")}
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        result["runtime_s"] = round(time.monotonic() - started, 1)
        print(json.dumps({stage: {"speedup": r["speedup_tokens_per_s"],
                                  **{key: {mode: r[mode][key] for mode in r if mode.startswith("pa")}
                                     for key in ("padded_over_real", "rank_imbalance_mean")}}
                          for stage, r in result["stages"].items()}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from arena_dist.io import atomic_write_json

    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
