"""`arena-dist student`: train a (Q)LoRA student by distillation (hard labels + teacher soft labels).

The teacher's loop and config sections (`arena_dist.train`), with the student recipe (`arena_dist.distill.train`):
Ray Train on one node with 1..8 workers (FailureConfig restarts the worker group, which resumes from the newest
COMPLETE checkpoint), or one plain process with `ray.enabled: false`.
"""

from __future__ import annotations

from arena_dist.distill.config import StudentConfig


class Config(StudentConfig):
    """data / model / format / training / ray / output / loss / merge: see arena_dist.distill.config."""


def run(config: Config) -> dict:
    from arena_dist.train.launch import train_stage

    # STRICT_PACK: every worker on one node (the student's all-reduce stays on NVLink / shared memory).
    return train_stage(config, "student", extra_exports=("_merged",), placement="STRICT_PACK")
