"""Benchmark of QLoRA student training steps on this machine (CPU, random-init students).

Per variant — 4-bit NF4 (double quant; fp32 and bf16 compute), 8-bit LLM.int8, bf16 LoRA, fp32 LoRA — one child process builds the student
(PEFT LoRA r=8 on every projection, linear head trained in full) and times full optimizer steps (forward + backward
+ AdamW) on a fixed batch, one thread. Reported: median step time, CPU time, ratio to fp32 LoRA, the model's weight
bytes (parameters + buffers, packed 4/8-bit weights included), the bytes of the projection weights alone (what
quantisation shrinks) and the child's peak RSS. Two sizes: the tiny test student (hidden 64, 2 layers), where the
embedding table dominates the memory, and a small one (hidden 512, 4 layers) where the projections do.

    python -m bench.student            # ~2-4 minutes on 2 cores
    python -m bench.student --quick

Writes bench/results/student.json. No GPU in this task: the H200 part (tokens/s of a 1-3B Gemma2 student in 4-bit
QLoRA vs bf16 LoRA) is not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                     "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}.items():
    os.environ.setdefault(_key, _value)

RESULTS = Path(__file__).resolve().parent / "results" / "student.json"
SIZES = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128),
    "small": dict(hidden_size=512, num_layers=4, num_heads=8, num_kv_heads=4, intermediate_size=1408),
}
VARIANTS = {
    "4bit": dict(quantization="4bit", dtype="float32"),
    "4bit_bf16": dict(quantization="4bit", dtype="bfloat16"),  # NF4 with bf16 compute, as the real configs
    "8bit": dict(quantization="8bit", dtype="float32"),
    "bf16": dict(quantization="none", dtype="bfloat16"),
    "fp32": dict(quantization="none", dtype="float32"),
}


def machine_info() -> dict:
    import bitsandbytes
    import peft
    import torch
    import transformers

    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "bitsandbytes": bitsandbytes.__version__, "threads_per_run": 1}


def measure(size: str, variant: str, batch: int, seq: int, steps: int) -> dict:
    """Runs in a child process: build, warm up, time `steps` optimizer steps."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from arena_dist.models.build import build_model
    from arena_dist.models.config import LoraSettings, ModelConfig

    cfg = ModelConfig(arch="llama", head="linear", lora=LoraSettings(r=8, alpha=16, dropout=0.0),
                      **SIZES[size], **VARIANTS[variant])
    model = build_model(cfg, 3, 0)
    model.train()
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    proj_bytes = sum(t.numel() * t.element_size() for k, t in model.state_dict().items()
                     if "_proj" in k and "lora_" not in k)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 3000, (batch, seq), generator=generator)
    labels = torch.randint(0, 3, (batch,), generator=generator)
    losses, wall, cpu = [], [], []
    for step in range(steps + 2):
        t0, c0 = time.perf_counter(), time.process_time()
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:  # the first steps pay for lazy initialisation
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        losses.append(float(loss))
    return {"size": size, "variant": variant, "batch": batch, "seq": seq, "steps": steps,
            "step_s_median": statistics.median(wall), "step_cpu_s_median": statistics.median(cpu),
            "tokens_per_s": batch * seq / statistics.median(wall),
            "weight_bytes": weight_bytes, "projection_weight_bytes": proj_bytes,
            "trainable_params": sum(p.numel() for p in trainable), "loss_first": losses[0], "loss_last": losses[-1],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(size: str, variant: str, batch: int, seq: int, steps: int) -> dict:
    code = (f"import json; from bench.student import measure; "
            f"print('RESULT' + json.dumps(measure({size!r}, {variant!r}, {batch}, {seq}, {steps})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    return {"size": size, "variant": variant, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps = 3 if args.quick else 6
    plan = [("tiny", 8, 256), ("small", 4, 256)]
    results = {"machine": machine_info(), "note": "CPU only; one thread per run; medians over timed steps; "
               "wall time is noisy on a shared 2-core box, CPU time of the process is the steadier ratio. "
               "No GPU in this task: the H200 tokens/s comparison was not run.", "runs": [], "ratios": {}}
    for size, batch, seq in plan:
        rows = {}
        for variant in VARIANTS:
            row = run_child(size, variant, batch, seq, steps)
            results["runs"].append(row)
            rows[variant] = row
            print(json.dumps(row), flush=True)
        base = rows["fp32"]
        if "error" not in base:
            results["ratios"][size] = {
                variant: {"step_time_vs_fp32": round(r["step_s_median"] / base["step_s_median"], 3),
                          "step_cpu_time_vs_fp32": round(r["step_cpu_s_median"] / base["step_cpu_s_median"], 3),
                          "weight_bytes_vs_fp32": round(r["weight_bytes"] / base["weight_bytes"], 3),
                          "projection_bytes_vs_fp32": round(r["projection_weight_bytes"] /
                                                            base["projection_weight_bytes"], 3),
                          "peak_rss_vs_fp32": round(r["peak_rss_mb"] / base["peak_rss_mb"], 3)}
                for variant, r in rows.items() if "error" not in r}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    from arena_dist.io import atomic_write_json

    atomic_write_json(RESULTS, results)
    print(json.dumps(results["ratios"], indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
