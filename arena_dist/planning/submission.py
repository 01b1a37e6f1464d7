"""Wall time and memory of a competition submission run (`arena-dist predict` in the offline notebook) on paper.

What the run does (arena_dist/predict/infer.py): the first model scores every row once, then again with A and B
swapped on a share of them (swap-TTA); each further model scores a share of the rows (its own TTA share again). Each
GPU holds one replica of the model being run and scores its part of the rows; models run one after the other.

Time of one model, R rows, D GPUs of dense fp16 peak P, efficiency e (all in `submission`):
- row passes N = R x rows_share x (1 + tta_share);
- prefill FLOPs of one row of s tokens, classification (no decoding): s x (2 Psi + 2 L s q), the forward FLOPs per
  token of arena_dist/planning/time.py (Psi = parameters in matmuls, L layers, q = heads x head_dim); summed over the
  length buckets (rows longer than max_length are cut to it), times the padding of length-sorted batches;
- compute = FLOPs / (D x P x e), e x int8_speed for 8-bit weights;
- 4-bit dequantisation: past 1,536 tokens per forward, bitsandbytes (0.50, backends/cuda/ops.py gemm_4bit) dequantises
  each weight into a 16-bit copy and runs F.linear: 0.5 B read + 2 B written per linear weight and forward, at the
  memory bandwidth. With thousands of tokens per forward this is about 1% of the compute (it dominates one-token
  decoding instead, where "4-bit is slower than fp16" comes from); it is reported apart;
- load: every replica reads the 16-bit checkpoint (a student's adapters are rebuilt on its base, quantised as it
  loads): D x 2 B x params at load_gb_per_s.
Total = setup + the sum over models; it fits when it is within budget_hours and every replica fits its GPU. Time is
linear in each model's TTA share and row share, so the largest share that still fits is a division.

Memory of a replica, per GPU: weights (arena_dist.planning.memory.inference_weight_bytes: NF4 ~0.52 B, 8-bit ~1 B,
else 2 B per linear weight; embeddings and norms in 16 bits) + the peak of one no-grad fp16 forward of batch_tokens
padded tokens + reserved_gib. Per token of the batch, one layer live at a time:
    10 h            residual stream, the RMSNorm's fp32 upcast and its 16-bit output
    + max(4 q + 4 kv, 6 I)   Q, K, V and the attention output, or the gated MLP's gate, up and their product
    + 8 a s_max     eager attention only: fp16 scores, their fp32 softmax and its fp16 copy per head (the longest
                    row s_max sets the batch's width; sdpa's kernels never hold the scores)
    + 4 L kv        kv_cache: transformers keeps every layer's K and V for the whole forward when the model config
                    says use_cache (the hub default of Gemma-2 and Qwen2), a plain classification forward included
plus, for 4-bit, the 16-bit copy of the largest linear weight that the dequantisation above writes.
These are on paper: no GPU was at hand to measure the peak.
"""

from __future__ import annotations

from dataclasses import dataclass

from arena_dist.planning.hardware import gpu_spec
from arena_dist.planning.memory import GIB, inference_weight_bytes, quantised_bytes_per_param
from arena_dist.planning.models import ModelDims, count_params, linear_shapes, resolve_dims
from arena_dist.planning.time import forward_flops_per_token

QUANT_BITS = {"none": None, "8bit": 8, "4bit": 4}
DEQUANT_BYTES_PER_WEIGHT = 2.5  # NF4 read (0.5 B) + its 16-bit copy written (2 B); the matmul reads the copy


def row_lengths(section) -> list[tuple[float, int]]:
    """(share of rows, tokens) after truncation to max_length."""
    if section.mean_tokens is not None:
        buckets = [(1.0, section.mean_tokens)]
    else:
        buckets = [(bucket.share, bucket.tokens) for bucket in section.length_buckets]
    cap = section.max_length
    return [(share, min(tokens, cap) if cap else tokens) for share, tokens in buckets]


def inference_activation_bytes(dims: ModelDims, longest: int, attention: str, kv_cache: bool,
                               quant_bits: int | None) -> tuple[int, int]:
    """(bytes per token of the batch, fixed bytes) at the peak of one no-grad fp16 forward (module docstring)."""
    h, q, kv = dims.hidden, dims.q_dim, dims.kv_dim
    per_token = 10 * h + max(4 * q + 4 * kv, 6 * dims.intermediate)
    if attention == "eager":
        per_token += 8 * dims.heads * longest
    if kv_cache:
        per_token += 4 * dims.layers * kv
    fixed = 2 * max(i * o for i, o in linear_shapes(dims).values()) if quant_bits == 4 else 0
    return per_token, fixed


@dataclass(frozen=True)
class ModelCost:
    """What the estimate needs of one model: FLOPs of a row, bytes of its weights, their dequantised traffic."""

    name: str
    params: float
    row_flops: float  # mean prefill FLOPs of one row pass (over the length mix, before padding)
    weight_bytes: float
    linear_params: float  # weights bitsandbytes quantises (and 4-bit dequantises per forward)
    per_token_bytes: int | None  # activations per batch token; None when only the size is known
    fixed_bytes: int


def model_cost(model, key: str, lengths: list[tuple[float, int]], kv_cache: bool) -> ModelCost:
    bits = QUANT_BITS[model.quantization]
    if model.params is not None:  # size only: 2 FLOPs per parameter and token, every weight quantised
        per_param = {None: 2.0, 8: 1.0, 4: quantised_bytes_per_param(4)}[bits]
        row_flops = sum(share * 2.0 * model.params * tokens for share, tokens in lengths)
        return ModelCost(f"{model.params / 1e9:.1f}B params", model.params, row_flops, model.params * per_param,
                         model.params, None, 0)
    dims = resolve_dims(model, key)
    params = count_params(dims, model.head, model.num_labels)
    row_flops = sum(share * tokens * forward_flops_per_token(dims, params, tokens) for share, tokens in lengths)
    attention = model.attention or ("eager" if "gemma-2" in (model.name or "").lower() else "sdpa")
    longest = max(tokens for _, tokens in lengths)
    per_token, fixed = inference_activation_bytes(dims, longest, attention, kv_cache, bits)
    return ModelCost(model.name or "custom", params.total, row_flops, inference_weight_bytes(dims, params, bits),
                     params.decoder_linear, per_token, fixed)


def mean_tokens(section) -> float:
    return sum(share * tokens for share, tokens in row_lengths(section))


def model_estimate(model, cost: ModelCost, section, gpu) -> dict:
    """Hours and memory of one model of the submission (see the module docstring)."""
    devices = section.devices
    efficiency = (model.efficiency or section.efficiency) * (section.int8_speed if model.quantization == "8bit"
                                                             else 1.0)
    rows = section.rows * model.rows_share
    passes = rows * (1.0 + model.tta_share)
    tokens = passes * mean_tokens(section)
    flops = passes * cost.row_flops * section.padding
    compute_s = flops / (devices * gpu.peak_tflops_bf16 * 1e12 * efficiency)
    dequant_s = 0.0
    if model.quantization == "4bit":
        forwards_per_gpu = tokens * section.padding / devices / section.batch_tokens
        dequant_s = forwards_per_gpu * DEQUANT_BYTES_PER_WEIGHT * cost.linear_params / (gpu.memory_bandwidth_gb_s * 1e9)
    load_s = devices * 2.0 * cost.params / (section.load_gb_per_s * 1e9)
    return {
        "model": cost.name, "params": cost.params, "quantization": model.quantization, "efficiency": efficiency,
        "rows_share": model.rows_share, "tta_share": model.tta_share, "rows": rows, "row_passes": passes,
        "tokens": tokens, "flops": flops, "tokens_per_s_per_gpu": tokens / devices / (compute_s + dequant_s),
        "memory": replica_memory(cost, section, gpu),
        "load_hours": load_s / 3600, "compute_hours": compute_s / 3600, "dequant_hours": dequant_s / 3600,
        "pass_hours": (compute_s + dequant_s) / (1.0 + model.tta_share) / 3600,
        "hours": (load_s + compute_s + dequant_s) / 3600,
    }


def replica_memory(cost: ModelCost, section, gpu) -> dict:
    """One replica on one GPU: weights + the activations of a batch_tokens forward + reserved, and the largest batch."""
    weights_gib = (cost.weight_bytes + cost.fixed_bytes) / GIB
    room_gib = gpu.memory_gib - section.reserved_gib - weights_gib
    if cost.per_token_bytes is None:  # size only: the weights alone are checked
        activations_gib, max_batch_tokens, fits = None, None, room_gib >= 0
    else:
        activations_gib = cost.per_token_bytes * section.batch_tokens / GIB
        max_batch_tokens = max(int(room_gib * GIB // cost.per_token_bytes), 0)
        fits = activations_gib <= room_gib
    return {"weights_gib": round(weights_gib, 3),
            "activations_gib": None if activations_gib is None else round(activations_gib, 3),
            "reserved_gib": section.reserved_gib,
            "total_gib": round(weights_gib + (activations_gib or 0.0) + section.reserved_gib, 3),
            "gpu_memory_gib": gpu.memory_gib, "batch_tokens": section.batch_tokens,
            "max_batch_tokens": max_batch_tokens, "fits": fits}


def largest_shares(models: list[dict], budget_hours: float, total_hours: float) -> None:
    """Per model, the largest swap-TTA share, and for a further model the largest row share, that keep the total
    within the budget with everything else as configured (time is linear in both); 0 when nothing spare is left."""
    spare = budget_hours - total_hours
    for index, m in enumerate(models):
        m["max_tta_share"] = _share(m["tta_share"] + spare / m["pass_hours"])
        run_hours = m["hours"] - m["load_hours"]  # pass_hours x (1 + tta_share), proportional to the row share
        m["max_rows_share"] = None if index == 0 else _share(m["rows_share"] * (1.0 + spare / run_hours))


def _share(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def estimate_submission(section) -> dict:
    """The submission section of plan.json: per model hours and memory, the total against the budget."""
    gpu = gpu_spec(section.gpu, key="submission.gpu")  # a GPU of the table: each has its memory bandwidth
    lengths = row_lengths(section)
    models = [model_estimate(model, model_cost(model, f"submission.models.{i}", lengths, section.kv_cache),
                             section, gpu)
              for i, model in enumerate(section.models)]
    setup_hours = section.setup_minutes / 60
    total = setup_hours + sum(m["hours"] for m in models)
    largest_shares(models, section.budget_hours, total)
    fits_memory = all(m["memory"]["fits"] for m in models)
    fits_budget = total <= section.budget_hours
    return {
        "rows": section.rows, "mean_tokens": mean_tokens(section), "max_length": section.max_length,
        "length_buckets": [{"share": share, "tokens": tokens} for share, tokens in lengths],
        "gpu": gpu.name, "devices": section.devices, "dtype": "bf16" if gpu.bf16 else "fp16",
        "peak_tflops": gpu.peak_tflops_bf16, "memory_bandwidth_gb_s": gpu.memory_bandwidth_gb_s,
        "efficiency": section.efficiency, "padding": section.padding, "setup_hours": setup_hours,
        "models": models, "hours": total, "budget_hours": section.budget_hours,
        "margin_hours": section.budget_hours - total, "fits_budget": fits_budget, "fits_memory": fits_memory,
        "fits": fits_budget and fits_memory,
    }
