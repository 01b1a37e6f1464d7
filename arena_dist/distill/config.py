"""Typed configuration of the student stage: the training sections of `arena_dist.train.config` (the teacher's,
same spelling and meaning) plus the soft-label data keys, `loss` and `merge`."""

from __future__ import annotations

from pydantic import Field, model_validator

from arena_dist.config import StrictModel
from arena_dist.train.config import DataSettings, RaySettings, TrainingSettings, TrainJobConfig


class StudentData(DataSettings):
    # Finalized label stores (or merged ensembles) keyed by record id: one, or several (e.g. one per split).
    soft_labels: str | list[str] | None = None
    soft_label_column: str = "p_mean"
    use_train_split: bool = True  # competition rows with hard labels
    use_pool: bool = True  # pool rows with soft labels only (needs soft_labels)
    soft_on_hard_rows: bool = False  # also attach the teacher's soft label to competition rows


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


class StudentTraining(TrainingSettings):
    lr: float = Field(2e-4, gt=0)
    global_batch: int = Field(16, gt=0)
    micro_batch: int = Field(4, gt=0)
    log_every: int = Field(10, gt=0)


class StudentRay(RaySettings):
    num_workers: int = Field(1, ge=1, le=8)  # one node: 1..8 workers (replicated weights, one all-reduce per step)
    max_failures: int = Field(0, ge=-1)


class StudentMerge(StrictModel):
    enabled: bool = False
    check_rows: int = Field(32, gt=0)  # held-out rows whose logits compare merged vs unmerged
    max_logit_diff: float | None = Field(None, gt=0)  # refuse the merged export when the difference is larger
    dtype: str = "float32"


class StudentConfig(TrainJobConfig):
    data: StudentData
    training: StudentTraining = StudentTraining()
    ray: StudentRay = StudentRay()
    loss: StudentLoss = StudentLoss()
    merge: StudentMerge = StudentMerge()
    # model.head verbalizer: also write the export as a plain causal-LM checkpoint (<export_dir>_causal_lm, LoRA
    # merged) that a generation server can serve (arena_dist.models.verbalizer.export_causal_lm)
    causal_lm_export: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> "StudentConfig":
        if self.model.quantization != "none" and self.model.lora is None:
            raise ValueError("model.lora is required with model.quantization 4bit/8bit (quantised weights are frozen)")
        if self.data.use_pool and self.data.soft_labels is None and not self.data.use_train_split:
            raise ValueError("data: nothing to train on (pool rows need data.soft_labels)")
        if self.loss.w_ce == 0 and self.data.soft_labels is None:
            raise ValueError("loss: w_ce is 0 and there are no data.soft_labels: no target to learn from")
        if self.merge.enabled and self.model.lora is None:
            raise ValueError("merge.enabled needs a LoRA student (model.lora)")
        if self.causal_lm_export and self.model.head != "verbalizer":
            raise ValueError("causal_lm_export needs model.head: verbalizer (other heads have no LM-head rows)")
        return self
