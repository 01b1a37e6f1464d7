"""Time estimates from FLOPs at a stated model-FLOPs utilisation (MFU).

Forward FLOPs per token = 2 x (parameters in matmuls) + 2 x layers x s x q_dim (causal attention: Q K^T and A V over
s/2 keys on average). Embedding lookups cost nothing. Training a full model costs 3 forwards (the usual 6 Psi per
token), LoRA / QLoRA 2 (no weight gradients for the frozen base), and activation checkpointing one forward more
(8 Psi for a full fine-tune). Hours = FLOPs / (GPUs x peak x MFU), peak being the dense 16-bit figure.
"""

from __future__ import annotations

from arena_dist.errors import ConfigError
from arena_dist.planning.models import ModelDims, ParamCount


def forward_flops_per_token(dims: ModelDims, params: ParamCount, seq_len: int) -> float:
    return 2.0 * params.matmul + 2.0 * dims.layers * seq_len * dims.q_dim


def training_flops_per_token(dims: ModelDims, params: ParamCount, seq_len: int, method: str,
                             checkpointing: bool) -> float:
    if method not in ("full", "lora", "qlora"):
        raise ConfigError(f"training.method: expected full, lora or qlora, got {method!r}")
    forwards = (3 if method == "full" else 2) + (1 if checkpointing else 0)
    return forwards * forward_flops_per_token(dims, params, seq_len)


def hours(total_flops: float, gpus: int, peak_tflops: float, mfu: float) -> float:
    if not 0 < mfu <= 1:
        raise ConfigError(f"mfu: expected a fraction in (0, 1], got {mfu!r}")
    return total_flops / (gpus * peak_tflops * 1e12 * mfu) / 3600.0


def epoch_estimate(dims: ModelDims, params: ParamCount, tokens: float, seq_len: int, method: str,
                   checkpointing: bool, gpus: int, peak_tflops: float, mfu: float) -> dict:
    """One training epoch over `tokens` tokens."""
    per_token = training_flops_per_token(dims, params, seq_len, method, checkpointing)
    total = per_token * tokens
    return {"tokens": tokens, "flops_per_token": per_token, "total_flops": total, "gpus": gpus,
            "tokens_per_s_per_gpu": peak_tflops * 1e12 * mfu / per_token, "hours": hours(total, gpus, peak_tflops, mfu)}


def labelling_estimate(dims: ModelDims, params: ParamCount, rows: int, tokens_per_row: int, swap_tta: bool,
                       gpus: int, peak_tflops: float, mfu: float) -> dict:
    """Forward passes over `rows` rows of `tokens_per_row` tokens; swap TTA scores each row twice (A/B swapped)."""
    passes = 2 if swap_tta else 1
    tokens = float(rows) * tokens_per_row * passes
    per_token = forward_flops_per_token(dims, params, tokens_per_row)
    total = per_token * tokens
    return {"rows": rows, "tokens_per_row": tokens_per_row, "passes": passes, "tokens": tokens,
            "flops_per_token": per_token, "total_flops": total, "gpus": gpus,
            "rows_per_s": rows / (hours(total, gpus, peak_tflops, mfu) * 3600.0),
            "hours": hours(total, gpus, peak_tflops, mfu)}
