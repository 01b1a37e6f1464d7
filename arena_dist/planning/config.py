"""Typed settings of the capacity planner (`arena-dist plan`, and the README table of arena_dist.planning.table):
a library module, so the table needs no stage recipe."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from arena_dist.config import StrictModel
from arena_dist.planning.models import LINEAR_MODULES


class ModelSection(StrictModel):
    """A built-in hub id (see arena_dist/planning/models.py) and/or explicit dims, which override the built-in ones."""

    name: Optional[str] = None
    layers: Optional[int] = Field(None, gt=0)
    hidden: Optional[int] = Field(None, gt=0)
    heads: Optional[int] = Field(None, gt=0)
    kv_heads: Optional[int] = Field(None, gt=0)
    intermediate: Optional[int] = Field(None, gt=0)
    vocab: Optional[int] = Field(None, gt=0)
    head_dim: Optional[int] = Field(None, gt=0)
    tied_embeddings: Optional[bool] = None
    qkv_bias: Optional[bool] = None
    norms_per_layer: Optional[int] = Field(None, ge=0)
    head: Literal["classifier", "lm"] = "classifier"
    num_labels: int = Field(3, ge=2)


class TrainingSection(StrictModel):
    method: Literal["full", "lora", "qlora"] = "full"
    lora_r: int = Field(16, gt=0)
    lora_target_modules: list[str] = Field(default_factory=lambda: list(LINEAR_MODULES))
    quant_bits: Literal[4, 8] = 4
    double_quant: bool = True
    dtype: Literal["bf16", "fp16"] = Field(
        "bf16", description="16-bit mixed precision either way: same bytes and peak; recorded in plan.json")
    zero_stage: int = Field(3, ge=0, le=3)
    offload: Literal["none", "optimizer", "optimizer+params"] = "none"
    seq_len: int = Field(4096, gt=0)
    micro_batch: int = Field(1, gt=0)
    activation_checkpointing: bool = True
    attention: Literal["flash", "eager"] = "flash"


class StudentTrainingSection(TrainingSection):
    """Student defaults (QLoRA, no ZeRO partitioning of the 4-bit base); `--set student.training.x=...` keeps them."""

    method: Literal["full", "lora", "qlora"] = "qlora"
    zero_stage: int = Field(0, ge=0, le=3)
    seq_len: int = Field(2048, gt=0)
    micro_batch: int = Field(4, gt=0)


class TeacherSection(StrictModel):
    model: ModelSection = Field(default_factory=lambda: ModelSection(name="meta-llama/Llama-3.3-70B-Instruct"))
    training: TrainingSection = Field(default_factory=TrainingSection)
    nodes: Optional[int] = Field(None, gt=0, description="nodes for this job; default cluster.nodes")
    epoch_tokens: float = Field(1e9, gt=0, description="tokens in one epoch (rows x mean tokens per row)")


class StudentSection(TeacherSection):
    """Defaults: a Gemma-2-9B QLoRA student on one node without ZeRO partitioning of the 4-bit base."""

    model: ModelSection = Field(default_factory=lambda: ModelSection(name="google/gemma-2-9b-it"))
    training: StudentTrainingSection = Field(default_factory=StudentTrainingSection)
    nodes: Optional[int] = Field(1, gt=0)


class ClusterSection(StrictModel):
    nodes: int = Field(2, gt=0)
    gpus_per_node: int = Field(8, gt=0)
    gpu: str = "a100-80gb"
    gpu_memory_gib: Optional[float] = Field(None, gt=0)
    peak_tflops: Optional[float] = Field(None, gt=0, description="dense bf16 TFLOP/s per GPU")
    reserved_gib: float = Field(4.0, ge=0, description="CUDA context, NCCL buffers, ZeRO prefetch, fragmentation")


class LabelSection(StrictModel):
    rows: int = Field(1_000_000, gt=0)
    tokens_per_row: int = Field(1024, gt=0)
    swap_tta: bool = True
    teachers: int = Field(1, gt=0, description="teachers (or folds) that each score every row")
    nodes: Optional[int] = Field(None, gt=0)
    mfu: Optional[float] = Field(None, gt=0, le=1, description="inference MFU; default the global mfu")


class Config(StrictModel):
    out_dir: str = "runs/plan"
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    mfu: float = Field(0.4, gt=0, le=1)
    teacher: TeacherSection = Field(default_factory=TeacherSection)
    label: Optional[LabelSection] = Field(default_factory=LabelSection)
    student: Optional[StudentSection] = Field(default_factory=StudentSection)
