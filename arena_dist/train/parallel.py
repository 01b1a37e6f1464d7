"""Data parallelism beside the model: two implementations behind one small interface, chosen by the recipe.

Both are driven the way a DeepSpeed engine is: `forward(**inputs)`, `backward(loss)` and `step()` per micro-batch
(the optimizer steps once every `accumulation` micro-batches), `save(root, tag)` / `load(root, tag)` for the
checkpoint files of this rank, `export_state()` for the weights to export, `lr`, `train()` / `eval()`, `module`.

- `ZeroParallel`: DeepSpeed ZeRO-3 (teacher, full fine-tune or LoRA). A 70B/72B model does not fit one GPU: ZeRO-3
  partitions parameters, gradients and optimizer states over every rank (a pretrained model is partitioned while it
  loads via HfDeepSpeedConfig, so it never exists whole on one rank). Checkpoints are per-rank shards; resuming on
  another world size goes through DeepSpeed's universal format (`load_universal`).
- `ReplicatedParallel`: every rank holds the whole model and identical trainable weights; gradients are summed by one
  flattened all-reduce per optimizer step (gloo on CPU, NCCL on GPUs). For QLoRA students: ~1% of the parameters
  train (LoRA, head) on a frozen 4/8-bit bitsandbytes base that fits one GPU, so partitioning buys nothing, and ZeRO-3
  cannot partition bitsandbytes' packed weights. Not DDP: its construction broadcasts and shape-checks every
  parameter, bitsandbytes' packed Params4bit included, and its per-bucket hooks fire on every micro-batch. The
  trainable state is the same on every rank, so rank 0 alone writes it, and any world size can load it.
"""

from __future__ import annotations

from pathlib import Path

from arena_dist.train.ds_config import zero_stage


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce(tensor, device=None):
    """Sum over ranks in place (a no-op in one plain process); `device`: where the backend reduces (NCCL: CUDA)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        on_device = tensor.to(device) if device is not None else tensor
        dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
        if on_device is not tensor:
            tensor.copy_(on_device.to(tensor.device))
    return tensor


def lr_schedule(optimizer, training, total_steps: int):
    """The LR schedule of both implementations (`training.schedule`, `warmup_steps`, `min_lr_ratio`), stepped once
    per optimizer step."""
    from transformers import get_scheduler

    name, extra = {"linear": ("linear", {}), "constant": ("constant_with_warmup", {}),
                   "cosine": ("cosine_with_min_lr", {"min_lr_rate": training.min_lr_ratio})}[training.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=training.warmup_steps,
                         num_training_steps=max(total_steps, 1), scheduler_specific_kwargs=extra)


class _Driven:
    """What both implementations share: `runner` (the engine, or the module itself) runs the forward and switches
    train / eval; one LR scheduler."""

    def forward(self, **inputs):
        return self.runner(**inputs)

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def set_last_micro_batch(self, last: bool) -> None:
        """Packed micro-batches (`training.micro_batch_tokens`) vary in number per step: the caller says which one
        ends the step, before its forward, instead of the fixed count of `accumulation`."""
        self.last_micro_batch = last

    def train(self) -> None:
        self.runner.train()

    def eval(self) -> None:
        self.runner.eval()


class ZeroParallel(_Driven):
    def __init__(self, model, ds_config: dict, training, total_steps: int):
        import deepspeed

        params = [p for p in model.parameters() if p.requires_grad]
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=params, config=ds_config,
            lr_scheduler=lambda optimizer: lr_schedule(optimizer, training, total_steps))
        self.runner, self.module = self.engine, self.engine.module
        self.zero3 = zero_stage(ds_config) == 3
        self.accumulation = self.engine.gradient_accumulation_steps()  # backward divides each loss by it

    def set_last_micro_batch(self, last: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(last)

    def backward(self, loss) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    def save(self, root: Path, tag: str, rank: int) -> None:
        """Collective: every rank writes its shard."""
        self.engine.save_checkpoint(str(root), tag=tag, save_latest=False)

    def load(self, root: Path, tag: str) -> None:
        path, _ = self.engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {root / tag}")

    def export_state(self, rank: int) -> dict | None:
        """Collective under ZeRO-3 (every rank takes part); the full state on rank 0, None elsewhere."""
        if self.zero3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        return self.engine.module.state_dict() if rank == 0 else None

    def partition_stats(self) -> dict:
        """Elements of parameters and optimizer state held by this rank (ZeRO-3: the partition only)."""
        import torch

        engine = self.engine
        local = full = 0
        for param in engine.module.parameters():
            numel = getattr(param, "ds_numel", param.numel())
            local += param.ds_tensor.numel() if hasattr(param, "ds_tensor") else param.numel()
            full += numel
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


class ReplicatedParallel(_Driven):
    TRAINABLE_FILE, OPTIMIZER_FILE = "trainable.safetensors", "optimizer.pt"

    def __init__(self, model, training, total_steps: int, world_size: int, device):
        import torch

        self.module = self.runner = model
        self.training, self.world_size, self.device = training, world_size, device
        self.accumulation = training.global_batch // (training.micro_batch * world_size)
        self.params = [p for p in model.parameters() if p.requires_grad]
        head, body = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (head if ".score." in f".{name}" or name.startswith("score.") else body).append(param)
        groups = [{"params": body, "lr": training.lr}, {"params": head, "lr": training.head_lr or training.lr}]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], betas=tuple(training.betas),
                                           weight_decay=training.weight_decay)
        self.scheduler = lr_schedule(self.optimizer, training, total_steps)
        self.micro_steps = 0
        self.last_micro_batch: bool | None = None  # None: every `accumulation` micro-batches end a step

    def backward(self, loss) -> None:
        (loss / self.accumulation).backward()

    def step(self) -> None:
        import torch

        self.micro_steps += 1
        if self.last_micro_batch is None:
            ends_step = self.micro_steps % self.accumulation == 0
        else:
            ends_step = self.last_micro_batch
        if not ends_step:
            return
        self.all_reduce_gradients()
        if self.training.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.training.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def all_reduce_gradients(self) -> None:
        """The mean gradient over ranks, in one flattened all-reduce."""
        import torch

        if self.world_size == 1:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                          for p in self.params])
        all_reduce(flat, self.device)
        flat /= self.world_size
        offset = 0
        for p in self.params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()

    def trainable_state(self) -> dict:
        return {name: p.detach().to("cpu").contiguous().clone() for name, p in self.module.named_parameters()
                if p.requires_grad}

    def save(self, root: Path, tag: str, rank: int) -> None:
        """Rank 0 writes the trainable tensors (safetensors) and the optimizer + scheduler state; the frozen base
        is never checkpointed (it is rebuilt from its spec)."""
        import torch
        from safetensors.torch import save_file

        if rank != 0:
            return
        directory = Path(root) / tag
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.trainable_state(), str(directory / self.TRAINABLE_FILE))
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   directory / self.OPTIMIZER_FILE)

    def load(self, root: Path, tag: str) -> None:
        import torch
        from safetensors.torch import load_file

        directory = Path(root) / tag
        tensors = load_file(str(directory / self.TRAINABLE_FILE))
        params = dict(self.module.named_parameters())
        missing = [name for name, p in params.items() if p.requires_grad and name not in tensors]
        if missing:
            raise RuntimeError(f"{directory}: checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[0]}")
        with torch.no_grad():
            for name, tensor in tensors.items():
                params[name].copy_(tensor)
        states = torch.load(directory / self.OPTIMIZER_FILE, weights_only=True)
        self.optimizer.load_state_dict(states["optimizer"])
        self.scheduler.load_state_dict(states["scheduler"])

    def export_state(self, rank: int) -> None:
        return None  # the module itself holds the full weights on every rank

    def partition_stats(self) -> dict:
        total = sum(p.numel() for p in self.module.parameters())
        return {"param_local": total, "param_full": total, "trainable": sum(p.numel() for p in self.params)}
