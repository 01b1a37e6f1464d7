"""Driver side: run a training recipe on Ray Train's TorchTrainer (or in this process) and return its summary."""

from __future__ import annotations

import json
import math
import os
import time

from arena_dist.config import config_dict
from arena_dist.train.config import TrainJobConfig
from arena_dist.worker_env import plain_env, with_secrets


def worker_env(config: TrainJobConfig) -> dict[str, str]:
    """The plain variables every rank sets before importing DeepSpeed (`arena_dist.worker_env.FORWARDED_ENV`
    without the secrets: this goes into the payload, which Ray Train shows in its state API and the bench writes to
    a file)."""
    env = plain_env()
    env["DS_ACCELERATOR"] = "cuda" if config.ray.use_gpu else "cpu"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(config.ray.worker_env)
    return env


def make_payload(config: TrainJobConfig, recipe: str = "teacher") -> dict:
    """Everything a rank needs, resolved on the driver (the workers may not see the driver's files or cwd)."""
    from arena_dist.train.loop import recipe_class

    zero_knobs = None
    if recipe_class(recipe).uses_deepspeed:
        from arena_dist.train.ds_config import load_zero_knobs

        zero_knobs = load_zero_knobs(config.training.ds_config, config.training.ds_overrides)
    return {"recipe": recipe, "config": config_dict(config), "zero_knobs": zero_knobs, "env": worker_env(config),
            "attempt_id": str(int(time.time()))}


def ray_payload(config: TrainJobConfig, recipe: str = "teacher") -> dict:
    """The payload plus the driver's hub token (`arena_dist.worker_env.SecretEnv`), as Ray Train hands it to
    every worker; never written anywhere (`make_payload` alone is what may go to a file)."""
    return with_secrets(make_payload(config, recipe))


def run_training(config: TrainJobConfig, recipe: str = "teacher", placement: str = "PACK") -> dict:
    """Fit on Ray (FailureConfig restarts the worker group, which resumes from the newest COMPLETE checkpoint), or in
    this process when `ray.enabled` is false; returns the run summary written by rank 0 (<run_dir>/summary.json)."""
    from arena_dist.train.loop import SUMMARY_FILE, run_rank

    if not config.ray.enabled:
        return run_rank(make_payload(config, recipe), 0, 1, under_ray=False)

    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Shared with the label stage: address / $RAY_ADDRESS (set by `ray job submit`), else a private local Ray with
    # its own auth token, shut down at the end.
    from arena_dist.hub import fetch_on_every_node
    from arena_dist.ray_local import ray_session
    from arena_dist.train.loop import train_worker

    payload = ray_payload(config, recipe)
    backend = config.ray.backend if config.ray.backend != "auto" else ("nccl" if config.ray.use_gpu else "gloo")
    resources = {"CPU": config.ray.cpus_per_worker}
    if config.ray.use_gpu:
        resources["GPU"] = config.ray.gpus_per_worker
    local_cpus = max(os.cpu_count() or 1, math.ceil(config.ray.num_workers * config.ray.cpus_per_worker))
    with ray_session(config.ray.address, local_num_cpus=local_cpus):
        fetch_on_every_node([config.model.name_or_path, config.output.tokenizer])  # once per node, not per rank
        trainer = TorchTrainer(
            train_worker,
            train_loop_config=payload,
            torch_config=TorchConfig(backend=backend),
            scaling_config=ScalingConfig(num_workers=config.ray.num_workers, use_gpu=config.ray.use_gpu,
                                         resources_per_worker=resources, placement_strategy=placement),
            run_config=RunConfig(name=config.experiment_dir.name, storage_path=str(config.experiment_dir.parent),
                                 failure_config=FailureConfig(max_failures=config.ray.max_failures)),
        )
        trainer.fit()
    return json.loads((config.run_dir / SUMMARY_FILE).read_text())


def absolute_paths(config: TrainJobConfig) -> None:
    """Resolve relative paths against the driver's working directory before they travel to the Ray workers."""
    config.data.dataset_dir = config.data.dataset_dir.absolute()
    if config.ray.storage_path is not None:
        config.ray.storage_path = config.ray.storage_path.absolute()
    for key in ("run_dir", "export_dir"):
        value = getattr(config.output, key)
        if value is not None:
            setattr(config.output, key, value.absolute())


def finished_run(config: TrainJobConfig) -> dict | None:
    """The summary of a run that already finished with this exact config (its export carries the config hash)."""
    from arena_dist.config import config_hash
    from arena_dist.train.loop import SUMMARY_FILE

    summary_path, meta_path = config.run_dir / SUMMARY_FILE, config.export_dir / "arena_dist.json"
    if not summary_path.exists() or not meta_path.exists():
        return None
    summary, meta = json.loads(summary_path.read_text()), json.loads(meta_path.read_text())
    if meta.get("config_hash") != config_hash(config) or summary.get("steps") != summary.get("total_steps"):
        return None
    return summary


def claim_outputs(config: TrainJobConfig, extra_exports: tuple[str, ...] = ()) -> None:
    """Before any training: the run and state dirs are ours or new, the export dir (and `extra_exports` siblings)
    may be replaced (arena_dist.io), then the resolved config goes beside the outputs."""
    from arena_dist.config import save_resolved_config
    from arena_dist.io import check_replaceable, claim_output_dir

    claim_output_dir(config.run_dir, "output.run_dir")
    check_replaceable(config.export_dir, "output.export_dir")  # now, not after hours of training
    for suffix in extra_exports:
        check_replaceable(config.export_dir.with_name(config.export_dir.name + suffix),
                          f"output.export_dir (its {suffix} sibling)")
    if config.experiment_dir != config.run_dir:
        claim_output_dir(config.experiment_dir, "ray.storage_path/run_name")
    save_resolved_config(config, config.run_dir)


def train_stage(config: TrainJobConfig, recipe: str, extra_exports: tuple[str, ...] = (),
                placement: str = "PACK") -> dict:
    """A training stage from its config: outputs checked, trained (resumed) to the end, exported; the summary."""
    absolute_paths(config)
    done = finished_run(config)
    if done is not None:
        # A resubmitted finished job (e.g. a requeue after the last step) must not train again.
        print(f"{recipe}: already finished with this config ({done['steps']} steps); export {done['export_dir']}")
        if not recorded(config.run_dir):  # ended after its export, before its record (killed, timed out)
            record_stage(config, recipe, done)
        return done
    claim_outputs(config, extra_exports)
    summary = run_training(config, recipe, placement)
    final = summary.get("final") or {}
    line = " ".join(f"{k} {v:.4f}" for k, v in final.items() if v is not None and k.startswith("eval_")
                    and "records" not in k and "rows" not in k)
    print(f"{recipe}: done, {summary['steps']}/{summary['total_steps']} steps, {line}; "
          f"export {summary['export_dir']}", flush=True)
    record_stage(config, recipe, summary)
    return summary


def recorded(run_dir: Path) -> bool:
    from arena_dist.artefacts import read_artefact

    record = read_artefact(run_dir)
    return record is not None and record.status == "succeeded"


def record_stage(config: TrainJobConfig, recipe: str, summary: dict) -> None:
    """The stage record (`stage.json` in run_dir) of a teacher or student run, from its summary."""
    from arena_dist.artefacts import write_artefact
    from arena_dist.train.loop import SUMMARY_FILE

    final = summary.get("final") or {}
    rows = {"samples": summary["steps"] * config.training.global_batch, "eval": final.get("eval_records")}
    inputs = {"dataset": config.data.dataset_dir, "soft_labels": getattr(config.data, "soft_labels", None)}
    metrics = {key: value for key, value in final.items() if key.startswith("eval_") and "records" not in key
               and "rows" not in key}
    write_artefact(config.run_dir, recipe, config, inputs=inputs, headline="eval_log_loss",
                   outputs={"export": summary.get("export_dir"), "summary": config.run_dir / SUMMARY_FILE},
                   rows={key: value for key, value in rows.items() if value is not None},
                   metrics={"eval_log_loss": None, **metrics, "steps": summary["steps"]})
