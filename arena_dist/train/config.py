"""Typed settings of a training run: the sections both the teacher and the student stage's configs are made of.

data / model / format / training / ray / output mean the same thing, with the same spelling, in both stages; the
student adds `loss` and `merge` and a few data keys (soft labels). A missing setting is `null` (never 0), a swap mode
is a word (`none`, `random`, `both`), warm-up is counted in steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from arena_dist.config import StrictModel
from arena_dist.formatting.templates import FormatConfig
from arena_dist.models.config import ModelConfig

SwapMode = Literal["none", "random", "both"]


class DataSettings(StrictModel):
    dataset_dir: Path
    fold: int | None = Field(0, ge=0)  # evaluate on this fold, train on the others; None: train on all, no eval
    num_folds: int = Field(5, gt=0)  # must match the dataset's manifest
    # "random": each epoch shows every sample once, A/B exchanged with probability 1/2; "both": twice, once in each
    # order (an epoch is twice as long; a random-init model learns the comparison much sooner).
    swap_augment: SwapMode = "none"
    # Training sample order by language (records' `language` field), e.g. {en: 4.0, zh: 2.0}: every epoch still shows
    # every sample, in a seeded weighted random order, so heavier languages come earlier (nothing is dropped). Other
    # languages weigh `default_language_weight`. null: the plain seeded shuffle. Resuming needs the same weights.
    language_weights: dict[str, Annotated[float, Field(gt=0)]] | None = None
    default_language_weight: float = Field(1.0, gt=0)
    max_train_records: int | None = Field(None, gt=0)  # first N of the training records (smoke runs)
    max_eval_records: int | None = Field(None, gt=0)  # first N of the held-out records

    @model_validator(mode="after")
    def _fold_in_range(self) -> "DataSettings":
        if self.fold is not None and self.fold >= self.num_folds:
            raise ValueError(f"fold {self.fold} is not below num_folds {self.num_folds}")
        return self


class TeacherData(DataSettings):
    split: str = "train"
    extra_inputs: Literal["none", "model_names"] = "none"  # teacher-only side information (students never see it)


class TrainingSettings(StrictModel):
    """Optimisation. Precision is `model.dtype` (bfloat16/float16 turn on DeepSpeed's bf16/fp16)."""

    lr: float = Field(1e-5, gt=0)
    head_lr: float | None = Field(None, gt=0)  # the classification head's rate (default: lr)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0)  # stop earlier than `epochs` would
    global_batch: int = Field(32, gt=0)  # samples per optimizer step, fixed whatever the world size
    micro_batch: int = Field(1, gt=0)  # samples per forward per rank; accumulation = global / (micro * world)
    # Padding-free training (arena_dist.train.packing): a step's rows are packed into micro-batches of at most this
    # many tokens, one row each, attention kept within each example; null: padded micro-batches of `micro_batch` rows
    # (which then only sets DeepSpeed's nominal accumulation). Llama, Qwen2 and Gemma-2 models.
    micro_batch_tokens: int | None = Field(None, gt=0)
    eval_micro_batch: int | None = Field(None, gt=0)  # default: micro_batch
    clip: float | None = Field(1.0, gt=0)  # max gradient norm; null: no clipping
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # cosine floor
    seed: int = 0
    log_every: int = Field(1, gt=0)
    eval_every: int | None = Field(None, gt=0)  # steps; null: only at the end
    checkpoint_every: int | None = Field(None, gt=0)  # steps; null: no intermediate checkpoints
    # Newest complete checkpoints kept (with their universal conversions): rank 0 removes older ones after each
    # save. A 70B ZeRO-3 checkpoint is over 1 TB. Same key in the student stage's config.
    keep_last: int = Field(2, ge=1)
    threads: int | None = Field(None, gt=0)  # torch threads per worker (default: ray.cpus_per_worker, at least 1)
    stop_after_steps: int | None = Field(None, gt=0)  # end this run early, resumable (tests: a preemption)
    # Write the loaded model's logits on a few rows before the first step (probe_step0.json): a check that a
    # pretrained checkpoint loaded as a plain build would. Off by default: under ZeRO-3 a forward before the first
    # step makes every later backward re-gather each layer's parameters (measured on the demo teacher: DeepSpeed's
    # pre-backward fetches 1.3 -> 29 ms per step, the step 0.13 -> 0.18 s).
    probe_initial: bool = False
    # DeepSpeed (teacher only; the student's replicated data parallelism has no ZeRO knobs)
    ds_config: Path = Path("ds_configs/zero3.json")  # ZeRO knobs only
    ds_overrides: dict = Field(default_factory=dict)  # deep-merged into the ds_config file (ZeRO knobs only)
    optimizer_impl: Literal["auto", "torch", "deepspeed"] = "auto"  # auto: torch AdamW on CPU, DeepSpeed's on GPU


class RaySettings(StrictModel):
    enabled: bool = True  # false: one plain process, no Ray (student only: the teacher always runs on Ray Train)
    address: str | None = None  # None: RAY_ADDRESS / the job's cluster, else a private local instance
    num_workers: int = Field(2, gt=0)  # nodes x GPUs per node
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)
    max_failures: int = Field(2, ge=-1)  # worker-group restarts from the last checkpoint; -1: unlimited
    # Shared filesystem visible to every worker: training state (checkpoints, TensorBoard, metrics.jsonl) goes to
    # storage_path/<output.run_name>; null: into output.run_dir.
    storage_path: Path | None = None
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl with GPUs, gloo without
    worker_env: dict[str, str] = Field(default_factory=dict)  # extra environment for the workers

    @field_validator("worker_env")
    @classmethod
    def _no_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        """The config is saved beside the run: a token here would be written to disk."""
        from arena_dist.worker_env import SECRET_ENV

        secrets = sorted(set(value) & set(SECRET_ENV))
        if secrets:
            raise ValueError(f"{secrets[0]} would be saved with the config; set it in the driver's environment "
                             "instead (it reaches every worker without being written anywhere)")
        return value


class OutputSettings(StrictModel):
    # Ray Train run name: training state lives in ray.storage_path/run_name, also across resubmissions of the run.
    run_name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    run_dir: Path | None = None  # stage outputs (export, summary, resolved config); default: the training state dir
    export_dir: Path | None = None  # default: <run_dir>/export
    tokenizer: str | None = None  # default: model.name_or_path, or "local" for random-init models


class TrainJobConfig(StrictModel):
    """What every training stage has (the teacher's and the student's configs add to it)."""

    data: DataSettings
    model: ModelConfig
    format: FormatConfig = FormatConfig()
    training: TrainingSettings = TrainingSettings()
    ray: RaySettings = RaySettings()
    output: OutputSettings = OutputSettings()

    @model_validator(mode="after")
    def _batch_fits(self) -> "TrainJobConfig":
        per_step = self.training.micro_batch * self.world_size
        if self.training.global_batch % per_step:
            raise ValueError(f"training.global_batch {self.training.global_batch} is not a multiple of micro_batch x "
                             f"num_workers = {per_step}")
        if self.ray.storage_path is None and self.output.run_dir is None:
            raise ValueError("output.run_dir: set it (or ray.storage_path)")
        return self

    @property
    def world_size(self) -> int:
        return self.ray.num_workers if self.ray.enabled else 1

    @property
    def experiment_dir(self) -> Path:
        """Training state: checkpoints, TensorBoard, metrics.jsonl, workers/ (Ray Train's run directory)."""
        if self.ray.storage_path is None:
            return Path(self.output.run_dir).absolute()
        return Path(self.ray.storage_path).absolute() / self.output.run_name

    @property
    def run_dir(self) -> Path:
        """Stage outputs: export, summary.json, probe.json (+ probe_step0.json with `training.probe_initial`),
        resolved_config.yaml."""
        return Path(self.output.run_dir).absolute() if self.output.run_dir else self.experiment_dir

    @property
    def export_dir(self) -> Path:
        return Path(self.output.export_dir).absolute() if self.output.export_dir else self.run_dir / "export"

    @property
    def tokenizer_name(self) -> str:
        return self.output.tokenizer or self.model.name_or_path or "local"


class TeacherConfig(TrainJobConfig):
    data: TeacherData

    @model_validator(mode="after")
    def _teacher(self) -> "TeacherConfig":
        if not self.ray.enabled:
            raise ValueError("ray.enabled: the teacher runs on Ray Train (DeepSpeed ranks are Ray workers)")
        if self.model.quantization != "none":
            raise ValueError("model.quantization: the teacher trains full-precision weights (use the student stage)")
        return self
