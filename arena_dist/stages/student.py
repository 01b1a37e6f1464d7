"""`arena-dist student`: train a QLoRA student by distillation (hard labels + teacher soft labels).

Ray Train `TorchTrainer` on one node with 1..8 workers (gloo on CPU, NCCL on GPUs; FailureConfig restarts the worker
group, which resumes from the newest COMPLETE checkpoint in run_dir), or the plain single-process path with
`ray.enabled: false`. The loop itself is `arena_dist.distill.train.train_student`.
"""

from __future__ import annotations

import json
from pathlib import Path

from arena_dist.config import save_resolved_config
from arena_dist.io import check_replaceable, claim_output_dir
from arena_dist.distill.config import StudentConfig as Config  # noqa: F401  (the CLI looks for `Config`)


def run(config: Config) -> dict:
    from arena_dist.distill.train import SUMMARY_FILE, train_student

    run_dir = Path(config.run_dir).resolve()
    config = config.model_copy(update={"run_dir": str(run_dir)})
    claim_output_dir(run_dir, "run_dir")
    export_dir = Path(config.export_dir or run_dir / "export")
    check_replaceable(export_dir, "export_dir")  # now, not after the training
    check_replaceable(export_dir.with_name(export_dir.name + "_merged"), "export_dir (its _merged sibling)")
    save_resolved_config(config, run_dir)
    if not config.ray.enabled:
        summary = train_student(config)
    else:
        run_with_ray(config)
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    final = summary.get("final_eval") or {}
    print(f"student: finished={summary['finished']} step {summary['step']}/{summary['total_steps']} "
          f"eval log loss {final.get('eval_log_loss')} KL to teacher {final.get('eval_kl_to_teacher')} "
          f"-> {summary.get('export_dir', '(no export: run not finished)')}", flush=True)
    from arena_dist.artefacts import write_artefact

    write_artefact(run_dir, "student", config, headline="eval_log_loss",
                   inputs={"dataset": config.data.dataset_dir, "soft_labels": config.data.soft_labels},
                   outputs={"export": summary.get("export_dir"), "summary": run_dir / SUMMARY_FILE},
                   rows={"train": summary["counts"]["used"], "eval": final.get("eval_rows_hard") or 0},
                   metrics={key: final.get(key) for key in ("eval_log_loss", "eval_accuracy", "eval_kl_to_teacher")}
                   | {"steps": summary["step"], "finished": summary["finished"]})
    return summary


def loop_config(config: Config) -> dict:
    """What every Ray Train worker gets: the config and the driver's hub token (a SecretEnv, never written)."""
    from arena_dist.worker_env import with_secrets

    return with_secrets(config.model_dump(mode="json"))


def run_with_ray(config: Config):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from arena_dist.distill.train import ray_worker
    from arena_dist.ray_local import ray_session
    from arena_dist.worker_env import plain_env

    ray_cfg = config.ray
    # Workers started by a cluster's raylets do not inherit this process's environment: the forwarded variables go
    # in their runtime env, the hub token as a SecretEnv in train_loop_config (arena_dist.worker_env says why).
    local_cpus = None if ray_cfg.address not in (None, "local") else max(
        1, int(round(ray_cfg.num_workers * ray_cfg.cpus_per_worker + 0.49)))
    with ray_session(ray_cfg.address, local_num_cpus=local_cpus):
        trainer = TorchTrainer(
            train_loop_per_worker=ray_worker,
            train_loop_config=loop_config(config),
            # STRICT_PACK: every worker on one node (the student is a one-node job: NVLink/shm all-reduce).
            scaling_config=ScalingConfig(num_workers=ray_cfg.num_workers, use_gpu=ray_cfg.use_gpu,
                                         resources_per_worker={"CPU": ray_cfg.cpus_per_worker},
                                         placement_strategy="STRICT_PACK"),
            torch_config=TorchConfig(backend="nccl" if ray_cfg.use_gpu else "gloo"),
            run_config=RunConfig(storage_path=str(Path(config.run_dir) / "ray"), name="student",
                                 failure_config=FailureConfig(max_failures=ray_cfg.max_failures),
                                 worker_runtime_env={"env_vars": plain_env()}),
        )
        return trainer.fit()
