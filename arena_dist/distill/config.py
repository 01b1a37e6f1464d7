"""Typed configuration of the student stage (the single source of truth for `arena-dist student`)."""

from __future__ import annotations

from pydantic import Field, model_validator

from arena_dist.config import StrictModel
from arena_dist.formatting.templates import FormatConfig
from arena_dist.models.config import ModelConfig


class StudentData(StrictModel):
    dataset_dir: str
    # Finalized label stores (or merged ensembles) keyed by record id: one, or several (e.g. one per split).
    soft_labels: str | list[str] | None = None
    soft_label_column: str = "p_mean"
    use_train_split: bool = True  # competition rows with hard labels
    use_pool: bool = True  # pool rows with soft labels only (needs soft_labels)
    soft_on_hard_rows: bool = False  # also attach the teacher's soft label to competition rows
    eval_fold: int | None = Field(0, ge=0)  # held out for evaluation; None trains on every fold
    swap_augment: bool = True  # a seeded coin per (epoch, row) exchanges A and B (label and soft label follow)
    eval_max_rows: int | None = Field(None, gt=0)  # cap on held-out rows evaluated (per run, not per rank)


class StudentLoss(StrictModel):
    w_ce: float = Field(1.0, ge=0)
    w_kl: float = Field(1.0, ge=0)
    w_cos: float = Field(0.0, ge=0)
    temperature: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _some_weight(self) -> "StudentLoss":
        if self.w_ce + self.w_kl + self.w_cos <= 0:
            raise ValueError("at least one of w_ce, w_kl, w_cos must be > 0")
        return self


class StudentTraining(StrictModel):
    lr: float = Field(2e-4, gt=0)
    head_lr: float | None = Field(None, gt=0)  # the fully trained head often wants a different rate
    weight_decay: float = Field(0.0, ge=0)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, gt=0)  # stop earlier than `epochs`
    global_batch: int = Field(16, gt=0)
    micro_batch: int = Field(4, gt=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    clip: float | None = Field(1.0, gt=0)
    seed: int = 0
    log_every: int = Field(10, gt=0)
    eval_every: int | None = Field(None, gt=0)
    checkpoint_every: int | None = Field(None, gt=0)
    # Newest complete checkpoints kept: rank 0 removes older ones after each save (same key as the teacher's).
    keep_last: int = Field(2, ge=1)
    eval_max_tokens: int = Field(8192, gt=0)  # token budget of an evaluation batch (rows x longest row)
    threads: int | None = Field(None, gt=0)  # torch threads per worker (1 for several workers on a small CPU)
    stop_after_steps: int | None = Field(None, gt=0)  # end this run early (tests: simulate a preemption)


class StudentRay(StrictModel):
    enabled: bool = True  # false: the plain single-process path
    address: str | None = None  # None / "local": a private local Ray; else a cluster address ($RAY_ADDRESS works)
    num_workers: int = Field(1, ge=1, le=8)  # one node: 1..8 workers
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    max_failures: int = Field(0, ge=-1)


class StudentMerge(StrictModel):
    enabled: bool = False
    check_rows: int = Field(32, gt=0)  # held-out rows whose logits compare merged vs unmerged
    max_logit_diff: float | None = Field(None, gt=0)  # refuse the merged export when the difference is larger
    dtype: str = "float32"


class StudentConfig(StrictModel):
    run_dir: str
    export_dir: str | None = None  # default <run_dir>/export
    tokenizer: str = "local"  # hub id / dir for real runs
    model: ModelConfig
    format: FormatConfig = FormatConfig()
    data: StudentData
    loss: StudentLoss = StudentLoss()
    training: StudentTraining = StudentTraining()
    ray: StudentRay = StudentRay()
    merge: StudentMerge = StudentMerge()

    @model_validator(mode="after")
    def _consistent(self) -> "StudentConfig":
        if self.model.quantization != "none" and self.model.lora is None:
            raise ValueError("model.lora is required with model.quantization 4bit/8bit (quantised weights are frozen)")
        if self.data.use_pool and self.data.soft_labels is None and not self.data.use_train_split:
            raise ValueError("data: nothing to train on (pool rows need data.soft_labels)")
        per_step = self.training.micro_batch * self.ray.num_workers if self.ray.enabled else self.training.micro_batch
        if self.training.global_batch % per_step:
            raise ValueError(f"training.global_batch {self.training.global_batch} must be a multiple of "
                             f"micro_batch x workers = {per_step}")
        if self.loss.w_ce == 0 and self.data.soft_labels is None:
            raise ValueError("loss: w_ce is 0 and there are no data.soft_labels: no target to learn from")
        if self.merge.enabled and self.model.lora is None:
            raise ValueError("merge.enabled needs a LoRA student (model.lora)")
        return self

    @property
    def world_size(self) -> int:
        return self.ray.num_workers if self.ray.enabled else 1
