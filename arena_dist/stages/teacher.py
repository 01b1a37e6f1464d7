"""Teacher stage: fine-tune a sequence classifier with DeepSpeed ZeRO-3 on Ray Train, then export it.

`arena-dist teacher --config launch/configs/teacher_tiny.yaml` (or via `ray job submit ... launch/teacher.py`).
Resumes from the latest complete checkpoint of the run by itself, also after a resubmission; a resubmission of a
finished run returns its summary at once.
"""

from __future__ import annotations

from arena_dist.train.config import TeacherConfig


class Config(TeacherConfig):
    """data / model / format / training / ray / output: see arena_dist.train.config."""


def run(config: Config) -> dict:
    from arena_dist.train.launch import train_stage

    return train_stage(config, "teacher")
