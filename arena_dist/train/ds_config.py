"""The DeepSpeed config of a run: ZeRO knobs from `ds_configs/*.json`, everything else from the run config.

Batch sizes, accumulation, precision, clipping, optimizer and LR schedule come from the run config only; a ds_config
file or override that sets them is a ConfigError (one source of truth per setting). The LR schedule is not in the
DeepSpeed config at all: both parallelisms step the same `arena_dist.train.parallel.lr_schedule`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from arena_dist.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_CONFIG_KEYS = (
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16", "fp16",
    "gradient_clipping", "optimizer", "scheduler",
)


def resolve_ds_config_path(path: str | Path) -> Path:
    """Relative paths are tried against the working directory, then the repository root."""
    path = Path(path)
    for candidate in (path, REPO_ROOT / path) if not path.is_absolute() else (path,):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"training.ds_config: file not found: {path}")


def load_zero_knobs(path: str | Path, overrides: dict | None = None) -> dict:
    source = resolve_ds_config_path(path)
    try:
        knobs = json.loads(source.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    knobs = deep_merge(knobs, overrides or {})
    reserved = [key for key in RUN_CONFIG_KEYS if key in knobs]
    if reserved:
        raise ConfigError(f"{source}: {', '.join(reserved)} come from the run config (training.*, model.dtype), "
                          "not ds_config")
    if "zero_optimization" not in knobs:
        raise ConfigError(f"{source}: no zero_optimization section")
    return knobs


def deep_merge(base: dict, extra: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def accumulation_steps(global_batch: int, micro_batch: int, world_size: int) -> int:
    per_step = micro_batch * world_size
    if global_batch % per_step:
        raise ConfigError(f"training.global_batch {global_batch} is not a multiple of micro_batch x world size = "
                          f"{per_step}")
    return global_batch // per_step


def build_ds_config(knobs: dict, training, dtype: str, world_size: int, use_gpu: bool) -> dict:
    """The full DeepSpeed config for `world_size` ranks (accumulation keeps the global batch fixed)."""
    config = copy.deepcopy(knobs)
    config["train_micro_batch_size_per_gpu"] = training.micro_batch
    config["gradient_accumulation_steps"] = accumulation_steps(training.global_batch, training.micro_batch, world_size)
    config["train_batch_size"] = training.global_batch
    config["gradient_clipping"] = training.clip or 0.0  # DeepSpeed: 0 is off
    config["bf16"] = {"enabled": dtype == "bfloat16"}
    config["fp16"] = {"enabled": dtype == "float16"}
    impl = training.optimizer_impl
    if impl == "auto":
        impl = "deepspeed" if use_gpu else "torch"
    config["optimizer"] = {
        "type": "AdamW",
        "params": {
            "lr": training.lr, "betas": list(training.betas), "eps": 1e-8, "weight_decay": training.weight_decay,
            # torch's AdamW needs no compiled op (CPU); DeepSpeed's fused / CPU Adam is the fast path on GPUs.
            "torch_adam": impl == "torch",
        },
    }
    config.setdefault("steps_per_print", 10**9)  # our own progress line instead
    config.setdefault("wall_clock_breakdown", False)
    return config


def zero_stage(config: dict) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))
