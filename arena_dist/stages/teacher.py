"""Teacher stage: fine-tune a sequence classifier with DeepSpeed ZeRO-3 on Ray Train, then export it.

`arena-dist teacher --config launch/configs/teacher_tiny.yaml` (or via `ray job submit ... launch/teacher.py`).
Resumes from the latest complete checkpoint of the run by itself, also after a resubmission.
"""

from __future__ import annotations

import json

from arena_dist.config import config_hash, save_resolved_config
from arena_dist.io import check_replaceable, claim_output_dir
from arena_dist.train.config import TrainJobConfig


class Config(TrainJobConfig):
    """data / model / format / training / ray / output: see arena_dist.train.config."""


def absolute_paths(config: Config) -> None:
    """Resolve relative paths against the driver's working directory before they travel to the Ray workers."""
    config.data.dataset_dir = config.data.dataset_dir.absolute()
    config.ray.storage_path = config.ray.storage_path.absolute()
    for key in ("run_dir", "export_dir"):
        value = getattr(config.output, key)
        if value is not None:
            setattr(config.output, key, value.absolute())


def finished_run(config: Config) -> dict | None:
    """The summary of a run that already finished with this exact config (its export carries the config hash)."""
    summary_path, meta_path = config.run_dir / "summary.json", config.export_dir / "arena_dist.json"
    if not summary_path.exists() or not meta_path.exists():
        return None
    summary, meta = json.loads(summary_path.read_text()), json.loads(meta_path.read_text())
    if meta.get("config_hash") != config_hash(config) or summary.get("steps") != summary.get("total_steps"):
        return None
    return summary


def run(config: Config) -> dict:
    from arena_dist.train.launch import run_training

    absolute_paths(config)
    done = finished_run(config)
    if done is not None:
        # A resubmitted finished job (e.g. a requeue after the last step) must not train again.
        print(f"teacher: already finished with this config ({done['steps']} steps); export {done['export_dir']}")
        return done
    claim_output_dir(config.run_dir, "run_dir")
    check_replaceable(config.export_dir, "output.export_dir")  # now, not after hours of training
    if config.experiment_dir != config.run_dir:
        claim_output_dir(config.experiment_dir, "ray.storage_path/run_name")
    save_resolved_config(config, config.run_dir)
    summary = run_training(config)
    final = summary.get("final") or {}
    line = " ".join(f"{key} {value:.4f}" for key, value in final.items() if key != "eval_records")
    print(f"teacher: done, {summary['steps']} steps, {line}; export {summary['export_dir']}", flush=True)
    from arena_dist.artefacts import write_artefact

    rows = {"samples": summary["steps"] * config.training.global_batch, "eval": final.get("eval_records")}
    write_artefact(config.run_dir, "teacher", config, inputs={"dataset": config.data.dataset_dir},
                   outputs={"export": summary["export_dir"], "summary": config.run_dir / "summary.json"},
                   rows={k: v for k, v in rows.items() if v is not None}, headline="eval_log_loss",
                   metrics={"eval_log_loss": final.get("eval_log_loss"), "eval_accuracy": final.get("eval_accuracy"),
                            "steps": summary["steps"]})
    return summary
