"""The training loop of every training stage: one Trainer, driven per rank, inside a Ray Train worker (or a bare
torchrun rank, or one plain process). What differs between the teacher and the student is a recipe (`TeacherRecipe`,
`StudentRecipe`): which records, which loss (cross-entropy on hard labels or the distillation loss,
`arena_dist.train.losses`), which model builder and which data parallelism (`arena_dist.train.parallel`: DeepSpeed ZeRO-3 or replicated weights with one gradient
all-reduce per step), and what the export holds.

Why an engine driven directly and not transformers' Trainer: exact resume needs the data position in the checkpoint
(Trainer keeps its own sampler state and skips batches by replaying them), resuming on another world size needs
DeepSpeed's `load_universal` plus a one-off `ds_to_universal` conversion (Trainer has no hook for it), and we own the
per-rank checkpoint files and their COMPLETE marker so Ray never copies or loses a shard (ray#33369). The loop itself
is short: forward, `backward`, `step` per micro-batch. A micro-batch is `training.micro_batch` padded rows, or with
`training.micro_batch_tokens` packed rows without padding (`arena_dist.train.packing`; the step's loss is still the
mean over its rows, and every rank gets as many micro-batches, tokens balanced).

Data order: `GlobalOrder` (seeded, independent of the world size; a checkpoint's global step is the whole data
position), so a run resumes exactly on the same or another world size, and N workers see the global batches one
worker would. Dropout masks are a function of (seed, step, rank).

Flow: records -> latest COMPLETE checkpoint (converted to universal format when a ZeRO run's world size changed) ->
build the model -> data parallelism -> load -> train / evaluate / checkpoint -> export on rank 0 -> summary.json.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from pathlib import Path

from arena_dist.io import atomic_write_json
from arena_dist.train.checkpoint import (
    checkpoint_root,
    ensure_universal,
    latest_complete,
    prune_checkpoints,
    remove_incomplete,
    tag_for,
    write_marker,
)
from arena_dist.train.config import TeacherConfig, TrainJobConfig
from arena_dist.train.data import (
    Encoder,
    GlobalOrder,
    Sample,
    collate,
    eval_plan,
    micro_batches,
    split_targets,
    total_steps,
)
from arena_dist.train.packing import (
    collate_packed,
    imbalance,
    packed_logits,
    plan_step,
    prepare_packing,
    step_denominators,
)
from arena_dist.train.parallel import all_reduce, barrier

SUMMARY_FILE = "summary.json"


def console(line: str) -> None:
    """One line on stdout. Not `print`: in a Ray Train worker, print is patched to go to the root logger and also to
    the stream, and Ray forwards both, so every progress line would reach the job's console twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def load_split_records(config: TrainJobConfig) -> tuple[list, list]:
    """(train records, eval records): every fold but k for training, fold k for evaluation; unusable rows
    (ties in 2-class mode, unlabelled) are counted and reported, not silently dropped."""
    from arena_dist.data.store import load_manifest, read_records
    from arena_dist.errors import ConfigError
    from arena_dist.formatting.templates import usable_in_mode

    data = config.data
    manifest = load_manifest(data.dataset_dir)
    if manifest.get("num_folds") not in (None, data.num_folds):
        raise ConfigError(f"data.num_folds={data.num_folds} but {data.dataset_dir} has {manifest['num_folds']} folds")
    held_out = [data.fold] if data.fold is not None else []
    train = read_records(data.dataset_dir, data.split, 0, 1, exclude_folds=held_out)
    evaluation = read_records(data.dataset_dir, data.split, 0, 1, folds=held_out) if held_out else []

    def usable(records, name):
        kept = [r for r in records if r["label"] is not None and usable_in_mode(r, config.format.label_mode)]
        if len(kept) != len(records):
            console(f"teacher: {name}: {len(records) - len(kept)} of {len(records)} records have no usable label in "
                    f"{config.format.label_mode} mode (skipped)")
        return kept

    train, evaluation = usable(train, "train"), usable(evaluation, "eval")
    if data.max_train_records:
        train = train[: data.max_train_records]
    if data.max_eval_records:
        evaluation = evaluation[: data.max_eval_records]
    return train, evaluation


class TeacherRecipe:
    """The teacher: hard labels, cross-entropy, DeepSpeed (ZeRO-3 per `training.ds_config`), consolidated export.
    Another stage's recipe overrides what differs (`arena_dist.distill.train.StudentRecipe`)."""

    name = "teacher"
    config_class: type = TeacherConfig
    eval_at_start = False
    uses_deepspeed = True

    def __init__(self, config, zero_knobs: dict | None = None):
        self.config, self.zero_knobs = config, zero_knobs

    def samples(self) -> tuple[list[Sample], list[Sample]]:
        train, evaluation = load_split_records(self.config)
        return [Sample(r) for r in train], [Sample(r) for r in evaluation]

    def encoder(self, tokenizer) -> Encoder:
        return Encoder(tokenizer, self.config.format, self.config.data.extra_inputs)

    def loss(self):
        from arena_dist.train.losses import CrossEntropy

        return CrossEntropy()

    def prepare(self, trainer) -> None:
        """Before the resume point is looked up: the DeepSpeed config for this world size."""
        from arena_dist.train.ds_config import build_ds_config

        self.ds_config = build_ds_config(self.zero_knobs, self.config.training, self.config.model.dtype,
                                         trainer.world_size, self.config.ray.use_gpu)
        trainer.log(f"accumulation {self.ds_config['gradient_accumulation_steps']}")

    def resume_tag(self, trainer, tag: str, marker: dict) -> str:
        """ZeRO shards are per rank: another world size loads a universal conversion (made once, by rank 0)."""
        if marker["world_size"] == trainer.world_size:
            return tag
        if trainer.rank == 0:
            trainer.log(f"{tag} was saved by {marker['world_size']} ranks, now {trainer.world_size}: "
                        "converting to a universal checkpoint")
            ensure_universal(trainer.root, tag)
        barrier()
        self.ds_config["checkpoint"] = {"load_universal": True}
        return tag + "_universal"

    def build(self, trainer):
        from arena_dist.models.build import build_classifier
        from arena_dist.train.ds_config import zero_stage
        from arena_dist.train.parallel import ZeroParallel

        hf_ds_config = None
        if zero_stage(self.ds_config) == 3 and self.config.model.name_or_path is not None:
            # Keeps zero.Init active while transformers loads the weights: each rank only ever holds its partition.
            # A new head is still the seeded one of a plain single-process build: transformers initialises a missing
            # linear `score` on rank 0 under GatheredParameters and broadcasts it, and an MLP head is built whole
            # after the load, from the same seeded RNG on every rank (probe_step0.json, checked in the tests).
            # A random-init model is built whole and partitioned by deepspeed.initialize instead, so its initial
            # weights are the seeded ones of a plain build whatever the ZeRO stage (zero.Init draws other values).
            from transformers.integrations import HfDeepSpeedConfig

            hf_ds_config = HfDeepSpeedConfig(self.ds_config)  # noqa: F841 (must stay alive while building)
        model = build_classifier(self.config.model, trainer.tokenizer, self.config.format)
        parallel = ZeroParallel(model, self.ds_config, self.config.training, trainer.total_steps)
        self._hf_ds_config = hf_ds_config
        return parallel

    def export_meta(self) -> dict:
        data = self.config.data
        return {"teacher_extra_inputs": [] if data.extra_inputs == "none" else [data.extra_inputs],
                "created_by": "arena_dist teacher"}

    def export(self, trainer, meta: dict) -> dict:
        """Every rank calls this (the ZeRO-3 gather is collective); rank 0 writes."""
        from arena_dist.models.export import save_export

        state = trainer.parallel.export_state(trainer.rank)
        out = {}
        if trainer.rank == 0:
            out["export_dir"] = str(save_export(trainer.parallel.module, trainer.tokenizer, self.config.export_dir,
                                                meta, state_dict=state, model_config=self.config.model))
        return out

    def summary(self, trainer) -> dict:
        return {}


class Trainer:
    """One rank of a run. `fit()` trains to the end (resuming when a complete checkpoint exists), exports, and
    returns the summary (rank 0 also writes it to <run_dir>/summary.json)."""

    def __init__(self, recipe: TeacherRecipe, rank: int, world_size: int, attempt_info: dict, under_ray: bool = True):
        from arena_dist.quiet import silence_known_warnings

        silence_known_warnings()
        self.recipe, self.config = recipe, recipe.config
        self.under_ray = under_ray
        self.rank, self.world_size = rank, world_size
        self.state_dir = self.config.experiment_dir  # training state; stage outputs go to config.run_dir
        self.root = checkpoint_root(self.state_dir)
        self.attempt_info = attempt_info
        self.writer = None

    # ------------------------------------------------------------------------------------------------ setup
    def log(self, message: str) -> None:
        if self.rank == 0:
            console(f"{self.recipe.name}: {message}")

    def setup(self) -> None:
        import torch

        from arena_dist.formatting.templates import num_labels
        from arena_dist.formatting.tokenizer import load_tokenizer

        config = self.config
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device("cuda", torch.cuda.current_device()) if config.ray.use_gpu else torch.device("cpu")
        self.tokenizer = load_tokenizer(config.tokenizer_name, trust_remote_code=config.model.trust_remote_code)
        self.num_labels = num_labels(config.format.label_mode)
        self.train_samples, self.eval_samples = self.recipe.samples()
        self.eval_lengths: list[int] | None = None  # token lengths of the eval rows, once packed eval needs them
        training = config.training
        weights = config.data.language_weights
        languages = [sample.record["language"] for sample in self.train_samples] if weights else None
        self.order = GlobalOrder(len(self.train_samples), training.global_batch, training.seed,
                                 config.data.swap_augment, languages, weights, config.data.default_language_weight)
        if self.order.language_counts is not None:
            self.log(f"sample order weighted by language: {self.order.language_summary()}")
        self.total_steps = total_steps(self.order, training.epochs, training.max_steps)
        self.encoder = self.recipe.encoder(self.tokenizer)
        self.loss = self.recipe.loss()
        self.log(f"{len(self.train_samples)} train / {len(self.eval_samples)} eval records, {self.total_steps} steps "
                 f"of {training.global_batch} on {self.world_size} ranks")
        self.recipe.prepare(self)

    def find_resume_point(self) -> tuple[str | None, dict | None]:
        found = latest_complete(self.root)
        if found is None:
            return None, None
        tag, marker = found
        return self.recipe.resume_tag(self, tag, marker), marker

    # ------------------------------------------------------------------------------------------------ steps
    def seed_step(self, step: int) -> None:
        """Dropout RNG as a function of (seed, step, rank): a resumed run replays the same masks."""
        import torch

        torch.manual_seed(self.config.training.seed * 1_000_003 + step * 7919 + self.rank)

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}

    def train_step(self, step: int) -> tuple[dict, int, dict]:
        """One optimizer step; returns (the loss parts averaged over the global batch, real tokens, step stats)."""
        if self.config.training.micro_batch_tokens:
            return self.train_step_packed(step)
        import torch

        self.seed_step(step)
        indices, swaps = self.order.rank_share(step, self.rank, self.world_size)
        examples = self.encoder.encode([self.train_samples[i] for i in indices], list(swaps))
        sums: dict[str, float] = {}
        tokens = 0
        for chunk in micro_batches(list(range(len(examples))), self.config.training.micro_batch):
            inputs, targets = split_targets(self.to_device(collate([examples[i] for i in chunk],
                                                                   self.tokenizer.pad_token_id)))
            logits = self.parallel.forward(**inputs).logits
            loss, parts = self.loss(logits, targets)
            self.parallel.backward(loss)
            self.parallel.step()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value * len(chunk)
            tokens += int(inputs["attention_mask"].sum())
        keys = sorted(sums)
        totals = torch.tensor([len(examples), tokens] + [sums[k] for k in keys], dtype=torch.float64)
        all_reduce(totals, self.device)
        return {k: float(totals[2 + i] / totals[0]) for i, k in enumerate(keys)}, int(totals[1]), {}

    def train_step_packed(self, step: int) -> tuple[dict, int, dict]:
        """One optimizer step on packed micro-batches (`arena_dist.train.packing`). Every rank encodes the whole
        global batch (the plan needs every row's length, and every rank computes the same plan); each micro-batch's
        loss is its share of the step's per-row mean, scaled back up by what `backward` divides by (accumulation) and
        the mean over ranks divides by (world size)."""
        import torch

        self.seed_step(step)
        indices, swaps = self.order.batch(step)
        examples = self.encoder.encode([self.train_samples[i] for i in indices], list(swaps))
        lengths = [len(e.input_ids) for e in examples]
        plan = plan_step(lengths, self.world_size, self.config.training.micro_batch_tokens)
        denominators = step_denominators(examples)
        scale = self.parallel.accumulation * self.world_size
        packs = plan[self.rank]
        sums: dict[str, float] = {}
        for number, pack in enumerate(packs):
            self.parallel.set_last_micro_batch(number == len(packs) - 1)
            inputs, targets = split_targets(self.to_device(collate_packed([examples[i] for i in pack])))
            logits = packed_logits(self.parallel.runner, self.parallel.module, inputs)
            loss, parts = self.loss(logits, targets, denominators)
            self.parallel.backward(loss * scale)
            self.parallel.step()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
        keys = sorted(sums)
        totals = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
        all_reduce(totals, self.device)
        stats = {"micro_batches": len(packs), "rank_imbalance": imbalance(plan, lengths)}
        return {k: float(totals[i]) for i, k in enumerate(keys)}, sum(lengths), stats

    def evaluate(self) -> dict:
        """Held-out log loss / accuracy on rows with a hard label, KL(teacher || model) on rows with a soft label,
        summed over ranks. Every rank runs as many forwards (collective under ZeRO-3: `eval_plan`)."""
        import torch
        import torch.nn.functional as F

        if not self.eval_samples:
            return {}
        sums = torch.zeros(6, dtype=torch.float64)  # log loss, correct, hard rows, KL, soft rows, rows
        self.parallel.eval()
        with torch.no_grad():
            for indices, real in self.eval_micro_batches():
                examples = self.encoder.encode([self.eval_samples[i] for i in indices], [False] * len(indices))
                if self.config.training.micro_batch_tokens:
                    inputs, targets = split_targets(self.to_device(collate_packed(examples)))
                    logits = packed_logits(self.parallel.runner, self.parallel.module, inputs).float()
                else:
                    inputs, targets = split_targets(self.to_device(collate(examples, self.tokenizer.pad_token_id)))
                    logits = self.parallel.forward(**inputs).logits.float()
                if not real:
                    continue
                labels = targets["labels"]
                hard = labels != -100
                sums[0] += F.cross_entropy(logits, labels, reduction="sum").double().cpu()
                sums[1] += ((logits.argmax(-1) == labels) & hard).sum().cpu()
                sums[2] += hard.sum().cpu()
                if "soft" in targets:
                    mask, soft = targets["soft_mask"], targets["soft"]
                    per_row = (torch.xlogy(soft, soft) - soft * torch.log_softmax(logits, -1)).sum(-1)
                    sums[3] += per_row[mask].sum().double().cpu()
                    sums[4] += mask.sum().cpu()
                sums[5] += len(indices)
        self.parallel.train()
        all_reduce(sums, self.device)
        ll, correct, n_hard, kl, n_soft, rows = sums.tolist()
        metrics = {"eval_log_loss": ll / n_hard if n_hard else None, "eval_accuracy": correct / n_hard if n_hard
                   else None, "eval_records": int(rows)}
        if n_soft:
            metrics.update(eval_kl_to_teacher=kl / n_soft, eval_rows_hard=int(n_hard), eval_rows_soft=int(n_soft))
        return metrics

    def eval_micro_batches(self) -> list[tuple[list[int], bool]]:
        """This rank's evaluation micro-batches as (eval record indices, real?), as many on every rank.

        Padded: `eval_micro_batch` rows each (`eval_plan`). Packed (`training.micro_batch_tokens`): the whole eval set
        planned as one step (`plan_step`: equal pack counts per rank, tokens balanced); the rows' lengths are
        encoded once per run and kept. Fewer eval rows than ranks cannot give every rank a pack, so that case stays
        padded."""
        budget = self.config.training.micro_batch_tokens
        if budget and len(self.eval_samples) >= self.world_size:
            if self.eval_lengths is None:
                self.eval_lengths = [len(e.input_ids) for e in self.encoder.encode(
                    self.eval_samples, [False] * len(self.eval_samples))]
            return [(pack, True) for pack in plan_step(self.eval_lengths, self.world_size, budget)[self.rank]]
        micro = self.config.training.eval_micro_batch or self.config.training.micro_batch
        return eval_plan(len(self.eval_samples), self.rank, self.world_size, micro)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, metrics: dict) -> Path:
        tag = tag_for(step)
        if self.rank == 0:
            remove_incomplete(self.root, tag)
        barrier()
        position = self.order.position(step)
        self.parallel.save(self.root, tag, self.rank)
        barrier()  # every rank's files are on disk before the marker says so
        if self.rank == 0:
            write_marker(self.root / tag, {"step": step, "world_size": self.world_size, "data_position": position,
                                           "metrics": metrics, "time": time.time()})
            removed = prune_checkpoints(self.root, self.config.training.keep_last)
            if removed:
                self.log(f"removed old checkpoints {', '.join(removed)}")
        barrier()
        self.log(f"checkpoint {tag} complete")
        return self.root / tag

    def resume(self, tag: str, marker: dict) -> int:
        self.parallel.load(self.root, tag)
        position = marker["data_position"]
        self.order.check_position(position)
        step = int(position["global_step"])
        self.log(f"resumed from {tag}: step {step}, epoch {position['epoch']}, "
                 f"{position['samples_consumed']} samples consumed")
        return step

    # ------------------------------------------------------------------------------------------------ reporting
    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        """Metrics (and the checkpoint, already on shared storage: no upload, no copy) to Ray Train."""
        if not self.under_ray:
            return
        import ray.train

        checkpoint = ray.train.Checkpoint(str(checkpoint_dir)) if checkpoint_dir is not None else None
        ray.train.report({k: v for k, v in metrics.items() if v is not None}, checkpoint=checkpoint,
                         checkpoint_upload_mode=ray.train.CheckpointUploadMode.NO_UPLOAD)

    def record(self, step: int, metrics: dict) -> None:
        """Rank 0: TensorBoard scalars and a metrics.jsonl line (readers keep the last line per step)."""
        if self.rank != 0:
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key != "step":
                self.writer.add_scalar(key.replace("eval_", "eval/").replace("train_", "train/"), value, step)
        with open(self.state_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"step": step, "attempt": self.attempt_info["attempt_id"], "time": time.time(),
                                     **metrics}) + "\n")

    # ------------------------------------------------------------------------------------------------ inspection
    def write_partition_stats(self) -> dict:
        """This rank's share of the model state (read by tests and the benchmark)."""
        stats = self.parallel.partition_stats()
        atomic_write_json(self.state_dir / "workers" / f"rank{self.rank}_state.json", stats)
        return stats

    def probe(self, name: str = "probe.json") -> None:
        """Logits of the model on a few fixed inputs (rank 0 writes them): the trained model's, which an export must
        reproduce, and at step 0 (`probe_step0.json`, with `training.probe_initial`) the loaded one's, which a plain
        build must reproduce."""
        import torch

        samples = (self.eval_samples or self.train_samples)[:4]
        # every rank runs the forward (collective under ZeRO-3), rank 0 writes it
        inputs, _ = split_targets(collate(self.encoder.encode(samples, [False] * len(samples)),
                                          self.tokenizer.pad_token_id))
        self.parallel.eval()
        with torch.no_grad():
            logits = self.parallel.forward(**self.to_device(inputs)).logits.float().cpu()
        self.parallel.train()
        if self.rank == 0:
            atomic_write_json(self.config.run_dir / name, {
                "input_ids": inputs["input_ids"].tolist(), "attention_mask": inputs["attention_mask"].tolist(),
                "logits": logits.tolist()})

    def export(self, final_metrics: dict) -> dict:
        from arena_dist.config import config_dict, config_hash

        fmt = self.config.format
        meta = {"label_mode": fmt.label_mode, "template": fmt.template, "max_length": fmt.max_length,
                "format": config_dict(fmt), "config_hash": config_hash(self.config),
                "fold": self.config.data.fold, "final_metrics": final_metrics, **self.recipe.export_meta()}
        self.parallel.eval()
        out = self.recipe.export(self, meta)
        self.parallel.train()
        if "export_dir" in out:
            self.log(f"exported to {out['export_dir']}")
        barrier()
        return out

    # ------------------------------------------------------------------------------------------------ main
    def fit(self) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        self.setup()
        tag, marker = self.find_resume_point()
        self.parallel = self.recipe.build(self)
        if self.config.training.micro_batch_tokens:
            prepare_packing(self.parallel.module)
        step = self.resume(tag, marker) if tag else 0
        if self.rank == 0:
            self.writer = SummaryWriter(str(self.state_dir / "tensorboard"), purge_step=step or None)
        training = self.config.training
        stop_at = min(self.total_steps, step + training.stop_after_steps) if training.stop_after_steps else \
            self.total_steps
        started, done_at_start, last_eval, initial = time.monotonic(), step, {}, None
        try:
            if step == 0 and training.probe_initial:
                self.probe("probe_step0.json")
            if self.recipe.eval_at_start and step == 0:
                initial = self.evaluate()
                self.record(0, initial)
            while step < stop_at:
                step_started = time.perf_counter()
                parts, tokens, stats = self.train_step(step)
                step_seconds = time.perf_counter() - step_started
                step += 1
                if step == done_at_start + 1:
                    self.write_partition_stats()  # after the first step: optimizer states exist now
                metrics = {"step": step, **{f"train_{k}": v for k, v in parts.items()}, "lr": self.parallel.lr,
                           "epoch": step / self.order.steps_per_epoch, "step_time_s": step_seconds, **stats}
                elapsed = time.monotonic() - started
                rate = (step - done_at_start) * training.global_batch / max(elapsed, 1e-9)
                metrics["samples_per_s"] = rate
                metrics["tokens_per_s"] = tokens / max(elapsed / (step - done_at_start), 1e-9)
                if training.eval_every and step % training.eval_every == 0 and step < self.total_steps:
                    last_eval = self.evaluate()
                    metrics.update(last_eval)
                if step % training.log_every == 0 or step == self.total_steps:
                    eta = (self.total_steps - step) * training.global_batch / max(rate, 1e-9)
                    loss = " ".join(f"{k} {v:.4f}" for k, v in parts.items())
                    evals = "".join(f" {k} {v:.4f}" for k, v in last_eval.items()
                                    if v is not None and k.startswith("eval_") and "records" not in k
                                    and "rows" not in k)
                    self.log(f"step {step}/{self.total_steps} epoch {metrics['epoch']:.2f} {loss} "
                             f"lr {metrics['lr']:.2e} {rate:.1f} samples/s ETA {format_eta(eta)}{evals}")
                self.record(step, metrics)
                checkpoint_dir = None
                if training.checkpoint_every and step % training.checkpoint_every == 0 and step < self.total_steps:
                    checkpoint_dir = self.save_checkpoint(step, metrics)
                if checkpoint_dir is not None or step % training.log_every == 0:
                    self.report(metrics, checkpoint_dir)
            finished = step >= self.total_steps
            out: dict = {}
            if not finished:  # cut short (training.stop_after_steps): resumable from here
                if latest_complete(self.root) is None or latest_complete(self.root)[0] != tag_for(step):
                    self.save_checkpoint(step, {})
            final = self.evaluate()
            self.record(step, final)
            if final:
                self.log("final " + " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in final.items() if v is not None))
            if finished:
                self.probe()
                out = self.export(final)
            summary = {"steps": step, "total_steps": self.total_steps, "finished": finished,
                       "world_size": self.world_size, "final": final, "initial": initial,
                       "export_dir": out.pop("export_dir", None), "run_dir": str(self.config.run_dir),
                       "experiment_dir": str(self.state_dir), "resumed_from": tag, "attempt": self.attempt_info,
                       "train_seconds": time.monotonic() - started, **out, **self.recipe.summary(self)}
            if self.rank == 0:
                atomic_write_json(self.config.run_dir / SUMMARY_FILE, summary)
            self.report({"step": step, **final, "done": 1})
            return summary
        finally:
            if self.writer is not None:
                self.writer.close()


def write_pid(run_dir: Path, rank: int, attempt: str) -> None:
    """Which process is which rank (operators and the fault-injection test use it)."""
    import torch

    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MASTER_ADDR", "LOCAL_WORLD_SIZE", "LOCAL_SIZE",
                                      "CUDA_VISIBLE_DEVICES") if k in os.environ}
    atomic_write_json(run_dir / "workers" / f"rank{rank}.json",
                      {"pid": os.getpid(), "host": socket.gethostname(), "attempt": attempt, "time": time.time(),
                       "torch_threads": torch.get_num_threads(), "cpu_affinity": sorted(os.sched_getaffinity(0)),
                       "env": env})


def train_worker(payload: dict) -> None:
    """Entry point run by every Ray Train worker (`TorchTrainer(train_loop_per_worker=train_worker)`)."""
    import ray.train

    context = ray.train.get_context()
    run_rank(payload, context.get_world_rank(), context.get_world_size(), under_ray=True)


def apply_payload_env(payload: dict) -> None:
    """The driver's forwarded variables, then its secrets (`launch.ray_payload`; only under Ray, a bare torchrun
    inherits them), before deepspeed is imported: DS_ACCELERATOR decides its accelerator at import."""
    from arena_dist.worker_env import SECRETS_KEY, apply_secrets

    for key, value in payload.get("env", {}).items():
        os.environ[key] = value
    apply_secrets(payload.get(SECRETS_KEY))


RECIPES = {"teacher": "arena_dist.train.loop:TeacherRecipe", "student": "arena_dist.distill.train:StudentRecipe"}


def recipe_class(name: str) -> type[TeacherRecipe]:
    import importlib

    module, attribute = RECIPES[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def run_rank(payload: dict, rank: int, world_size: int, under_ray: bool) -> dict:
    """One rank of a run: inside Ray Train (process group set up by Ray), under torchrun (env:// rendezvous), or
    the only process (world size 1, no process group)."""
    from arena_dist.quiet import silence_known_warnings

    silence_known_warnings(under_ray_train=under_ray)
    recipe_type = recipe_class(payload.get("recipe", "teacher"))
    config = recipe_type.config_class.model_validate(payload["config"])
    apply_payload_env(payload)
    import torch
    import torch.distributed as dist

    training = config.training
    torch.set_num_threads(training.threads or max(1, int(math.floor(config.ray.cpus_per_worker))))
    backend = config.ray.backend if config.ray.backend != "auto" else ("nccl" if config.ray.use_gpu else "gloo")
    if recipe_type.uses_deepspeed:
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend)  # reuses the process group Ray Train set up, if any
    elif world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend)  # torchrun: env:// rendezvous
    attempt = payload.get("attempt_id") or str(int(time.time()))
    attempt = f"{attempt}-{os.getpid() if rank == 0 else ''}"
    config.experiment_dir.mkdir(parents=True, exist_ok=True)
    write_pid(config.experiment_dir, rank, attempt)
    # Every rank agrees on the attempt id (rank 0's), used to tell restarts apart in metrics.jsonl.
    shared = [attempt]
    if dist.is_initialized():
        dist.broadcast_object_list(shared, src=0)
    recipe = recipe_type(config, payload.get("zero_knobs"))
    return Trainer(recipe, rank, world_size, {"attempt_id": shared[0]}, under_ray).fit()


def main(argv: list[str] | None = None) -> int:
    """Bare launch without Ray (benchmarks, tests, or a plain `torchrun`/`deepspeed` job):
    `torchrun --nproc-per-node N -m arena_dist.train.loop payload.json` (payload: see launch.make_payload)."""
    args = sys.argv[1:] if argv is None else argv
    payload = json.loads(Path(args[0]).read_text())
    run_rank(payload, int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), under_ray=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
