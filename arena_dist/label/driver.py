"""Shard-parallel teacher inference on Ray actors, scheduled by the driver, committed exactly once.

Why actors and our own scheduler rather than Ray Data `map_batches` with a callable class: exactly-once needs three
things Ray Data's streaming executor does not expose — (1) shard-level ownership (one input shard = one unit of work
whose output is committed as a whole), (2) a per-shard commit hook that runs once, after the whole shard is scored,
and that a rerun can check (Ray Data writes its own output files per block and retries tasks, but gives no commit
record we can verify, so a crash can leave partial or doubled files), and (3) control over what happens when an
actor dies (here the shard returns to the queue and the next free actor takes it). Ray Data's strengths (streaming
reads, autoscaling pools) buy little here: shards are small, the model load dominates, and the pool is fixed.

How it runs:
- `num_actors` actors, each loads the teacher export once (`TeacherScorer`) with `num_cpus=cpus_per_actor`
  (fractional is fine: on a 2-CPU box two 1-CPU actors would leave nothing for the driver's other work) and
  `num_gpus=gpus_per_actor` (more than one GPU: accelerate `device_map="auto"` spreads the teacher over them).
  They get the driver's `arena_dist.worker_env` variables (hub cache and offline flags in their runtime env, the hub
  token as an argument) and the label config's `trust_remote_code` as an argument.
- The driver keeps a queue of uncommitted shards and up to `inflight_per_actor` shards queued at each actor, so an
  actor never idles while the driver commits. Results come back to the driver, which is the ONLY writer: it checks
  that the actor read the input the manifest describes (sha256), writes the parquet atomically and then its commit
  record. A "zombie" actor that finishes after being given up on cannot write anything, so nothing is doubled.
- An actor that dies (process killed, node lost: `RayActorError`) has its in-flight shards put back at the front of
  the queue; Ray restarts it (`max_restarts`) while the other actors carry on. A shard that fails more than
  `max_shard_attempts` times, or an ordinary Python error inside scoring (bad data: retrying cannot help), stops the
  run loudly. Committed shards stay committed; a rerun skips them.

The scheduling itself is `arena_dist.shards.run_shards` (shared with the generate stage); this module adds the
teacher actors, the commit into the label store and the progress.

What an actor runs is a `ScorerSpec`: by default `TeacherScorer` on the teacher export. Another class with the
`ShardScorer` methods can take its place (`label_shards(..., scorer=...)`), e.g. a scorer that does no model work, to
measure what the driver alone can commit with many actors (`bench/scale.py`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from arena_dist.label.batching import PaddingStats
from arena_dist.label.progress import Progress
from arena_dist.label.store import InputShard, LabelIntegrityError, LabelStore
from arena_dist.shards import ActorSlot, ShardRunError, run_shards


class LabelRunError(ShardRunError):
    """The labelling run could not finish (actors all dead, a shard failing repeatedly, a scoring error)."""


@dataclass
class ActorSettings:
    num_actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    max_restarts: int = 3
    max_shard_attempts: int = 3
    inflight_per_actor: int = 2
    threads_per_actor: int | None = None
    dtype: str = "float32"
    quantization: str = "none"

    @property
    def threads(self) -> int:
        return self.threads_per_actor or max(1, int(self.cpus_per_actor))


class ShardScorer(Protocol):
    """What a label actor runs (`TeacherScorer` is the real one)."""

    def info(self) -> dict:
        """Answered once loaded; at least {"pid": the actor's process id}."""

    def score_shard(self, path: str, max_tokens: int, max_rows: int | None = None, swap_tta: bool = True) -> dict:
        """One whole input shard: "ids" (input order), "p_ab", "p_ba_mapped" (None without swap-TTA), "p_mean",
        "input_sha256" (of the file it read), "stats" (`PaddingStats.as_dict()`), "seconds", "cpu_seconds", "pid"."""


@dataclass
class ScorerSpec:
    """A `ShardScorer` class and its constructor arguments, built once in every actor."""

    cls: type
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


def teacher_scorer(settings: ActorSettings, export_path: str, trust_remote_code: bool = False,
                   base_path: str | None = None) -> ScorerSpec:
    """`TeacherScorer` for `export_path` (a LoRA export's base at `base_path`, if given); the hub token goes along
    as an argument (`SecretEnv`): Ray's runtime-env agent logs every runtime env it sets up."""
    from arena_dist.label.scoring import TeacherScorer
    from arena_dist.worker_env import SecretEnv

    return ScorerSpec(TeacherScorer, (export_path, settings.dtype, settings.quantization, settings.gpus_per_actor,
                                      settings.threads, trust_remote_code, SecretEnv.from_environ(), base_path))


def start_actor(settings: ActorSettings, export_path: str, trust_remote_code: bool = False,
                base_path: str | None = None, scorer: ScorerSpec | None = None):
    """One scorer actor: `scorer`, or by default the teacher export's `TeacherScorer`."""
    import ray

    from arena_dist.worker_env import plain_env

    scorer = scorer or teacher_scorer(settings, export_path, trust_remote_code, base_path)
    return ray.remote(scorer.cls).options(
        num_cpus=settings.cpus_per_actor, num_gpus=settings.gpus_per_actor, max_restarts=settings.max_restarts,
        max_task_retries=0,  # the driver requeues shards itself (and knows which shard was lost)
        runtime_env={"env_vars": {**plain_env(), "OMP_NUM_THREADS": str(settings.threads)}},
    ).remote(*scorer.args, **scorer.kwargs)


def label_shards(
    teacher_id: str, export_path: str, shards: list[InputShard], store: LabelStore, settings: ActorSettings,
    max_tokens: int, max_rows: int | None = None, swap_tta: bool = True, progress: Progress | None = None,
    on_dispatch: Callable[[ActorSlot, InputShard], None] | None = None, trust_remote_code: bool = False,
    base_path: str | None = None, scorer: ScorerSpec | None = None,
) -> dict:
    """Score every uncommitted shard on Ray actors and commit it; returns a summary. Ray must be initialised.
    `trust_remote_code`: the label config's for this teacher (never the export's). `scorer`: what each actor runs
    (default: `TeacherScorer` on `export_path`)."""
    progress = progress or Progress(store.directory / "status.json", teacher_id, len(shards),
                                    sum(s.rows for s in shards))
    totals = {"shards_scored": 0, "rows_scored": 0, "padding": PaddingStats()}

    def commit(shard: InputShard, result: dict) -> None:
        record = _commit(store, shard, result)
        stats = PaddingStats(**{k: result["stats"][k] for k in ("rows", "batches", "real_tokens",
                                                                  "padded_tokens", "fp32_rows")})
        totals["padding"] = totals["padding"] + stats
        totals["shards_scored"] += 1
        totals["rows_scored"] += record["rows"]
        progress.committed(record["rows"], stats)
        progress.update("scoring")

    def retried(shard: InputShard) -> None:
        progress.retried()
        progress.update()

    run = run_shards(
        f"teacher {teacher_id}", shards, settings,
        is_committed=lambda shard: store.check_committed(shard)[0],
        start_actor=lambda: start_actor(settings, export_path, trust_remote_code, base_path, scorer),
        submit=lambda actor, shard: actor.score_shard.remote(str(shard.path), max_tokens, max_rows, swap_tta),
        commit=commit, on_skipped=lambda shard: progress.skipped(shard.rows), on_retry=retried,
        on_dispatch=on_dispatch, on_loading=lambda: progress.update("loading teacher", force=True),
        error=LabelRunError,
    )
    progress.update("done", force=True)
    padding = totals["padding"]
    summary = {"teacher_id": teacher_id, **run.counts(), "shards_scored": totals["shards_scored"],
               "rows_scored": totals["rows_scored"], "padding": padding.as_dict()}
    finished = time.monotonic()
    if run.shards_skipped == len(shards):
        return {**summary, "seconds": round(finished - run.started, 3)}
    scoring = finished - (run.first_ready or run.started)
    return {**summary, "seconds": round(finished - run.started, 3), "scoring_seconds": round(scoring, 3),
            "rows_per_s": round(totals["rows_scored"] / scoring, 2) if scoring > 0 else None,
            "real_tokens_per_s": round(padding.real_tokens / scoring, 1) if scoring > 0 else None}


def _commit(store: LabelStore, shard: InputShard, result: dict) -> dict:
    if result["input_sha256"] != shard.sha256:
        raise LabelIntegrityError(
            f"{shard.path}: sha256 {result['input_sha256'][:12]}… differs from the dataset manifest "
            f"({shard.sha256[:12]}…): the input changed after it was prepared"
        )
    return store.commit(shard, result["ids"], result["p_ab"], result["p_ba_mapped"], result["p_mean"],
                        extra={"padding": result["stats"], "seconds": round(result["seconds"], 3),
                               "cpu_seconds": round(result["cpu_seconds"], 3), "actor_pid": result["pid"]})
