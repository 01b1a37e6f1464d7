"""Student checkpoints: `<run_dir>/checkpoints/step_XXXXXXX/` with the trainable tensors (adapters + head) as
safetensors, optimizer + scheduler + RNG state (torch.save; read back with weights_only=True), and a `COMPLETE`
marker written last. The folder appears under its final name only when complete (atomic rename); resume takes the
newest folder holding a COMPLETE marker and ignores any other (same convention as the teacher stage's checkpoints).
After each save only the newest `training.keep_last` complete ones stay (the teacher's `prune_checkpoints`).

QLoRA students keep every rank's trainable state identical (gradients are all-reduced before each step), so rank 0
writes the checkpoint alone; the frozen, quantised base is never checkpointed: it is rebuilt from its spec.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# The layout, tags and COMPLETE markers are the teacher stage's (arena_dist.train.checkpoint): one convention.
from arena_dist.train.checkpoint import (
    checkpoint_root,
    complete_checkpoints as _complete,
    prune_checkpoints,
    tag_for,
    write_marker,
)


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    root = checkpoint_root(run_dir)
    return [root / tag for _, tag, _ in _complete(root)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def trainable_state(model) -> dict:
    return {name: p.detach().to("cpu").contiguous().clone() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(run_dir, step: int, model, optimizer, scheduler, extra: dict, keep: int = 2) -> Path:
    import torch
    from safetensors.torch import save_file

    from arena_dist.io import atomic_directory, atomic_write_json

    target = checkpoint_root(run_dir) / tag_for(step)
    with atomic_directory(target) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state()}, tmp / "optimizer.pt")
        atomic_write_json(tmp / "state.json", {"step": step, **extra})
        write_marker(tmp, {"step": step, "world_size": extra.get("world_size")})
    prune_checkpoints(checkpoint_root(run_dir), keep)
    return target


def load_checkpoint(path: str | os.PathLike, model, optimizer, scheduler) -> dict:
    """Restore trainable tensors, optimizer, scheduler and RNG; returns state.json (step, data position...)."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    tensors = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [name for name, p in params.items() if p.requires_grad and name not in tensors]
    if missing:
        raise RuntimeError(f"{path}: checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[0]}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    states = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    torch.set_rng_state(states["torch_rng"])
    return json.loads((path / "state.json").read_text())
