"""Accelerators the planner knows: memory, dense 16-bit tensor-core peak (no structured sparsity) and memory
bandwidth, from the vendor data sheets:
- A100: NVIDIA A100 Tensor Core GPU data sheet (312 TFLOP/s bf16 dense; 1,555 GB/s for 40 GB, 2,039 GB/s for 80 GB SXM)
- H100 / H200: NVIDIA H100 and H200 data sheets (989 TFLOP/s bf16 dense SXM; 3.35 TB/s and 4.8 TB/s)
- L40S: NVIDIA L40S data sheet (362 TFLOP/s bf16 dense; 864 GB/s)
- T4: NVIDIA T4 data sheet (65 TFLOP/s fp16 mixed precision, 320 GB/s GDDR6, 70 W; Turing has no bf16). 16 GB
  with ECC on (its default, as on Kaggle) leaves 15,360 MiB, what nvidia-smi shows: the table lists 15 GiB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from arena_dist.errors import ConfigError


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_gib: float
    peak_tflops_bf16: float  # dense bf16/fp16 tensor-core peak per GPU (fp16 where there is no bf16)
    memory_bandwidth_gb_s: Optional[float] = None  # None for a custom GPU given by memory and peak only
    bf16: bool = True  # False: 16-bit inference runs in fp16


GPUS: dict[str, GpuSpec] = {
    "a100-40gb": GpuSpec("A100-SXM4-40GB", 40.0, 312.0, 1555.0),
    "a100-80gb": GpuSpec("A100-SXM4-80GB", 80.0, 312.0, 2039.0),
    "h100-80gb": GpuSpec("H100-SXM5-80GB", 80.0, 989.0, 3350.0),
    "h200-141gb": GpuSpec("H200-SXM-141GB", 140.0, 989.0, 4800.0),
    "l40s-48gb": GpuSpec("L40S-48GB", 48.0, 362.0, 864.0),
    "t4-16gb": GpuSpec("Tesla-T4-16GB", 15.0, 65.0, 320.0, bf16=False),
}


def gpu_spec(name: str, memory_gib: float | None = None, peak_tflops: float | None = None,
             key: str = "cluster.gpu") -> GpuSpec:
    """A known GPU, with optional overrides; an unknown name needs both numbers (the cluster section has them)."""
    base = GPUS.get(name.lower())
    if base is None:
        if memory_gib is None or peak_tflops is None:
            hint = "set cluster.gpu_memory_gib and cluster.peak_tflops, or " if key == "cluster.gpu" else ""
            raise ConfigError(f"{key}: unknown GPU {name!r}; {hint}use one of {sorted(GPUS)}")
        return GpuSpec(name, memory_gib, peak_tflops)
    return GpuSpec(base.name, memory_gib or base.memory_gib, peak_tflops or base.peak_tflops_bf16,
                   base.memory_bandwidth_gb_s, base.bf16)
