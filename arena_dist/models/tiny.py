"""Tiny random-init model configs (2 layers, hidden 64) for tests, demos and CPU benchmarks."""

from __future__ import annotations

from arena_dist.models.config import Arch, LoraSettings, ModelConfig

TINY_ARCHS: tuple[Arch, ...] = ("llama", "qwen2", "gemma2")
TINY_DIMS = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)


def tiny_model_config(arch: Arch = "llama", head: str = "linear", lora: bool = False, **overrides) -> ModelConfig:
    """`vocab_size` stays None: it resolves to the local tokenizer's vocabulary when the model is built."""
    settings = dict(arch=arch, head=head, **TINY_DIMS)
    if lora:
        settings["lora"] = LoraSettings(r=4, alpha=8, dropout=0.0)
    settings.update(overrides)
    return ModelConfig(**settings)
