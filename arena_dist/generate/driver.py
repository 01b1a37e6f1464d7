"""Shard-parallel generation on Ray actors, committed exactly once (the scheduler is arena_dist.shards.run_shards).

Each actor (`PairGenerator`) loads every generator model once; the driver hands it whole input shards, checks that
the actor read the shard the dataset manifest describes (sha256) and commits the rows into the pool store: the
driver is the only writer. A dead actor's shards go back to the queue; committed shards are skipped on a rerun.
"""

from __future__ import annotations

import time
from typing import Callable

from arena_dist.generate.backend import SamplingSettings
from arena_dist.generate.progress import GenerateProgress
from arena_dist.generate.store import PoolStore
from arena_dist.generate.worker import GeneratorSpec
from arena_dist.label.driver import ActorSettings
from arena_dist.label.store import InputShard, LabelIntegrityError
from arena_dist.shards import ActorSlot, ShardRunError, run_shards


class GenerateRunError(ShardRunError):
    """The generation run could not finish (actors all dead, a shard failing repeatedly, a generation error)."""


def start_actor(settings: ActorSettings, generators: list[GeneratorSpec], sampling: SamplingSettings, seed: int):
    """One actor holding every generator; the hub token goes along as an argument (`SecretEnv`), never in the
    runtime env (Ray's runtime-env agent logs those)."""
    import ray

    from arena_dist.generate.worker import PairGenerator
    from arena_dist.worker_env import SecretEnv, plain_env

    return ray.remote(PairGenerator).options(
        num_cpus=settings.cpus_per_actor, num_gpus=settings.gpus_per_actor, max_restarts=settings.max_restarts,
        max_task_retries=0,  # the driver requeues shards itself (and knows which shard was lost)
        runtime_env={"env_vars": {**plain_env(), "OMP_NUM_THREADS": str(settings.threads)}},
    ).remote(generators, sampling, seed, settings.dtype, settings.gpus_per_actor, settings.threads,
             SecretEnv.from_environ())


def generate_shards(
    shards: list[InputShard], store: PoolStore, settings: ActorSettings, generators: list[GeneratorSpec],
    sampling: SamplingSettings, seed: int = 0, progress: GenerateProgress | None = None,
    on_dispatch: Callable[[ActorSlot, InputShard], None] | None = None,
) -> dict:
    """Answer every uncommitted shard's prompts with two generators and commit it; returns a summary. Ray must be
    initialised."""
    progress = progress or GenerateProgress(store.directory / "status.json", len(shards),
                                            sum(s.rows for s in shards))
    totals = {"shards_generated": 0, "rows_generated": 0, "new_tokens": 0, "empty_replies": 0, "batches": 0,
              "prompt_tokens": 0, "padded_prompt_tokens": 0}

    def commit(shard: InputShard, result: dict) -> None:
        if result["input_sha256"] != shard.sha256:
            raise LabelIntegrityError(f"{shard.path}: sha256 differs from the dataset manifest: the input changed "
                                      "after it was prepared")
        stats = result["stats"]
        record = store.commit_rows(shard, {"id": result["ids"], **result},
                                   extra={"stats": stats, "seconds": round(result["seconds"], 3),
                                          "cpu_seconds": round(result["cpu_seconds"], 3),
                                          "actor_pid": result["pid"]})
        totals["shards_generated"] += 1
        totals["rows_generated"] += record["rows"]
        for key in ("new_tokens", "empty_replies", "batches", "prompt_tokens", "padded_prompt_tokens"):
            totals[key] += stats[key]
        progress.committed(record["rows"], stats["new_tokens"])
        progress.update("generating")

    def retried(shard: InputShard) -> None:
        progress.retried()
        progress.update()

    run = run_shards(
        "generate", shards, settings,
        is_committed=lambda shard: store.check_committed(shard)[0],
        start_actor=lambda: start_actor(settings, generators, sampling, seed),
        submit=lambda actor, shard: actor.generate_shard.remote(str(shard.path), shard.index),
        commit=commit, on_skipped=lambda shard: progress.skipped(shard.rows), on_retry=retried,
        on_dispatch=on_dispatch, on_loading=lambda: progress.update("loading generators", force=True),
        error=GenerateRunError,
    )
    progress.update("done", force=True)
    finished = time.monotonic()
    generating = finished - (run.first_ready or run.started)
    ran = run.shards_skipped < len(shards)
    real, padded = totals["prompt_tokens"], totals["padded_prompt_tokens"]
    return {**run.counts(), **totals, "seconds": round(finished - run.started, 3),
            "generating_seconds": round(generating, 3) if ran else None,
            "new_tokens_per_s": round(totals["new_tokens"] / generating, 1) if ran and generating > 0 else None,
            "prompt_padding_ratio": round(padded / real, 4) if real else None}
