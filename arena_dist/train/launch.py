"""Driver side: assemble Ray Train's TorchTrainer for a TrainJobConfig and run it to the end."""

from __future__ import annotations

import json
import math
import os
import time

from arena_dist.config import config_dict
from arena_dist.train.config import TrainJobConfig
from arena_dist.train.ds_config import load_zero_knobs
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


def make_payload(config: TrainJobConfig) -> dict:
    """Everything a rank needs, resolved on the driver (the workers may not see the driver's files or cwd)."""
    zero_knobs = load_zero_knobs(config.training.ds_config, config.training.ds_overrides)
    return {"config": config_dict(config), "zero_knobs": zero_knobs, "env": worker_env(config),
            "attempt_id": str(int(time.time()))}


def ray_payload(config: TrainJobConfig) -> dict:
    """The payload plus the driver's hub token (`arena_dist.worker_env.SecretEnv`), as Ray Train hands it to
    every worker; never written anywhere (`make_payload` alone is what may go to a file)."""
    return with_secrets(make_payload(config))


def run_training(config: TrainJobConfig) -> dict:
    """Fit on Ray; returns the run summary written by rank 0 (summary.json in the run dir)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Shared with the label stage: address / $RAY_ADDRESS (set by `ray job submit`), else a private local Ray with
    # its own auth token, shut down at the end.
    from arena_dist.ray_local import ray_session
    from arena_dist.train.loop import train_worker

    payload = ray_payload(config)
    backend = config.ray.backend if config.ray.backend != "auto" else ("nccl" if config.ray.use_gpu else "gloo")
    resources = {"CPU": config.ray.cpus_per_worker}
    if config.ray.use_gpu:
        resources["GPU"] = config.ray.gpus_per_worker
    local_cpus = max(os.cpu_count() or 1, math.ceil(config.ray.num_workers * config.ray.cpus_per_worker))
    with ray_session(config.ray.address, local_num_cpus=local_cpus):
        trainer = TorchTrainer(
            train_worker,
            train_loop_config=payload,
            torch_config=TorchConfig(backend=backend),
            scaling_config=ScalingConfig(num_workers=config.ray.num_workers, use_gpu=config.ray.use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(name=config.output.run_name, storage_path=str(config.experiment_dir.parent),
                                 failure_config=FailureConfig(max_failures=config.ray.max_failures)),
        )
        trainer.fit()
    return json.loads((config.run_dir / "summary.json").read_text())
