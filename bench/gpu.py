"""Benchmark on one GPU (an H200): the project's own training and scoring code on a ~1B random-weight Llama.

Cases, in this order, each timed after a warm-up and cut at its own wall-clock cap (the whole run stays under 8
minutes on one H200; a case that no longer fits the budget is skipped with the reason):

1. `teacher_zero3_packed` / `teacher_zero3_padded`: teacher optimizer steps through `Trainer.train_step` (the loop's
   own step) on a one-rank DeepSpeed ZeRO-3 engine (`ds_configs/zero3.json` through `build_ds_config`, bf16), with
   padding-free packed micro-batches (`training.micro_batch_tokens`) vs padded micro-batches of `micro_batch` rows.
   MFU = 6 * N * real tokens/s / peak.
2. `label_prefill`: the label stage's scorer (`score_token_ids`: token-budget, length-sorted batches, no grad) in
   bf16. MFU = 2 * N * real tokens/s / peak.
3. `student_bf16_lora` / `student_4bit_lora`: student steps (PEFT LoRA r=64 on every projection, bitsandbytes NF4
   base for 4-bit) through the same `Trainer.train_step` on the replicated data parallelism the student stage uses,
   packed micro-batches. Step time and tokens/s, 4-bit over bf16.

N is the parameters that do matmuls for every token: all but the token embedding table (a lookup); the attention
score FLOPs are left out of 6N / 2N, as usual. MFU counts real tokens only, so padding shows up as lost MFU.
Rows come from a log-normal length distribution like LMSYS arena conversations (median ~400 tokens, cap 2048).
No downloads: the weights are random, from a config with Llama-3.2-1B's shape.

    python -m bench.gpu              # one CUDA GPU: writes bench/results/gpu.json (under 8 minutes on an H200)
    python -m bench.gpu --dry-run    # every case on a tiny model, fp32, CPU: checks the script in seconds

The results file is rewritten after every case, so a run cut short still leaves what it measured. A case still
running 30 s past the budget is stopped and recorded as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import signal
import statistics
import time
import traceback
from importlib import metadata, util
from pathlib import Path
from types import SimpleNamespace

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"
# NVIDIA H200 (SXM) dense bf16 tensor-core peak, FLOP/s (the datasheet's 1,979 TFLOP/s is with 2:4 sparsity).
H200_BF16_DENSE_PEAK = 989e12
PAD_ID = 0  # token ids are drawn from 1..vocab-1, so no row ends in the pad id
# Llama-3.2-1B's shape (0.97e9 parameters besides the embedding table), untied random weights, a 2-class head.
MODEL_1B = dict(arch="llama", hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8, intermediate_size=8192,
                vocab_size=128256, max_position_embeddings=4096)
MODEL_DRY = dict(arch="llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                 vocab_size=512, max_position_embeddings=256)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes and caps of one run."""

    model: dict
    dtype: str
    median_length: int
    max_length: int
    global_batch: int  # rows per optimizer step (teacher and student)
    micro_batch: int  # rows per padded micro-batch
    micro_batch_tokens: int  # tokens per packed micro-batch
    label_rows: int
    label_max_tokens: int  # the label stage's default batching.max_tokens
    warmup_steps: int
    max_steps: int
    case_cap_s: float  # wall-clock cap of a case's timed part
    budget_s: float  # the whole run


FULL = Plan(model=MODEL_1B, dtype="bfloat16", median_length=400, max_length=2048, global_batch=64, micro_batch=8,
            micro_batch_tokens=8192, label_rows=1024, label_max_tokens=16384, warmup_steps=2, max_steps=20,
            case_cap_s=35.0, budget_s=450.0)
DRY = Plan(model=MODEL_DRY, dtype="float32", median_length=40, max_length=128, global_batch=8, micro_batch=2,
           micro_batch_tokens=256, label_rows=32, label_max_tokens=512, warmup_steps=1, max_steps=2,
           case_cap_s=10.0, budget_s=300.0)
# Seconds a case needs besides its timed part (building and initialising a 1B model, warm-up), for the budget check.
SETUP_S = {"teacher_zero3_packed": 40, "teacher_zero3_padded": 40, "label_prefill": 25, "student_bf16_lora": 30,
           "student_4bit_lora": 90}  # 4-bit: the random weights are saved and loaded again to be quantised
# A case still running this long after the budget's end is stopped (SIGALRM), so the whole run ends in time.
OVERRUN_S = 30
LENGTH_SIGMA = 0.9  # spread of log(length)
CASES = tuple(SETUP_S)


class BudgetExceeded(Exception):
    pass


def lmsys_like_lengths(count: int, seed: int, median: int = 400, cap: int = 2048,
                       sigma: float = LENGTH_SIGMA) -> list[int]:
    """Token lengths of a prompt + two responses as in LMSYS arena data: log-normal, median `median`, long tail cut
    at `cap` (the template's max_length), at least 8."""
    import numpy as np

    drawn = np.random.default_rng(seed).lognormal(np.log(median), sigma, size=count)
    return [int(n) for n in np.clip(drawn, 8, cap)]


def random_rows(lengths: list[int], vocab_size: int, seed: int, num_labels: int = 2):
    """`Example`s (what the training loop's encoder returns) of the given lengths, random ids, alternating labels."""
    import torch

    from arena_dist.train.data import Example

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size, (sum(lengths),), generator=generator).tolist()
    rows, start = [], 0
    for i, n in enumerate(lengths):
        rows.append(Example(ids[start:start + n], i % num_labels))
        start += n
    return rows


class PreEncoded:
    """Stands in for the loop's `Encoder`: the bench's rows are token ids already."""

    def encode(self, samples, swaps):
        return list(samples)


# ------------------------------------------------------------------------------------------------ building blocks
def device_and_sync():
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device()), torch.cuda.synchronize
    return torch.device("cpu"), lambda: None


def model_config(plan: Plan, **changes):
    from arena_dist.models.config import ModelConfig

    return ModelConfig(head="linear", head_dropout=0.0, dtype=plan.dtype, **{**plan.model, **changes})


def matmul_params(model) -> int:
    """Parameters used in a matmul for every token: all but the token embedding table (ZeRO-3: full sizes)."""
    embedding = model.get_input_embeddings().weight
    total = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    return total - getattr(embedding, "ds_numel", embedding.numel())


def training_settings(plan: Plan, packed: bool):
    from arena_dist.train.config import TrainingSettings

    # torch's AdamW, not DeepSpeed's fused one: the fused op is compiled on first use (minutes, and a CUDA toolkit),
    # which a bench on a fresh machine cannot afford; the optimizer step is a small share of a 1B step either way.
    return TrainingSettings(lr=1e-5, global_batch=plan.global_batch, micro_batch=plan.micro_batch,
                            micro_batch_tokens=plan.micro_batch_tokens if packed else None, clip=1.0,
                            schedule="constant", seed=0, optimizer_impl="torch")


def make_trainer(parallel, training, rows, device):
    """A one-rank `Trainer` holding what `train_step` reads (`Trainer.setup` would read records from a dataset and
    encode them with a tokenizer; here the rows are token ids already)."""
    from arena_dist.train.data import GlobalOrder
    from arena_dist.train.losses import CrossEntropy
    from arena_dist.train.loop import Trainer

    trainer = Trainer.__new__(Trainer)
    trainer.config = SimpleNamespace(training=training)
    trainer.rank, trainer.world_size, trainer.device = 0, 1, device
    trainer.tokenizer = SimpleNamespace(pad_token_id=PAD_ID)
    trainer.train_samples, trainer.encoder, trainer.loss = rows, PreEncoded(), CrossEntropy()
    trainer.order = GlobalOrder(len(rows), training.global_batch, training.seed)
    trainer.parallel = parallel
    return trainer


def computed_tokens(trainer, step: int, lengths: list[int]) -> int:
    """Tokens the step's forwards compute: packed, the real ones; padded, rows x longest row per micro-batch."""
    from arena_dist.train.data import micro_batches

    indices, _ = trainer.order.batch(step)
    step_lengths = [lengths[i] for i in indices]
    if trainer.config.training.micro_batch_tokens:
        return sum(step_lengths)
    return sum(len(chunk) * max(step_lengths[i] for i in chunk)
               for chunk in micro_batches(list(range(len(step_lengths))), trainer.config.training.micro_batch))


def timed_steps(trainer, plan: Plan, lengths: list[int], sync, label: str) -> dict:
    """Warm-up steps, then steps until `max_steps` or the case's cap; medians of the timed ones."""
    times, tokens, computed, losses = [], [], [], []
    started = time.monotonic()
    for step in range(plan.warmup_steps + plan.max_steps):
        sync()
        t0 = time.perf_counter()
        parts, real, _ = trainer.train_step(step)
        sync()
        seconds = time.perf_counter() - t0
        losses.append(parts["loss"])
        if step >= plan.warmup_steps:
            times.append(seconds)
            tokens.append(real)
            computed.append(computed_tokens(trainer, step, lengths))
            print(f"  {label} step {step + 1}: {seconds:.3f} s, {real / seconds:,.0f} real tokens/s", flush=True)
        if time.monotonic() - started > plan.case_cap_s and times:
            break
    total_s = sum(times)
    return {"steps_timed": len(times), "warmup_steps": plan.warmup_steps, "step_s_median": statistics.median(times),
            "real_tokens_per_step": statistics.mean(tokens), "real_tokens_per_s": sum(tokens) / total_s,
            "computed_tokens_per_s": sum(computed) / total_s, "padding_ratio": sum(computed) / sum(tokens),
            "loss_first": losses[0], "loss_last": losses[-1], "stopped_by_cap": len(times) < plan.max_steps}


def peak_memory() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def release(*objects) -> None:
    import torch

    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def init_single_rank(backend: str) -> None:
    """DeepSpeed's process group for one rank in this process (what a launcher would set: rank, world, rendezvous)."""
    import deepspeed

    from arena_dist.ray_local import free_port

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


# ------------------------------------------------------------------------------------------------ cases
def teacher_case(plan: Plan, packed: bool, peak: float | None) -> dict:
    from arena_dist.models.build import build_model
    from arena_dist.train.ds_config import build_ds_config, load_zero_knobs
    from arena_dist.train.packing import prepare_packing
    from arena_dist.train.parallel import ZeroParallel

    device, sync = device_and_sync()
    init_single_rank("nccl" if device.type == "cuda" else "gloo")
    training = training_settings(plan, packed)
    steps = plan.warmup_steps + plan.max_steps
    lengths = lmsys_like_lengths(plan.global_batch * steps, 0, plan.median_length, plan.max_length)
    rows = random_rows(lengths, plan.model["vocab_size"], 0)
    ds_config = build_ds_config(load_zero_knobs(training.ds_config), training, plan.dtype, 1,
                                use_gpu=device.type == "cuda")
    model = build_model(model_config(plan), 2, PAD_ID)
    if packed:
        prepare_packing(model)
    n = matmul_params(model)
    parallel = ZeroParallel(model, ds_config, training, steps)
    trainer = make_trainer(parallel, training, rows, device)
    result = timed_steps(trainer, plan, lengths, sync, "packed" if packed else "padded")
    result.update(matmul_params=n, zero_stage=ds_config["zero_optimization"]["stage"],
                  micro_batch_tokens=training.micro_batch_tokens, micro_batch=None if packed else plan.micro_batch,
                  global_batch=plan.global_batch, **peak_memory())
    if peak:
        result["mfu"] = 6 * n * result["real_tokens_per_s"] / peak
    release(trainer, parallel, model)
    return result


def label_case(plan: Plan, peak: float | None) -> dict:
    from arena_dist.label.scoring import score_token_ids
    from arena_dist.models.build import build_model

    device, sync = device_and_sync()
    lengths = lmsys_like_lengths(plan.label_rows, 1, plan.median_length, plan.max_length)
    sequences = [row.input_ids for row in random_rows(lengths, plan.model["vocab_size"], 1)]
    model = build_model(model_config(plan), 2, PAD_ID, for_training=False).to(device).eval()
    n = matmul_params(model)
    score_token_ids(model, sequences[: max(1, len(sequences) // 8)], plan.label_max_tokens)  # warm-up
    passes, seconds, started = 0, [], time.monotonic()
    while passes == 0 or (time.monotonic() - started < plan.case_cap_s and passes < 5):
        sync()
        t0 = time.perf_counter()
        _, stats = score_token_ids(model, sequences, plan.label_max_tokens)
        sync()
        seconds.append(time.perf_counter() - t0)
        passes += 1
        print(f"  prefill pass {passes}: {stats.real_tokens / seconds[-1]:,.0f} real tokens/s", flush=True)
    best = min(seconds)
    result = {"rows": len(sequences), "max_tokens": plan.label_max_tokens, "passes": passes, "pass_s_best": best,
              "pass_s_median": statistics.median(seconds), "real_tokens": stats.real_tokens,
              "real_tokens_per_s": stats.real_tokens / best, "rows_per_s": len(sequences) / best,
              "padding_ratio": stats.ratio, "batches": stats.batches, "matmul_params": n,
              "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), **peak_memory()}
    if peak:
        result["mfu"] = 2 * n * result["real_tokens_per_s"] / peak
    release(model)
    return result


def student_case(plan: Plan, quantization: str) -> dict:
    from arena_dist.models.build import build_model, count_parameters
    from arena_dist.models.config import LoraSettings
    from arena_dist.train.packing import prepare_packing
    from arena_dist.train.parallel import ReplicatedParallel

    device, sync = device_and_sync()
    training = training_settings(plan, packed=True)
    steps = plan.warmup_steps + plan.max_steps
    lengths = lmsys_like_lengths(plan.global_batch * steps, 2, plan.median_length, plan.max_length)
    rows = random_rows(lengths, plan.model["vocab_size"], 2)
    # The real students' adapter: r=64, alpha=128 on every projection (launch/configs/student_*.yaml).
    cfg = model_config(plan, quantization=quantization, lora=LoraSettings(r=64, alpha=128, dropout=0.0))
    model = build_model(cfg, 2, PAD_ID)
    prepare_packing(model)  # as the loop does for packed micro-batches
    if quantization == "none":
        model.to(device)  # bitsandbytes places a quantised model on the GPU while loading
    model.train()
    trainable, total = count_parameters(model)
    parallel = ReplicatedParallel(model, training, steps, 1, device)
    trainer = make_trainer(parallel, training, rows, device)
    result = timed_steps(trainer, plan, lengths, sync, f"student {quantization}")
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    result.update(quantization=quantization, compute_dtype=plan.dtype, lora_r=64, trainable_params=trainable,
                  total_params=total, weight_bytes=weight_bytes, micro_batch_tokens=training.micro_batch_tokens,
                  global_batch=plan.global_batch, **peak_memory())
    release(trainer, parallel, model)
    return result


def run_case(name: str, plan: Plan, peak: float | None) -> dict:
    if name == "teacher_zero3_packed":
        return teacher_case(plan, True, peak)
    if name == "teacher_zero3_padded":
        return teacher_case(plan, False, peak)
    if name == "label_prefill":
        return label_case(plan, peak)
    if name == "student_bf16_lora":
        return student_case(plan, "none")
    if name == "student_4bit_lora":
        return student_case(plan, "4bit")
    raise ValueError(f"unknown case {name!r}")


# ------------------------------------------------------------------------------------------------ driver
def machine_info() -> dict:
    import torch
    import transformers

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
            "transformers": transformers.__version__}
    for package in ("deepspeed", "peft", "bitsandbytes"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = "not installed"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def comparisons(cases: dict) -> dict:
    """Packed over padded, 4-bit over bf16: only between cases that both ran."""
    out = {}
    packed, padded = cases.get("teacher_zero3_packed", {}), cases.get("teacher_zero3_padded", {})
    if packed.get("status") == padded.get("status") == "ok":
        out["teacher_packed_over_padded_real_tokens_per_s"] = packed["real_tokens_per_s"] / padded["real_tokens_per_s"]
    four, bf16 = cases.get("student_4bit_lora", {}), cases.get("student_bf16_lora", {})
    if four.get("status") == bf16.get("status") == "ok":
        out["student_4bit_over_bf16_step_time"] = four["step_s_median"] / bf16["step_s_median"]
        out["student_4bit_over_bf16_weight_bytes"] = four["weight_bytes"] / bf16["weight_bytes"]
    return out


def four_bit_unavailable() -> str | None:
    """Why the 4-bit case cannot run here, or None (bitsandbytes' CPU backend trains NF4 layers too)."""
    return None if util.find_spec("bitsandbytes") else "bitsandbytes is not installed"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="every case on a tiny fp32 model on the CPU (checks the script; no MFU)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results file (default: {RESULTS.relative_to(RESULTS.parents[2])}; a dry run writes "
                             "only when given one)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--budget-s", type=float, default=None, help="the whole run's wall-clock budget")
    args = parser.parse_args(argv)
    plan = DRY if args.dry_run else FULL
    if args.budget_s is not None:
        plan = dataclasses.replace(plan, budget_s=args.budget_s)
    # DeepSpeed picks its accelerator when imported: the CPU one for a dry run, CUDA otherwise.
    os.environ["DS_ACCELERATOR"] = "cpu" if args.dry_run else "cuda"
    out = args.out if args.out is not None or args.dry_run else RESULTS
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("bench.gpu: no CUDA device here (use --dry-run to check the script on the CPU)")
    if args.dry_run:
        torch.set_num_threads(1)
    from arena_dist.quiet import silence_known_warnings

    silence_known_warnings()
    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, stop_case)
    try:
        result = run_cases(args, plan, started, out)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous_handler)
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps({"comparisons": result["comparisons"], "wall_s": result["wall_s"]}, indent=2))
    if out is not None:
        write(out, result)
        print(f"wrote {out}")
    return result


def stop_case(signum, frame):
    raise BudgetExceeded("stopped at the wall-clock budget")


def run_cases(args, plan: Plan, started: float, out: Path | None) -> dict:
    peak = None if args.dry_run else H200_BF16_DENSE_PEAK
    result = {
        "dry_run": args.dry_run, "machine": machine_info(), "model": plan.model, "plan": dataclasses.asdict(plan),
        "peak_flops_per_s": peak,
        "peak_note": "H200 SXM dense bf16 tensor-core peak (989 TFLOP/s); MFU = 6N (training) or 2N (prefill) "
                     "x real tokens/s / peak, N = parameters besides the embedding table, attention scores excluded"
                     if peak else "dry run: no MFU (CPU, fp32)",
        "lengths": {"distribution": "log-normal", "median": plan.median_length, "sigma": LENGTH_SIGMA,
                    "cap": plan.max_length},
        "cases": {},
    }
    for name in CASES:
        if name not in args.cases:
            result["cases"][name] = {"status": "skipped", "reason": "not selected (--cases)"}
            continue
        left = plan.budget_s - (time.monotonic() - started)
        needs = (SETUP_S[name] if not args.dry_run else 0) + plan.case_cap_s
        reason = four_bit_unavailable() if name == "student_4bit_lora" else None
        if reason is None and left < needs:
            reason = f"time budget: {left:.0f} s left of {plan.budget_s:.0f} s, the case needs about {needs:.0f} s"
        if reason is not None:
            result["cases"][name] = {"status": "skipped", "reason": reason}
            print(f"[bench.gpu] {name}: skipped ({reason})", flush=True)
            continue
        print(f"[bench.gpu] {name} ({time.monotonic() - started:.0f} s into the run) ...", flush=True)
        case_started = time.monotonic()
        signal.alarm(max(1, int(left + OVERRUN_S)))
        try:
            measured = {"status": "ok", **run_case(name, plan, peak)}
        except BudgetExceeded as problem:
            measured = {"status": "stopped", "reason": f"{problem} ({plan.budget_s:.0f} s + {OVERRUN_S} s)"}
            release()
        except Exception as problem:  # one failed case (out of memory, a kernel missing) must not stop the others
            traceback.print_exc()
            measured = {"status": "error", "error": f"{type(problem).__name__}: {str(problem)[:500]}"}
            release()
        finally:
            signal.alarm(0)
        measured["wall_s"] = round(time.monotonic() - case_started, 1)
        result["cases"][name] = measured
        print(f"[bench.gpu] {name}: " + json.dumps({k: v for k, v in measured.items()
                                                   if k in ("status", "step_s_median", "real_tokens_per_s", "mfu",
                                                            "wall_s", "error")}), flush=True)
        result["comparisons"] = comparisons(result["cases"])
        result["wall_s"] = round(time.monotonic() - started, 1)
        if out is not None:
            write(out, result)
    result["comparisons"] = comparisons(result["cases"])
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def write(path: Path, result: dict) -> None:
    from arena_dist.io import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)


if __name__ == "__main__":
    main()
