"""Memory per GPU: model states by the ZeRO formulas, activations, quantised weights, and the largest micro-batch.

Model states (mixed-precision Adam, Psi parameters, N GPUs in all):
- ZeRO stage 2 and 3 use DeepSpeed's own estimator formulas (`estimate_zero2_model_states_mem_needs`,
  `estimate_zero3_model_states_mem_needs` with zero_init=True and its 1.5 CPU buffer factor), reproduced here in pure
  Python so the planner needs no deepspeed import; tests/planning/test_memory.py checks them against DeepSpeed.
  Stage 3: GPU = 18 Psi / N + 4 x largest layer (the gathered working copy); offload optimizer: 2 Psi / N + 4 x largest;
  offload optimizer+params: 4 x largest. Stage 2: 2 Psi + 18 Psi / N; offload optimizer: 2 Psi.
  (DeepSpeed counts 18 bytes per parameter where the ZeRO paper counts 16 = 2 fp16 params + 2 fp16 grads + 12 fp32
  Adam states; the planner follows DeepSpeed, the larger.)
- Stage 0 and 1 follow the ZeRO paper (Rajbhandari et al. 2020): 16 Psi and 4 Psi + 12 Psi / N.
- LoRA / QLoRA: frozen base weights (16-bit, or 4-bit NF4 = 0.5 B/param + quantisation constants, or 8-bit = 1 B/param
  + one fp32 scale per output row), partitioned over N only under ZeRO-3; the trainable adapters and the classifier
  head carry the 16 B/param mixed-precision Adam states, partitioned by the stage as above.

Activations (bf16 training, per micro-batch of b sequences of s tokens, no dropout): the tensors autograd saves, counted
one by one in the manner of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models";
their GPT layer is s b h (34 + 5 a s / h)) for a Llama-style layer with GQA and a gated MLP as Hugging Face runs it.
Bytes per token per layer:
    norms: (8 h + 4) each (RMSNorm saves its input upcast to fp32, the normalised 16-bit tensor, its 16-bit output
           that the next linear saves, and an fp32 1/rms)
    attention, SDPA/flash: 4 q + 4 kv + 4 a (Q, K, V, output in 16 bits, fp32 log-sum-exp per head)
    attention, eager: 8 q + 6 a s (Q, K and V repeated to all heads, output; fp32 softmax and its 16-bit copy)
    gated MLP: 8 I (gate, SiLU, up, product)
tests/planning/test_memory.py checks this against the bytes autograd really saves for a small HF Llama. With full
activation checkpointing each layer keeps only its 16-bit input (2 h per token) and one layer is live again while it
is recomputed. The head adds the final norm and, for a causal-LM head, 10 bytes per logit (16-bit logits, the fp32
copy for the loss and its gradient). Nothing divides activations across GPUs (no tensor parallelism).
"""

from __future__ import annotations

from dataclasses import dataclass

from arena_dist.errors import ConfigError
from arena_dist.planning.models import ModelDims, ParamCount, linear_shapes, lora_params

GIB = 1024**3
OFFLOAD_MODES = ("none", "optimizer", "optimizer+params")
DEEPSPEED_CPU_BUFFER_FACTOR = 1.5


@dataclass(frozen=True)
class ModelStates:
    gpu_bytes: int  # per GPU
    cpu_bytes: int  # per node
    formula: str


def deepspeed_zero3_states(total_params: int, largest_layer_params: int, gpus_per_node: int, nodes: int,
                           offload: str = "none", buffer_factor: float = DEEPSPEED_CPU_BUFFER_FACTOR) -> ModelStates:
    """DeepSpeed's `estimate_zero3_model_states_mem_needs(..., zero_init=True)`, same arithmetic, same rounding."""
    total_gpus = gpus_per_node * nodes
    largest = 4 * largest_layer_params
    if offload == "optimizer+params":
        gpu, cpu = largest, total_params * 18 / nodes * buffer_factor
        formula = "4*largest_layer"
    elif offload == "optimizer":
        gpu, cpu = largest + int(2 * total_params / total_gpus), total_params * 16 / nodes * buffer_factor
        formula = "4*largest_layer + 2*Psi/N"
    elif offload == "none":
        gpu, cpu = largest + int(18 * total_params / total_gpus), largest_layer_params * 4 * gpus_per_node * buffer_factor
        formula = "4*largest_layer + 18*Psi/N"
    else:
        raise ConfigError(f"training.offload: expected one of {OFFLOAD_MODES}, got {offload!r}")
    return ModelStates(int(gpu), int(cpu), formula)


def deepspeed_zero2_states(total_params: int, gpus_per_node: int, nodes: int, offload: str = "none",
                           buffer_factor: float = DEEPSPEED_CPU_BUFFER_FACTOR) -> ModelStates:
    """DeepSpeed's `estimate_zero2_model_states_mem_needs`, same arithmetic."""
    total_gpus = gpus_per_node * nodes
    if offload == "optimizer":
        gpu, cpu = 2 * total_params, total_params * max(4 * total_gpus, 16) * buffer_factor
        formula = "2*Psi"
    else:
        gpu = 2 * total_params + int(18 * total_params / total_gpus)
        cpu = total_params * 4 * gpus_per_node * buffer_factor
        formula = "2*Psi + 18*Psi/N"
    return ModelStates(int(gpu), int(cpu), formula)


def _check_offload(zero_stage: int, offload: str) -> None:
    if offload not in OFFLOAD_MODES:
        raise ConfigError(f"training.offload: expected one of {OFFLOAD_MODES}, got {offload!r}")
    if offload == "optimizer+params" and zero_stage != 3:
        raise ConfigError("training.offload: 'optimizer+params' needs training.zero_stage 3 (parameter offload is ZeRO-3)")
    if offload != "none" and zero_stage == 0:
        raise ConfigError("training.offload: optimizer offload needs training.zero_stage >= 1")


def full_finetune_states(params: ParamCount, zero_stage: int, offload: str, gpus_per_node: int,
                         nodes: int) -> ModelStates:
    """Model states per GPU when every parameter trains (mixed-precision Adam)."""
    _check_offload(zero_stage, offload)
    psi, n = params.total, gpus_per_node * nodes
    if zero_stage == 3:
        return deepspeed_zero3_states(psi, params.largest_layer, gpus_per_node, nodes, offload)
    if zero_stage == 2 or (zero_stage == 1 and offload == "optimizer"):
        return deepspeed_zero2_states(psi, gpus_per_node, nodes, offload)
    load_cpu = int(psi * 4 * gpus_per_node * DEEPSPEED_CPU_BUFFER_FACTOR)
    if zero_stage == 1:
        return ModelStates(4 * psi + int(12 * psi / n), load_cpu, "4*Psi + 12*Psi/N")
    return ModelStates(16 * psi, load_cpu, "16*Psi")


def _trainable_states_bytes(trainable: int, zero_stage: int, offload: str, n: int) -> tuple[int, int]:
    """(GPU, CPU) bytes of 16 B/param mixed-precision Adam states for small trainable sets (adapters, head)."""
    optimizer = 12 * trainable
    if zero_stage >= 1:
        optimizer //= n
    weights_and_grads = {0: 4 * trainable, 1: 4 * trainable, 2: 2 * trainable + 2 * trainable // n,
                         3: 4 * trainable // n}[zero_stage]
    return (weights_and_grads, optimizer) if offload != "none" else (weights_and_grads + optimizer, 0)


def quantised_bytes_per_param(bits: int, double_quant: bool = True, blocksize: int = 64) -> float:
    """Storage of one quantised weight. NF4: 0.5 B + one absmax per block (fp32, or 8-bit with one fp32 per 256
    blocks under double quantisation). The 8-bit row scales depend on the shape and are added by the caller."""
    if bits == 4:
        return 0.5 + ((1 / blocksize + 4 / (blocksize * 256)) if double_quant else 4 / blocksize)
    if bits == 8:
        return 1.0
    raise ConfigError(f"training.quant_bits: expected 4 or 8, got {bits!r}")


def linear_weight_bytes(dims: ModelDims, params: ParamCount, quant_bits: int | None,
                        double_quant: bool = True) -> float:
    """The decoder's linear weights: 16-bit (`quant_bits` None), NF4, or 8-bit plus one fp32 scale per output row."""
    if quant_bits is None:
        return params.decoder_linear * 2.0
    linear = params.decoder_linear * quantised_bytes_per_param(quant_bits, double_quant)
    if quant_bits == 8:
        linear += dims.layers * sum(4 * out for _, out in linear_shapes(dims).values())
    return linear


def adapter_states(dims: ModelDims, params: ParamCount, method: str, lora_r: int, target_modules: list[str],
                   quant_bits: int, double_quant: bool, zero_stage: int, offload: str, gpus_per_node: int,
                   nodes: int, head: str) -> tuple[ModelStates, dict]:
    """Frozen (possibly quantised) base + trainable LoRA adapters (+ the classifier head, trained in full)."""
    _check_offload(zero_stage, offload)
    if offload == "optimizer+params":
        raise ConfigError("training.offload: 'optimizer+params' is not modelled for LoRA/QLoRA; use 'optimizer' or 'none'")
    n = gpus_per_node * nodes
    adapters = lora_params(dims, lora_r, target_modules)
    head_trainable = params.head if head == "classifier" else 0
    trainable = adapters + head_trainable
    frozen_16bit = params.total - params.decoder_linear - head_trainable
    linear = linear_weight_bytes(dims, params, quant_bits if method == "qlora" else None, double_quant)
    frozen = int(linear + 2 * frozen_16bit)
    frozen_gpu = frozen // n + 2 * params.largest_layer if zero_stage == 3 else frozen
    train_gpu, train_cpu = _trainable_states_bytes(trainable, zero_stage, offload, n)
    formula = ("frozen base / N + 2*largest_layer" if zero_stage == 3 else "frozen base") + " + adapter Adam states"
    detail = {"lora_params": adapters, "trainable_params": trainable, "frozen_base_bytes": frozen,
              "frozen_base_gpu_bytes": frozen_gpu, "trainable_states_gpu_bytes": train_gpu}
    cpu = train_cpu * gpus_per_node + int(frozen * DEEPSPEED_CPU_BUFFER_FACTOR)  # loading copy of the base per node
    return ModelStates(frozen_gpu + train_gpu, cpu, formula), detail


def layer_activation_bytes(dims: ModelDims, seq_len: int, micro_batch: int, attention: str = "flash") -> int:
    """Bytes autograd saves for one decoder layer over one micro-batch (see the module docstring)."""
    h, q, kv, a = dims.hidden, dims.q_dim, dims.kv_dim, dims.heads
    if attention == "flash":
        attn = 4 * q + 4 * kv + 4 * a
    elif attention == "eager":
        attn = 8 * q + 6 * a * seq_len
    else:
        raise ConfigError(f"training.attention: expected 'flash' or 'eager', got {attention!r}")
    per_token = dims.norms_per_layer * (8 * h + 4) + attn + 8 * dims.intermediate
    return seq_len * micro_batch * per_token


def activation_bytes(dims: ModelDims, seq_len: int, micro_batch: int, checkpointing: bool,
                     attention: str = "flash", head: str = "classifier") -> int:
    """Peak activation memory of one micro-batch on one GPU (data parallel: nothing divides it across GPUs)."""
    tokens = seq_len * micro_batch
    per_layer = layer_activation_bytes(dims, seq_len, micro_batch, attention)
    layers = dims.layers * 2 * tokens * dims.hidden + per_layer if checkpointing else dims.layers * per_layer
    head_bytes = tokens * (8 * dims.hidden + 4) + (10 * tokens * dims.vocab if head == "lm" else 0)
    return layers + head_bytes


@dataclass(frozen=True)
class MemoryPlan:
    model_states_gib: float
    activations_gib: float
    reserved_gib: float
    total_gib: float
    gpu_memory_gib: float
    fits: bool
    max_micro_batch: int
    cpu_per_node_gib: float
    model_states_formula: str


def plan_memory(states: ModelStates, activation_per_sample: int, micro_batch: int, gpu_memory_gib: float,
                reserved_gib: float) -> MemoryPlan:
    """Fit check; activations scale linearly with the micro-batch, so the largest one that fits is a division."""
    states_gib = states.gpu_bytes / GIB
    per_sample_gib = activation_per_sample / GIB
    activations_gib = per_sample_gib * micro_batch
    total = states_gib + activations_gib + reserved_gib
    room = gpu_memory_gib - states_gib - reserved_gib
    max_micro_batch = max(int(room // per_sample_gib), 0) if per_sample_gib > 0 else 0
    return MemoryPlan(
        model_states_gib=round(states_gib, 3), activations_gib=round(activations_gib, 3), reserved_gib=reserved_gib,
        total_gib=round(total, 3), gpu_memory_gib=gpu_memory_gib, fits=total <= gpu_memory_gib,
        max_micro_batch=max_micro_batch, cpu_per_node_gib=round(states.cpu_bytes / GIB, 2),
        model_states_formula=states.formula,
    )


def inference_weight_bytes(dims: ModelDims, params: ParamCount, quant_bits: int | None) -> int:
    """A replica's weights for inference: the decoder's linears as bitsandbytes stores them (or 16-bit), everything
    else (embeddings, norms, biases, the score head) in 16 bits, which bitsandbytes leaves as it is."""
    return int(linear_weight_bytes(dims, params, quant_bits) + 2 * (params.total - params.decoder_linear))

