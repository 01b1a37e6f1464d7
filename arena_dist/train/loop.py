"""The per-worker training function: a DeepSpeed engine driven directly, inside a Ray Train worker.

Why the DeepSpeed engine and not transformers' Trainer: exact resume needs the data position in the checkpoint's
`client_state` (Trainer keeps its own sampler state and skips batches by replaying them), resuming on another world
size needs `"checkpoint": {"load_universal": true}` plus a one-off `ds_to_universal` conversion (Trainer has no hook for
it), and we own the per-rank checkpoint files and their COMPLETE marker so Ray never copies or loses a shard
(ray#33369). On CPU the Trainer also needs extra workarounds (gloo before TrainingArguments, use_cpu, no evaluate
before train). The loop itself is short: forward, `engine.backward`, `engine.step` per micro-batch.

Flow: build the model (a pretrained one is partitioned while it loads under ZeRO-3 via HfDeepSpeedConfig, so a 70B
model never exists whole on one rank) -> find the latest COMPLETE checkpoint (converting it to universal format when the world size
changed) -> `deepspeed.initialize` -> load -> train / evaluate / checkpoint -> gather and export on rank 0.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path

from arena_dist.train.checkpoint import (
    checkpoint_root,
    ensure_universal,
    latest_complete,
    prune_checkpoints,
    remove_incomplete,
    tag_for,
    write_marker,
)
from arena_dist.train.config import TrainJobConfig
from arena_dist.train.data import Encoder, GlobalOrder, collate, eval_plan, micro_batches, total_steps


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
            print(f"teacher: {name}: {len(records) - len(kept)} of {len(records)} records have no usable label in "
                  f"{config.format.label_mode} mode (skipped)", flush=True)
        return kept

    train, evaluation = usable(train, "train"), usable(evaluation, "eval")
    if data.max_train_records:
        train = train[: data.max_train_records]
    if data.max_eval_records:
        evaluation = evaluation[: data.max_eval_records]
    return train, evaluation


class Worker:
    """One rank of a run. `run()` trains to the end (resuming when a complete checkpoint exists) and exports."""

    def __init__(self, config: TrainJobConfig, zero_knobs: dict, rank: int, world_size: int, attempt_info: dict,
                 under_ray: bool = True):
        self.config, self.zero_knobs = config, zero_knobs
        self.under_ray = under_ray
        self.rank, self.world_size = rank, world_size
        self.state_dir = config.experiment_dir  # training state; stage outputs go to config.run_dir
        self.root = checkpoint_root(self.state_dir)
        self.attempt_info = attempt_info
        self.writer = None

    # ------------------------------------------------------------------------------------------------ setup
    def log(self, message: str) -> None:
        if self.rank == 0:
            print(f"teacher: {message}", flush=True)

    def setup(self) -> None:
        import torch

        from arena_dist.formatting.tokenizer import load_tokenizer
        from arena_dist.train.ds_config import build_ds_config, zero_stage

        config = self.config
        self.device = torch.device("cuda", torch.cuda.current_device()) if config.ray.use_gpu else torch.device("cpu")
        self.tokenizer = load_tokenizer(config.tokenizer_name, trust_remote_code=config.model.trust_remote_code)
        self.train_records, self.eval_records = load_split_records(config)
        self.order = GlobalOrder(len(self.train_records), config.training.global_batch, config.training.seed,
                                 config.data.swap_augment)
        self.total_steps = total_steps(self.order, config.training.epochs, config.training.max_steps)
        self.encoder = Encoder(self.tokenizer, config.format, config.data.extra_inputs)
        self.ds_config = build_ds_config(self.zero_knobs, config.training, config.model.dtype, self.world_size,
                                         self.total_steps, config.ray.use_gpu)
        self.zero3 = zero_stage(self.ds_config) == 3
        self.log(f"{len(self.train_records)} train / {len(self.eval_records)} eval records, {self.total_steps} steps "
                 f"of {config.training.global_batch} on {self.world_size} ranks "
                 f"(accumulation {self.ds_config['gradient_accumulation_steps']})")

    def find_resume_point(self) -> tuple[str | None, dict | None]:
        """Latest complete checkpoint; converted to universal format (rank 0, once) when the world size changed."""
        import torch.distributed as dist

        found = latest_complete(self.root)
        if found is None:
            return None, None
        tag, marker = found
        if marker["world_size"] != self.world_size:
            if self.rank == 0:
                self.log(f"{tag} was saved by {marker['world_size']} ranks, now {self.world_size}: "
                         "converting to a universal checkpoint")
                ensure_universal(self.root, tag)
            dist.barrier()
            tag = tag + "_universal"
            self.ds_config["checkpoint"] = {"load_universal": True}
        return tag, marker

    def build_engine(self) -> None:
        import deepspeed

        from arena_dist.formatting.encode import segment_markers
        from arena_dist.formatting.templates import num_labels
        from arena_dist.models.build import build_model

        hf_ds_config = None
        if self.zero3 and self.config.model.name_or_path is not None:
            # Keeps zero.Init active while transformers loads the weights: each rank only ever holds its partition.
            # A random-init model (tests, demo: tiny) is built whole and partitioned by deepspeed.initialize instead,
            # so its initial weights are the seeded ones of a plain build whatever the ZeRO stage (zero.Init draws
            # other values, and how soon a random-init classifier learns depends on the draw).
            from transformers.integrations import HfDeepSpeedConfig

            hf_ds_config = HfDeepSpeedConfig(self.ds_config)  # noqa: F841 (must stay alive while building)
        markers = segment_markers(self.tokenizer, self.config.format) if self.config.model.segment_embeddings else None
        model = build_model(self.config.model, num_labels(self.config.format.label_mode), self.tokenizer.pad_token_id,
                            segment_markers=markers)
        params = [p for p in model.parameters() if p.requires_grad]
        self.engine, _, _, self.scheduler = deepspeed.initialize(model=model, model_parameters=params,
                                                                 config=self.ds_config)
        self.model = model
        self._hf_ds_config = hf_ds_config

    # ------------------------------------------------------------------------------------------------ steps
    def seed_step(self, step: int) -> None:
        """Dropout RNG as a function of (seed, step, rank): a resumed run replays the same masks."""
        import torch

        torch.manual_seed(self.config.training.seed * 1_000_003 + step * 7919 + self.rank)

    def train_step(self, step: int) -> tuple[float, int]:
        import torch
        import torch.nn.functional as F

        self.seed_step(step)
        indices, swaps = self.order.rank_share(step, self.rank, self.world_size)
        examples = self.encoder.encode([self.train_records[i] for i in indices], list(swaps))
        loss_sum, tokens = 0.0, 0
        micro = self.config.training.micro_batch
        for chunk in micro_batches(list(range(len(examples))), micro):
            batch = collate([examples[i] for i in chunk], self.tokenizer.pad_token_id)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            labels = batch.pop("labels")
            logits = self.engine(**batch).logits
            loss = F.cross_entropy(logits.float(), labels)
            self.engine.backward(loss)
            self.engine.step()
            loss_sum += loss.item() * len(chunk)
            tokens += int(batch["attention_mask"].sum())
        totals = torch.tensor([loss_sum, len(examples), tokens], dtype=torch.float64, device=self.device)
        self.all_reduce(totals)
        return float(totals[0] / totals[1]), int(totals[2])

    def all_reduce(self, tensor) -> None:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def evaluate(self) -> dict:
        import torch
        import torch.nn.functional as F

        if not self.eval_records:
            return {}
        micro = self.config.training.eval_micro_batch or self.config.training.micro_batch
        plan = eval_plan(len(self.eval_records), self.rank, self.world_size, micro)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # log loss, correct, count
        self.engine.eval()
        with torch.no_grad():
            for indices, real in plan:
                examples = self.encoder.encode([self.eval_records[i] for i in indices], [False] * len(indices))
                batch = collate(examples, self.tokenizer.pad_token_id)
                batch = {k: v.to(self.device) for k, v in batch.items()}
                labels = batch.pop("labels")
                logits = self.engine(**batch).logits.float()
                if real:
                    sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
                    sums[1] += (logits.argmax(-1) == labels).sum()
                    sums[2] += len(indices)
        self.engine.train()
        self.all_reduce(sums)
        count = float(sums[2])
        return {"eval_log_loss": float(sums[0]) / count, "eval_accuracy": float(sums[1]) / count,
                "eval_records": int(count)}

    # ------------------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, metrics: dict) -> Path:
        import torch.distributed as dist

        tag = tag_for(step)
        if self.rank == 0:
            remove_incomplete(self.root, tag)
        dist.barrier()
        position = self.order.position(step)
        self.engine.save_checkpoint(str(self.root), tag=tag, client_state={"data_position": position},
                                    save_latest=False)
        dist.barrier()  # every rank's shard is on disk before the marker says so
        if self.rank == 0:
            write_marker(self.root / tag, {"step": step, "world_size": self.world_size, "data_position": position,
                                           "metrics": metrics, "time": time.time()})
            removed = prune_checkpoints(self.root, self.config.training.keep_last)
            if removed:
                self.log(f"removed old checkpoints {', '.join(removed)}")
        dist.barrier()
        self.log(f"checkpoint {tag} complete")
        return self.root / tag

    def resume(self, tag: str, marker: dict) -> int:
        path, client_state = self.engine.load_checkpoint(str(self.root), tag=tag, load_optimizer_states=True,
                                                         load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {self.root / tag}")
        position = (client_state or {}).get("data_position") or marker["data_position"]
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
        ray.train.report(metrics, checkpoint=checkpoint,
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
        from arena_dist.io import atomic_write_json

        stats = partition_stats(self.engine)
        atomic_write_json(self.state_dir / "workers" / f"rank{self.rank}_state.json", stats)
        return stats

    def probe(self) -> None:
        """Logits of the trained model on a few fixed inputs (rank 0 writes them): an export must reproduce them."""
        import torch

        records = (self.eval_records or self.train_records)[:4]
        # every rank runs the forward (collective under ZeRO-3), rank 0 writes it
        batch = collate(self.encoder.encode(records, [False] * len(records)), self.tokenizer.pad_token_id)
        batch.pop("labels")
        self.engine.eval()
        with torch.no_grad():
            logits = self.engine(**{k: v.to(self.device) for k, v in batch.items()}).logits.float().cpu()
        self.engine.train()
        if self.rank == 0:
            from arena_dist.io import atomic_write_json

            atomic_write_json(self.config.run_dir / "probe.json", {
                "input_ids": batch["input_ids"].tolist(), "attention_mask": batch["attention_mask"].tolist(),
                "logits": logits.tolist()})

    # ------------------------------------------------------------------------------------------------ export
    def export(self, final_metrics: dict) -> str | None:
        import torch.distributed as dist

        from arena_dist.config import config_hash
        from arena_dist.models.export import save_export

        if self.zero3:
            state = self.engine._zero3_consolidated_16bit_state_dict()  # collective: every rank takes part
        else:
            state = self.engine.module.state_dict() if self.rank == 0 else None
        out = None
        if self.rank == 0:
            meta = {
                "label_mode": self.config.format.label_mode,
                "template": self.config.format.template,
                "max_length": self.config.format.max_length,
                "format": json.loads(self.config.format.model_dump_json()),
                "teacher_extra_inputs": [] if self.config.data.extra_inputs == "none" else
                [self.config.data.extra_inputs],
                "created_by": "arena_dist teacher",
                "config_hash": config_hash(self.config),
                "fold": self.config.data.fold,
                "final_metrics": final_metrics,
            }
            out = str(save_export(self.engine.module, self.tokenizer, self.config.export_dir, meta, state_dict=state,
                                  model_config=self.config.model))
            self.log(f"exported to {out}")
        dist.barrier()
        return out

    # ------------------------------------------------------------------------------------------------ main
    def run(self) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        self.setup()
        tag, marker = self.find_resume_point()
        self.build_engine()
        step = self.resume(tag, marker) if tag else 0
        if self.rank == 0:
            self.writer = SummaryWriter(str(self.state_dir / "tensorboard"), purge_step=step or None)
        training = self.config.training
        started, done_at_start, last_eval = time.monotonic(), step, {}
        try:
            while step < self.total_steps:
                step_started = time.perf_counter()
                loss, tokens = self.train_step(step)
                step_seconds = time.perf_counter() - step_started
                step += 1
                if step == done_at_start + 1:
                    self.write_partition_stats()  # after the first step: optimizer states exist now
                metrics = {"step": step, "train_loss": loss, "lr": float(self.scheduler.get_last_lr()[0])
                           if self.scheduler is not None else training.lr,
                           "epoch": step / self.order.steps_per_epoch, "step_time_s": step_seconds}
                elapsed = time.monotonic() - started
                rate = (step - done_at_start) * training.global_batch / max(elapsed, 1e-9)
                metrics["samples_per_s"] = rate
                metrics["tokens_per_s"] = tokens / max(elapsed / (step - done_at_start), 1e-9)
                if training.eval_every and step % training.eval_every == 0 and step < self.total_steps:
                    last_eval = self.evaluate()
                    metrics.update(last_eval)
                if step % training.log_every == 0 or step == self.total_steps:
                    eta = (self.total_steps - step) * training.global_batch / max(rate, 1e-9)
                    evals = "".join(f" {k} {v:.4f}" for k, v in last_eval.items() if k != "eval_records")
                    self.log(f"step {step}/{self.total_steps} epoch {metrics['epoch']:.2f} loss {loss:.4f} "
                             f"lr {metrics['lr']:.2e} {rate:.1f} samples/s ETA {format_eta(eta)}{evals}")
                self.record(step, metrics)
                checkpoint_dir = None
                if training.checkpoint_every and step % training.checkpoint_every == 0 and step < self.total_steps:
                    checkpoint_dir = self.save_checkpoint(step, metrics)
                if checkpoint_dir is not None or step % training.log_every == 0:
                    self.report(metrics, checkpoint_dir)
            final = self.evaluate()
            self.record(step, final)
            if final:
                self.log("final " + " ".join(f"{k} {v:.4f}" for k, v in final.items()))
            self.probe()
            export_dir = self.export(final)
            summary = {"steps": step, "total_steps": self.total_steps, "world_size": self.world_size,
                       "final": final, "export_dir": export_dir, "run_dir": str(self.config.run_dir),
                       "experiment_dir": str(self.state_dir),
                       "resumed_from": tag, "attempt": self.attempt_info}
            if self.rank == 0:
                from arena_dist.io import atomic_write_json

                atomic_write_json(self.config.run_dir / "summary.json", summary)
            self.report({"step": step, **final, "done": 1})
            return summary
        finally:
            if self.writer is not None:
                self.writer.close()


def partition_stats(engine) -> dict:
    """Elements of parameters and optimizer state held by this rank (ZeRO-3: the partition only) vs the full model."""
    import torch

    local = full = 0
    for param in engine.module.parameters():
        if hasattr(param, "ds_tensor"):
            local += param.ds_tensor.numel()
            full += param.ds_numel
        else:
            local += param.numel()
            full += param.numel()
    optimizer_local = optimizer_bytes = 0
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for state in getattr(inner, "state", {}).values():
        for value in state.values():
            if torch.is_tensor(value) and value.dim() > 0:
                optimizer_local += value.numel()
                optimizer_bytes += value.numel() * value.element_size()
    master = sum(t.numel() for t in getattr(engine.optimizer, "fp32_partitioned_groups_flat", []) or [])
    return {"param_local": local, "param_full": full, "optimizer_state_local": optimizer_local,
            "optimizer_state_bytes": optimizer_bytes, "fp32_master_local": master}


def write_pid(run_dir: Path, rank: int, attempt: str) -> None:
    """Which process is which rank (operators and the fault-injection test use it)."""
    from arena_dist.io import atomic_write_json

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


def run_rank(payload: dict, rank: int, world_size: int, under_ray: bool) -> dict:
    """One rank of a run, inside Ray Train (process group set up by Ray) or under torchrun (env:// rendezvous)."""
    config = TrainJobConfig.model_validate(payload["config"])
    apply_payload_env(payload)
    import torch
    import torch.distributed as dist

    torch.set_num_threads(max(1, int(math.floor(config.ray.cpus_per_worker))))
    import deepspeed

    backend = "nccl" if config.ray.use_gpu else "gloo"
    if config.ray.backend != "auto":
        backend = config.ray.backend
    deepspeed.init_distributed(dist_backend=backend)  # reuses the process group Ray Train set up, if any
    attempt = payload.get("attempt_id") or str(int(time.time()))
    attempt = f"{attempt}-{os.getpid() if rank == 0 else ''}"
    config.experiment_dir.mkdir(parents=True, exist_ok=True)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    write_pid(config.experiment_dir, rank, attempt)
    # Every rank agrees on the attempt id (rank 0's), used to tell restarts apart in metrics.jsonl.
    shared = [attempt]
    dist.broadcast_object_list(shared, src=0)
    return Worker(config, payload["zero_knobs"], rank, world_size, {"attempt_id": shared[0]}, under_ray).run()


def main(argv: list[str] | None = None) -> int:
    """Bare launch without Ray (benchmarks, or a plain `torchrun`/`deepspeed` job):
    `torchrun --nproc-per-node N -m arena_dist.train.loop payload.json` (payload: see launch.make_payload)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    payload = json.loads(Path(args[0]).read_text())
    run_rank(payload, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), under_ray=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
