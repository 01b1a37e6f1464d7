"""Typed model settings: a hub id / local dir, or an architecture + tiny dims for random init (tests, benchmarks)."""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import Field, field_validator, model_validator

from arena_dist.config import StrictModel

Arch = Literal["llama", "qwen2", "gemma2"]
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def inference_dtype(requested: str, cuda: bool, bf16_supported: bool) -> str:
    """bfloat16 on a GPU without it (T4) becomes float16, which it computes natively; CPU keeps bfloat16."""
    return "float16" if requested == "bfloat16" and cuda and not bf16_supported else requested


class LoraSettings(StrictModel):
    r: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS), min_length=1)
    # Modules trained in full next to the adapters (PEFT modules_to_save; the head and segment embeddings always are).
    # Leave empty for pretrained students. A random-init student needs ["embed_tokens"]: its frozen random token
    # embeddings cannot be read out by low-rank updates (bench/results/synth_learnability_findings.md).
    modules_to_save: list[str] = Field(default_factory=list)


class ModelConfig(StrictModel):
    """Either `name_or_path` (from_pretrained) or `arch` + dims (random init from a config), not both."""

    name_or_path: str | None = None
    arch: Arch | None = None
    hidden_size: int = Field(64, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(128, gt=0)
    vocab_size: int | None = Field(None, gt=0)  # None: the local tokenizer's vocabulary
    max_position_embeddings: int = Field(4096, gt=0)
    init_seed: int = 0  # random init is seeded so every rank builds the same weights
    # Std of the random init (transformers' initializer_range). 0.02 suits pretraining-scale models; a tiny random-init
    # classifier learns the A/B comparison much sooner from ~1/sqrt(hidden_size)
    # (bench/results/synth_learnability_findings.md).
    initializer_range: float = Field(0.02, gt=0)
    # A learned vector per part of the input (other / response A / response B) added to the token embeddings
    # (arena_dist.models.segments). For random-init models; pretrained LLMs read the template's markers.
    segment_embeddings: bool = False
    # Their gates start at 1 + N(0, segment_gate_std): 0 keeps (pretrained) token embeddings as they are; a random-init
    # model learns the comparison reliably from 1.0 (bench/results/synth_learnability_findings.md).
    segment_gate_std: float = Field(0.0, ge=0)

    # verbalizer: the causal LM's next-token logits for the answer words (arena_dist.models.verbalizer); needs
    # name_or_path, a causal-LM checkpoint
    head: Literal["linear", "mlp", "verbalizer"] = "linear"
    head_dropout: float = Field(0.1, ge=0, lt=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False
    lora: LoraSettings | None = None
    quantization: Literal["none", "4bit", "8bit"] = "none"
    trust_remote_code: bool = False
    # Gemma-2 gets eager for sdpa (arena_dist.models.build.attention_kernel)
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"

    @field_validator("attn_implementation")
    @classmethod
    def _kernel_installed(cls, kernel: str) -> str:  # at config load, not at the first forward
        if kernel == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ValueError("flash_attention_2 needs the flash-attn package, which is not installed (use sdpa)")
        return kernel

    @model_validator(mode="after")
    def _one_source(self) -> "ModelConfig":
        if (self.name_or_path is None) == (self.arch is None):
            raise ValueError("set exactly one of model.name_or_path (pretrained) or model.arch (random init)")
        if self.head == "verbalizer" and self.name_or_path is None:
            raise ValueError("model.head=verbalizer needs model.name_or_path: a causal-LM checkpoint whose LM head "
                             "gives the answer rows")
        if self.arch is not None:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
            if self.num_heads % self.num_kv_heads:
                raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        return self

    def base_spec(self) -> dict:
        """What rebuilds the base model (recorded in export metadata)."""
        if self.name_or_path is not None:
            return {"name_or_path": self.name_or_path}
        return self.model_dump(
            include={"arch", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                     "vocab_size", "max_position_embeddings", "init_seed", "initializer_range"}
        )
