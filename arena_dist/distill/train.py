"""The student training loop: one function every worker runs (Ray Train worker or the plain single process).

Why plain torch and not DeepSpeed / HF Trainer: a QLoRA student trains ~1% of its parameters (LoRA + head) on a
frozen 4/8-bit base that fits one GPU, so ZeRO partitioning buys nothing, DeepSpeed does not manage bitsandbytes'
packed weights, and HF Trainer on CPU brings the traps listed in STACK.md. Data parallelism is one flattened
all-reduce of the trainable gradients per optimizer step (gloo on CPU, NCCL on GPUs), instead of DDP, whose
construction broadcasts and shape-checks every parameter, bitsandbytes' packed Params4bit included, and whose
per-bucket hooks fire on every micro-batch. Every rank therefore holds identical trainable weights, and rank 0 alone
writes checkpoints and the export.

Data: each rank reads its own contiguous slice of the dataset (`read_records(rank, world_size)`), mixes hard and
soft rows (`distill.data`), and walks a seeded per-epoch permutation of it; a step consumes `micro_batch ×
accumulation` rows on every rank (global batch = that × world size). Steps per epoch = the smallest rank's
rows // rows per step (the few rows beyond it change with each epoch's permutation). The data position is the
global step, saved in the checkpoint: a resumed run continues with exactly the rows, swaps, optimizer state and RNG
of an uninterrupted one (same world size).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from arena_dist.distill.config import StudentConfig
from arena_dist.distill.data import StudentExample, epoch_order, mix_examples, swap_flags, swap_soft
from arena_dist.distill.losses import IGNORE_LABEL, LossWeights, distillation_loss

SUMMARY_FILE = "student_summary.json"


class World:
    """rank / world size and the few collectives the loop needs (no-ops in one process)."""

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        self.rank = self.dist.get_rank() if self.dist else 0
        self.size = self.dist.get_world_size() if self.dist else 1
        # One GPU per worker (Ray Train sets CUDA_VISIBLE_DEVICES); NCCL reduces CUDA tensors only.
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else \
            torch.device("cpu")

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.dist:
            ops = {"sum": self.dist.ReduceOp.SUM, "min": self.dist.ReduceOp.MIN}
            on_device = tensor.to(self.device)
            self.dist.all_reduce(on_device, op=ops[op])
            if on_device is not tensor:
                tensor.copy_(on_device.to(tensor.device))
        return tensor

    def barrier(self) -> None:
        if self.dist:
            self.dist.barrier()


def read_soft_labels(stores: str | list[str] | None, column: str) -> dict | None:
    """id -> teacher probabilities from one or several label stores; an id in two stores is an error."""
    from arena_dist.errors import InputError
    from arena_dist.label.store import soft_labels

    if not stores:
        return None
    merged: dict = {}
    for store in [stores] if isinstance(stores, str) else stores:
        labels = soft_labels(store, column=column)
        overlap = merged.keys() & labels.keys()
        if overlap:
            raise InputError(f"{store}: id {sorted(overlap)[0]!r} is also in an earlier data.soft_labels store")
        merged.update(labels)
    return merged


def load_examples(cfg: StudentConfig, rank: int, world: int, num_labels: int):
    """(train examples, eval examples, counts) for this rank."""
    from arena_dist.data.store import load_manifest, read_records

    data = cfg.data
    manifest = load_manifest(data.dataset_dir)
    splits = set(manifest.get("splits", {}))
    soft = read_soft_labels(data.soft_labels, data.soft_label_column)
    held_out = None if data.eval_fold is None else [data.eval_fold]

    def read(split: str, folds=None, exclude=None):
        if split not in splits:
            return []
        return read_records(data.dataset_dir, split, rank, world, folds=folds, exclude_folds=exclude)

    train = read("train", exclude=held_out) if data.use_train_split else []
    pool = read("pool", exclude=held_out) if (data.use_pool and soft is not None) else []
    examples, counts = mix_examples(train, pool, soft, num_labels, data.soft_on_hard_rows)
    eval_examples: list[StudentExample] = []
    if held_out is not None:
        # Held-out rows keep every target they have: hard for log loss / accuracy, soft for KL to the teacher.
        eval_train = read("train", folds=held_out)
        eval_pool = read("pool", folds=held_out) if soft is not None else []
        eval_examples, _ = mix_examples(eval_train, eval_pool, soft, num_labels, soft_on_hard_rows=True)
        if data.eval_max_rows:
            eval_examples = eval_examples[: math.ceil(data.eval_max_rows / world)]
    return examples, eval_examples, counts


def encode_examples(examples: list[StudentExample], swaps: np.ndarray, tokenizer, fmt):
    """-> (sequences, hard labels, soft targets or None per row), in the order given, swaps applied."""
    from arena_dist.formatting.encode import encode_records

    sequences: list[list[int]] = [None] * len(examples)  # type: ignore[list-item]
    labels: list[int | None] = [None] * len(examples)
    softs: list[list[float] | None] = [None] * len(examples)
    for flag in (False, True):
        picked = [i for i in range(len(examples)) if bool(swaps[i]) == flag]
        if not picked:
            continue
        rows = encode_records([examples[i].record for i in picked], tokenizer, fmt, swap=flag)
        for i, row in zip(picked, rows):
            sequences[i] = row.input_ids
            labels[i] = row.label
            softs[i] = swap_soft(examples[i].soft) if flag else examples[i].soft
    return sequences, labels, softs


def batch_tensors(sequences, labels, softs, pad_id: int, num_labels: int):
    from arena_dist.label.batching import pad_right

    ids, mask = pad_right(sequences, pad_id)
    hard = torch.tensor([IGNORE_LABEL if y is None else y for y in labels], dtype=torch.long)
    soft_mask = torch.tensor([s is not None for s in softs], dtype=torch.bool)
    soft = torch.tensor([s if s is not None else [0.0] * num_labels for s in softs], dtype=torch.float32)
    return torch.tensor(ids), torch.tensor(mask), hard, soft, soft_mask


def evaluate(model, encoded_eval, world: World, max_tokens: int) -> dict:
    """Held-out log loss / accuracy (rows with a hard label) and KL(teacher ‖ student) (rows with a soft label),
    summed over ranks."""
    from arena_dist.label.scoring import score_token_ids

    sequences, labels, softs = encoded_eval
    sums = torch.zeros(5, dtype=torch.float64)  # ll, correct, n_hard, kl, n_soft
    if sequences:
        was_training = model.training
        model.eval()
        probs, _ = score_token_ids(model, sequences, max_tokens)
        model.train(was_training)
        probs = np.clip(probs, 1e-15, 1.0)
        for p, y, s in zip(probs, labels, softs):
            if y is not None:
                sums[0] += -math.log(p[y])
                sums[1] += float(np.argmax(p) == y)
                sums[2] += 1
            if s is not None:
                t = np.asarray(s)
                nz = t > 0
                sums[3] += float((t[nz] * (np.log(t[nz]) - np.log(p[nz]))).sum())
                sums[4] += 1
    world.all_reduce(sums)
    ll, correct, n_hard, kl, n_soft = sums.tolist()
    return {"eval_log_loss": ll / n_hard if n_hard else None, "eval_accuracy": correct / n_hard if n_hard else None,
            "eval_kl_to_teacher": kl / n_soft if n_soft else None, "eval_rows_hard": int(n_hard),
            "eval_rows_soft": int(n_soft)}


def build_student_model(cfg: StudentConfig, num_labels: int, pad_id: int, world: World, run_dir: Path,
                        segment_markers: dict | None = None):
    """build_model, with one detour for several ranks: a random-init base is quantised by a round trip through a
    folder, but transformers' save_pretrained writes only on torch.distributed rank 0, so the other ranks would find
    an empty folder. Rank 0 writes the full-precision random-init base once; every rank loads and quantises it."""
    from arena_dist.io import atomic_directory
    from arena_dist.models.build import build_model
    from arena_dist.models.config import ModelConfig

    model_cfg = cfg.model
    if world.size > 1 and model_cfg.arch is not None and model_cfg.quantization != "none":
        base_dir = run_dir / "random_init_base"
        if world.rank == 0 and not (base_dir / "config.json").exists():
            plain = model_cfg.model_copy(update={"quantization": "none", "lora": None, "head": "linear",
                                                 "segment_embeddings": False,
                                                 "gradient_checkpointing": False})
            with atomic_directory(base_dir) as tmp:
                build_model(plain, num_labels, pad_id).save_pretrained(tmp)
        world.barrier()
        fields = {**model_cfg.model_dump(), "name_or_path": str(base_dir), "arch": None}
        model_cfg = ModelConfig(**fields)
    return build_model(model_cfg, num_labels, pad_id, segment_markers=segment_markers)


def make_optimizer(model, cfg: StudentConfig):
    training = cfg.training
    head, body = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head if ".score." in f".{name}" or name.startswith("score.") else body).append(param)
    groups = [{"params": body, "lr": training.lr}]
    if head:
        groups.append({"params": head, "lr": training.head_lr or training.lr})
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=training.weight_decay)


def make_scheduler(optimizer, total_steps: int, warmup_ratio: float):
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def all_reduce_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    if world.size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    world.all_reduce(flat)
    flat /= world.size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
        offset += n


def report(metrics: dict, in_ray: bool) -> None:
    if in_ray:
        import ray.train

        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None})


def train_student(config: dict | StudentConfig, in_ray: bool = False, model=None) -> dict:
    """Run (or resume) one student training run; every worker calls this. Returns the summary (rank 0's is
    complete; it is also written to <run_dir>/student_summary.json). `model`: an already built student (tests and
    benchmarks inspect it afterwards); default: built from `config.model`."""
    from arena_dist.formatting.templates import num_labels as labels_in_mode
    from arena_dist.formatting.tokenizer import load_tokenizer
    from arena_dist.io import atomic_write_json
    from arena_dist.models.build import count_parameters

    cfg = config if isinstance(config, StudentConfig) else StudentConfig.model_validate(config)
    training = cfg.training
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt: inputs will be cast.*")
    if training.threads:
        torch.set_num_threads(training.threads)
    world = World()
    run_dir = Path(cfg.run_dir)
    num_labels = labels_in_mode(cfg.format.label_mode)
    tokenizer = load_tokenizer(cfg.tokenizer, trust_remote_code=cfg.model.trust_remote_code)
    pad_id = int(tokenizer.pad_token_id)

    examples, eval_examples, counts = load_examples(cfg, world.rank, world.size, num_labels)
    count_tensor = world.all_reduce(torch.tensor([v for v in counts.as_dict().values()], dtype=torch.float64))
    counts_total = dict(zip(counts.as_dict().keys(), (int(v) for v in count_tensor.tolist())))
    per_rank_step = training.global_batch // world.size
    accumulation = per_rank_step // training.micro_batch
    steps_per_epoch = int(world.all_reduce(torch.tensor([len(examples) // per_rank_step]), op="min").item())
    if steps_per_epoch < 1:
        from arena_dist.errors import ConfigError

        raise ConfigError(f"training.global_batch {training.global_batch} is larger than the training rows "
                          f"({counts_total['used']} over {world.size} ranks)")
    total_steps = steps_per_epoch * training.epochs
    if training.max_steps:
        total_steps = min(total_steps, training.max_steps)

    torch.manual_seed(training.seed)
    if model is None:
        from arena_dist.formatting.encode import segment_markers

        markers = segment_markers(tokenizer, cfg.format) if cfg.model.segment_embeddings else None
        model = build_student_model(cfg, num_labels, pad_id, world, run_dir, markers)
    if cfg.model.quantization == "none" and world.device.type == "cuda":
        model.to(world.device)  # bitsandbytes models are placed on the GPU while loading
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    from arena_dist.label.scoring import input_device

    device = input_device(model)
    n_trainable, n_total = count_parameters(model)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, total_steps, training.warmup_ratio)
    weights = LossWeights(cfg.loss.w_ce, cfg.loss.w_kl, cfg.loss.w_cos, cfg.loss.temperature)

    step = 0
    resumed_from = None
    from arena_dist.distill.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, tag_for

    latest = latest_checkpoint(run_dir)
    if latest is not None:
        state = load_checkpoint(latest, model, optimizer, scheduler)
        if state.get("world_size") != world.size:
            print(f"student: resuming {latest} written with world size {state.get('world_size')} on {world.size}: "
                  "the data order per rank differs from an uninterrupted run", flush=True)
        step, resumed_from = int(state["step"]), str(latest)

    eval_swaps = np.zeros(len(eval_examples), dtype=bool)
    encoded_eval = encode_examples(eval_examples, eval_swaps, tokenizer, cfg.format)
    writer = None
    if world.rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"))
        print(f"student: rank 0/{world.size}, {counts_total}, steps {step}/{total_steps} "
              f"({steps_per_epoch}/epoch, accumulation {accumulation}), trainable {n_trainable:,}/{n_total:,} params"
              + (f", resumed from {resumed_from}" if resumed_from else ""), flush=True)

    history: list[dict] = []
    initial = evaluate(model, encoded_eval, world, training.eval_max_tokens) if step == 0 else None
    if initial and world.rank == 0:
        history.append({"step": 0, **initial})
    started = time.perf_counter()
    start_step = step
    last_parts: dict = {}
    order_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    stop_at = min(total_steps, step + training.stop_after_steps) if training.stop_after_steps else total_steps
    while step < stop_at:
        epoch, position = divmod(step, steps_per_epoch)
        if epoch not in order_cache:
            order_cache = {epoch: (epoch_order(len(examples), training.seed * 1000 + world.rank, epoch),
                                   swap_flags(len(examples), training.seed * 1000 + world.rank, epoch,
                                              cfg.data.swap_augment))}
        order, swaps = order_cache[epoch]
        rows = order[position * per_rank_step:(position + 1) * per_rank_step]
        # Dropout randomness is a function of (seed, rank, step): a resumed run draws exactly the same masks.
        torch.manual_seed(int(np.random.SeedSequence([training.seed, world.rank, step]).generate_state(1)[0]))
        parts_sum: dict[str, float] = {}
        for micro in range(accumulation):
            picked = rows[micro * training.micro_batch:(micro + 1) * training.micro_batch]
            sequences, labels, softs = encode_examples([examples[i] for i in picked], swaps[picked], tokenizer,
                                                       cfg.format)
            ids, mask, hard, soft, soft_mask = (t.to(device) for t in batch_tensors(sequences, labels, softs,
                                                                                     pad_id, num_labels))
            logits = model(input_ids=ids, attention_mask=mask).logits
            loss, parts = distillation_loss(logits, hard, soft, soft_mask, weights)
            (loss / accumulation).backward()
            for key, value in parts.items():
                parts_sum[key] = parts_sum.get(key, 0.0) + value / accumulation
        all_reduce_gradients(trainable, world)
        if training.clip:
            torch.nn.utils.clip_grad_norm_(trainable, training.clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        last_parts = parts_sum
        if world.rank == 0 and (step % training.log_every == 0 or step == stop_at):
            elapsed = time.perf_counter() - started
            rate = (step - start_step) * training.global_batch / max(elapsed, 1e-9)
            eta = (total_steps - step) * training.global_batch / max(rate, 1e-9)
            print(f"student: step {step}/{total_steps} loss {parts_sum['loss']:.4f} (ce {parts_sum['ce']:.4f} "
                  f"kl {parts_sum['kl']:.4f} cos {parts_sum['cos']:.4f}) {rate:.1f} rows/s ETA {eta:.0f}s", flush=True)
            for key in ("loss", "ce", "kl", "cos"):
                writer.add_scalar(f"train/{key}", parts_sum[key], step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
        metrics = None
        if training.eval_every and step % training.eval_every == 0 and step < total_steps:
            metrics = evaluate(model, encoded_eval, world, training.eval_max_tokens)
            if world.rank == 0:
                history.append({"step": step, **metrics})
                for key, value in metrics.items():
                    if value is not None and key.startswith("eval_") and not key.startswith("eval_rows"):
                        writer.add_scalar(key.replace("eval_", "eval/"), value, step)
        if training.checkpoint_every and step % training.checkpoint_every == 0 and step < total_steps:
            if world.rank == 0:
                save_checkpoint(run_dir, step, model, optimizer, scheduler,
                                {"world_size": world.size, "epoch": epoch, "total_steps": total_steps},
                                keep=training.keep_last)
            world.barrier()
        if metrics is not None or step % training.log_every == 0:  # every rank reports together (Ray Train)
            report({"step": step, **parts_sum, **(metrics or {})}, in_ray)

    finished = step >= total_steps
    final = evaluate(model, encoded_eval, world, training.eval_max_tokens)
    summary = {"step": step, "total_steps": total_steps, "finished": finished, "resumed_from": resumed_from,
               "world_size": world.size, "counts": counts_total, "trainable_params": n_trainable,
               "total_params": n_total, "train_seconds": time.perf_counter() - started,
               "last_train_loss": last_parts, "initial_eval": initial, "final_eval": final}
    if world.rank == 0:
        history.append({"step": step, **final})
        summary["eval_history"] = history
        # The last state is always checkpointed: a run cut short resumes here, a finished one is not redone.
        if latest_checkpoint(run_dir) is None or latest_checkpoint(run_dir).name != tag_for(step):
            save_checkpoint(run_dir, step, model, optimizer, scheduler,
                            {"world_size": world.size, "epoch": step // steps_per_epoch, "total_steps": total_steps},
                            keep=training.keep_last)
        if finished:
            summary.update(finish_export(model, tokenizer, cfg, encoded_eval[0]))
        writer.close()
        atomic_write_json(run_dir / SUMMARY_FILE, summary)
    world.barrier()
    report({"step": step, "finished": float(finished)}, in_ray)
    return summary


def finish_export(model, tokenizer, cfg: StudentConfig, eval_sequences) -> dict:
    """Rank 0: the export (adapter + head) and the optional checked merge."""
    from arena_dist.config import config_hash
    from arena_dist.distill.export import merge_export, save_student_export

    export_dir = Path(cfg.export_dir or Path(cfg.run_dir) / "export")
    meta = {"label_mode": cfg.format.label_mode, "template": cfg.format.template,
            "max_length": cfg.format.max_length, "format": cfg.format.model_dump(), "config_hash": config_hash(cfg),
            "created_by": "arena_dist.student"}
    model.eval()
    if cfg.model.lora is not None:
        save_student_export(model, tokenizer, export_dir, cfg.model, meta)
    else:
        from arena_dist.models.export import save_export

        save_export(model, tokenizer, export_dir, meta, model_config=cfg.model)
    out = {"export_dir": str(export_dir)}
    if cfg.merge.enabled:
        check = list(eval_sequences[: cfg.merge.check_rows])
        if not check:
            raise ValueError("merge.enabled needs held-out rows (data.eval_fold) to check the merge on")
        merged_dir = export_dir.with_name(export_dir.name + "_merged")
        out["merge"] = merge_export(export_dir, merged_dir, check, cfg.merge.max_logit_diff, cfg.merge.dtype,
                                    trust_remote_code=cfg.model.trust_remote_code)
        out["merged_export_dir"] = str(merged_dir)
    return out


def ray_worker(config: dict) -> None:
    """Ray Train's train_loop_per_worker: the driver's hub token (`arena_dist.worker_env.with_secrets`), CPU threads
    per worker, then the shared loop."""
    from arena_dist.worker_env import SECRETS_KEY, apply_secrets

    config = dict(config)
    apply_secrets(config.pop(SECRETS_KEY, None))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    train_student(config, in_ray=True)
