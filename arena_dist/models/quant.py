"""bitsandbytes 4-bit / 8-bit loading for QLoRA students (the hook `arena_dist.models.build` calls).

- 4bit: NF4 with double quantisation; compute dtype = the model dtype (bf16 on GPUs, as in QLoRA; float32 is what
  the tiny CPU students use, since bf16 matmuls on a 2-core CPU are slow and gain nothing).
- 8bit: LLM.int8() (`Linear8bitLt`), outlier threshold 6.0.
The classification head (`score`) is never quantised: it is trained in full. Quantisation happens at load time from
full-precision weights (re-saving an NF4 model and reloading it drifts, while 8-bit reloads exactly), so exports
keep the full-precision base + adapter and every load quantises again.
"""

from __future__ import annotations

import torch

SKIP_MODULES = ["score"]


def bnb_config(quantization: str, dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=torch.uint8,
            llm_int8_skip_modules=SKIP_MODULES,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0, llm_int8_skip_modules=SKIP_MODULES)
    raise ValueError(f"unknown quantization {quantization!r} (expected 4bit or 8bit)")


def from_pretrained_kwargs(quantization: str, dtype: torch.dtype) -> dict:
    """Extra `from_pretrained` arguments for `quantization` in {"4bit", "8bit"}."""
    kwargs = {"quantization_config": bnb_config(quantization, dtype)}
    # bitsandbytes quantises while placing the weights: on this process's GPU (one per Ray worker), else the CPU.
    kwargs["device_map"] = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    return kwargs


def prepare_model(model, cfg):
    """peft's k-bit preparation: freeze the base, keep norms in float32, optional gradient checkpointing.

    Also turns off bitsandbytes' CPU inference repacking for models that train: on CPUs with AVX512-BF16, a
    Linear4bit forward in eval mode converts its weight in place to a packed CPU layout (and state_dict converts it
    back, not bit-identically), and later training forwards go through `gemv_4bit`, which has no autograd kernel
    (torch warns the backward may be silently wrong). A student evaluates between training steps, so it keeps
    the trainable layout throughout; exports loaded for inference keep the fast path."""
    from peft import prepare_model_for_kbit_training

    keep_training_layout(model)
    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def keep_training_layout(model) -> None:
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def quantized_layer_counts(model) -> dict[str, int]:
    """How many Linear4bit / Linear8bitLt modules the model holds (reports and tests)."""
    import bitsandbytes as bnb

    counts = {"Linear4bit": 0, "Linear8bitLt": 0}
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            counts["Linear4bit"] += 1
        elif isinstance(module, bnb.nn.Linear8bitLt):
            counts["Linear8bitLt"] += 1
    return counts
