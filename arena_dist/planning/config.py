"""Typed settings of the capacity planner (`arena-dist plan`, and the README table of arena_dist.planning.table):
a library module, so the table needs no stage recipe."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

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


class LengthBucket(StrictModel):
    share: float = Field(gt=0, le=1, description="share of the rows")
    tokens: int = Field(gt=0, description="tokens per row (prompt and both responses in the model's format)")


class SubmissionModel(ModelSection):
    """One model of a submission: a built-in hub id (or explicit dims, as in ModelSection), or only its size."""

    params: Optional[float] = Field(
        None, gt=0, description="parameter count of a model the table lacks (e.g. 9.2e9): 2 x params FLOPs per token, "
                                "no attention term, every weight quantised, activations not modelled")
    quantization: Literal["none", "8bit", "4bit"] = "4bit"  # bitsandbytes, as predict's models[i].quantization
    rows_share: float = Field(1.0, gt=0, le=1,
                              description="share of the rows it scores (predict: refine[i].fraction of its direct pass)")
    tta_share: float = Field(0.0, ge=0, le=1, description="share of its rows scored again with A and B swapped "
                                                          "(predict: refine[i].fraction of its swap pass)")
    attention: Optional[Literal["sdpa", "eager"]] = Field(
        None, description="default: eager for Gemma-2 (its logit soft-capping needs it, as the model builder "
                          "chooses), sdpa otherwise")
    efficiency: Optional[float] = Field(None, gt=0, le=1, description="default submission.efficiency")

    @model_validator(mode="after")
    def _name_dims_or_params(self):
        described = any(getattr(self, key) is not None for key in ("name", "layers", "hidden", "heads", "kv_heads",
                                                                     "intermediate", "vocab"))
        if self.params is not None and described:
            raise ValueError("give name (or dims) or params, not both")
        if self.params is None and not described:
            raise ValueError("give name (a model of the planner's table), explicit dims, or params")
        return self


class SubmissionSection(StrictModel):
    """A competition submission run, as `arena-dist predict` does it: every row scored once by models[0], swap-TTA and
    further models on shares of the rows; one replica per GPU, the rows split between them, one model after the
    other. Formulas and the reasons for the defaults: arena_dist/planning/submission.py."""

    rows: int = Field(25_000, gt=0)
    mean_tokens: Optional[int] = Field(None, gt=0, description="tokens per row when all rows are alike")
    length_buckets: Optional[list[LengthBucket]] = Field(None, description="the length mix; shares sum to 1")
    max_length: Optional[int] = Field(None, gt=0, description="truncation: longer rows are cut to this many tokens")
    models: list[SubmissionModel] = Field(min_length=1)
    gpu: str = "t4-16gb"
    devices: int = Field(2, gt=0, description="GPUs, one model replica each, the rows split evenly")
    budget_hours: float = Field(9.0, gt=0, description="the competition's limit: LMSYS 9 h, WSDM 12 h")
    # 0.2 of the T4's 65 dense fp16 TFLOP/s: under its 70 W cap a T4 holds ~24 TFLOP/s (0.37) on long fp16 GEMMs
    # (NVIDIA developer forum thread "About GPU peak performance"), and a transformers forward (eager attention for
    # Gemma-2, norms, rotary, fp32 softmax as separate kernels, Python between batches) keeps a bit over half of it.
    # Check: public LMSYS notebooks scored ~25k test rows with Gemma-2-9B 4-bit on 2xT4 at max_length ~2k in 3-4 h;
    # with the length mix of launch/configs/plan_submission_2xt4.yaml this gives 3.3 h. On A100/H100 use ~0.4.
    efficiency: float = Field(0.2, gt=0, le=1, description="share of the dense fp16 peak the forward reaches")
    # bitsandbytes' LLM.int8() matmuls (int8 activations per forward, fp16 outlier columns) run well below 16-bit
    # speed; its maintainers call the kernels training-oriented (bitsandbytes issues #490, #181).
    int8_speed: float = Field(0.5, gt=0, le=1, description="bitsandbytes LLM.int8() speed relative to 16-bit")
    padding: float = Field(1.02, ge=1, description="padded / real tokens of length-sorted token-budget batches")
    batch_tokens: int = Field(8192, gt=0, description="padded tokens per forward (predict: batching.max_tokens)")
    kv_cache: bool = Field(False, description="the forward keeps every layer's K/V (use_cache on; predict turns it "
                                              "off, a plain transformers forward of the hub configs keeps it)")
    reserved_gib: float = Field(1.0, ge=0, description="CUDA context and allocator slack per GPU")
    load_gb_per_s: float = Field(0.4, gt=0, description="checkpoint read rate shared by all replicas")
    setup_minutes: float = Field(5.0, ge=0, description="start, reading and tokenising the test file, writing")

    @model_validator(mode="after")
    def _lengths_and_first_model(self):
        if (self.mean_tokens is None) == (self.length_buckets is None):
            raise ValueError("give one of submission.mean_tokens and submission.length_buckets")
        if self.length_buckets is not None:
            total = sum(bucket.share for bucket in self.length_buckets)
            if abs(total - 1.0) > 1e-3:
                raise ValueError(f"submission.length_buckets: the shares sum to {total:g}, not 1")
        if self.models[0].rows_share != 1.0:
            raise ValueError("submission.models.0.rows_share: the first model scores every row (1.0)")
        return self


class Config(StrictModel):
    out_dir: str = "runs/plan"
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    mfu: float = Field(0.4, gt=0, le=1)
    teacher: Optional[TeacherSection] = Field(default_factory=TeacherSection)
    label: Optional[LabelSection] = Field(default_factory=LabelSection)
    student: Optional[StudentSection] = Field(default_factory=StudentSection)
    submission: Optional[SubmissionSection] = None

    @model_validator(mode="after")
    def _something_to_plan(self):
        if self.label is not None and self.teacher is None:
            raise ValueError("label: pseudo-labelling is planned with the teacher; set teacher or label: null")
        if self.teacher is None and self.student is None and self.submission is None:
            raise ValueError("nothing to plan: set teacher, student and/or submission")
        return self
