"""Accelerators the planner knows: memory and dense 16-bit peak (no structured sparsity), from vendor data sheets."""

from __future__ import annotations

from dataclasses import dataclass

from arena_dist.errors import ConfigError


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_gib: float
    peak_tflops_bf16: float  # dense bf16/fp16 tensor-core peak per GPU


GPUS: dict[str, GpuSpec] = {
    "a100-40gb": GpuSpec("A100-SXM4-40GB", 40.0, 312.0),
    "a100-80gb": GpuSpec("A100-SXM4-80GB", 80.0, 312.0),
    "h100-80gb": GpuSpec("H100-SXM5-80GB", 80.0, 989.0),
    "h200-141gb": GpuSpec("H200-SXM-141GB", 140.0, 989.0),
    "l40s-48gb": GpuSpec("L40S-48GB", 48.0, 362.0),
}


def gpu_spec(name: str, memory_gib: float | None = None, peak_tflops: float | None = None) -> GpuSpec:
    """A known GPU, with optional overrides; an unknown name needs both numbers."""
    base = GPUS.get(name.lower())
    if base is None:
        if memory_gib is None or peak_tflops is None:
            raise ConfigError(
                f"cluster.gpu: unknown GPU {name!r}; set cluster.gpu_memory_gib and cluster.peak_tflops, "
                f"or use one of {sorted(GPUS)}")
        return GpuSpec(name, memory_gib, peak_tflops)
    return GpuSpec(base.name, memory_gib or base.memory_gib, peak_tflops or base.peak_tflops_bf16)
