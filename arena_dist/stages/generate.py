"""`arena-dist generate`: prompts -> a pool with two replies per prompt from a configured list of generator models.

Recipe: resolve the input shards from the dataset manifest (the `prompts` split that `conversations` sources give,
or the `pool` split, whose responses are ignored) -> connect Ray -> every actor loads every generator once and
answers whole shards; a seeded, weighted draw picks two distinct generators per prompt (model_a, model_b) ->
the driver commits each shard exactly once (arena_dist.generate.store, arena_dist.shards) -> verify every prompt is
there once -> join the shards into `pool.parquet`, which `arena-dist prepare` reads as a `pool` source.

Outputs under `output_dir`: `shards/` (the exactly-once store, live progress in `shards/status.json`),
`pool.parquet`, `resolved_config.yaml`, `generate_summary.json`, `stage.json`. A rerun skips committed shards.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from arena_dist.config import StrictModel
from arena_dist.stages.label import ID_PATTERN, BatchingSection, RaySection


class InputSection(StrictModel):
    dataset_dir: Path
    split: Literal["prompts", "pool"] = "prompts"


class GeneratorEntry(StrictModel):
    id: str = Field(pattern=ID_PATTERN, max_length=64)  # written to model_a / model_b
    name_or_path: str  # a hub id or a folder holding a causal LM with a chat template
    weight: float = Field(1.0, gt=0)  # relative share of the prompts this model answers
    # Run Python code shipped with the model (transformers `auto_map`); only this setting turns it on.
    trust_remote_code: bool = False


class SamplingSection(StrictModel):
    temperature: float = Field(0.7, ge=0)  # 0: greedy
    top_p: float = Field(0.95, gt=0, le=1)
    # 0: off. Always passed: otherwise transformers keeps the model's generation config's top_k, or its own 50,
    # which silently cuts every token past the 50 likeliest.
    top_k: int = Field(0, ge=0)
    max_new_tokens: int = Field(512, gt=0)
    min_new_tokens: int = Field(1, ge=0)  # empty replies are quarantined by prepare


class Config(StrictModel):
    output_dir: Path
    input: InputSection
    generators: list[GeneratorEntry] = Field(min_length=2)
    sampling: SamplingSection = SamplingSection()
    batching: BatchingSection = BatchingSection()  # (prompt + max_new_tokens) x rows per generate call
    ray: RaySection = RaySection()
    seed: int = 0  # the pairing draw and the sampling
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        ids = [g.id for g in self.generators]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"generators: id {duplicates[0]!r} is used twice")
        if self.ray.gpus_per_actor > 1:  # no device_map spreading here: each actor holds every generator on one GPU
            raise ValueError("ray.gpus_per_actor: at most 1 for generate (each actor holds every generator on its GPU)")
        return self


def generate_config_hash(config: Config) -> str:
    """What changes the generated pool: the generators (a local folder's files' names and sizes too), sampling,
    seed, precision. Batching, actors and addresses are left out: a committed shard stays valid when they change."""
    generators = []
    for g in config.generators:
        entry = g.model_dump(mode="json")
        folder = Path(g.name_or_path)
        if folder.is_dir():
            entry["files"] = sorted((p.relative_to(folder).as_posix(), p.stat().st_size)
                                    for p in folder.rglob("*") if p.is_file())
        generators.append(entry)
    payload = {"generators": generators, "sampling": config.sampling.model_dump(mode="json"), "seed": config.seed,
               "dtype": config.dtype}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sampling_settings(config: Config):
    from arena_dist.generate.backend import SamplingSettings

    return SamplingSettings(temperature=config.sampling.temperature, top_p=config.sampling.top_p,
                            top_k=config.sampling.top_k, max_new_tokens=config.sampling.max_new_tokens,
                            min_new_tokens=config.sampling.min_new_tokens, seed=config.seed,
                            max_tokens=config.batching.max_tokens, max_rows=config.batching.max_rows)


def actor_settings(config: Config):
    from arena_dist.label.driver import ActorSettings

    ray = config.ray
    return ActorSettings(num_actors=ray.num_actors, cpus_per_actor=ray.cpus_per_actor,
                         gpus_per_actor=ray.gpus_per_actor, max_restarts=ray.max_restarts,
                         max_shard_attempts=ray.max_shard_attempts, inflight_per_actor=ray.inflight_per_actor,
                         threads_per_actor=ray.threads_per_actor, dtype=config.dtype)


def run(config: Config) -> dict:
    from arena_dist.config import save_resolved_config
    from arena_dist.data.store import load_manifest
    from arena_dist.generate.driver import generate_shards
    from arena_dist.generate.progress import GenerateProgress
    from arena_dist.generate.store import PoolStore, pool_models, read_pool, write_pool
    from arena_dist.generate.worker import GeneratorSpec
    from arena_dist.hub import fetch_on_every_node
    from arena_dist.io import atomic_write_json, claim_output_dir
    from arena_dist.label.store import input_shards
    from arena_dist.ray_local import ray_session

    output_dir = claim_output_dir(config.output_dir, "output_dir")
    save_resolved_config(config, output_dir)
    dataset_dir = Path(config.input.dataset_dir)
    shards = input_shards(dataset_dir, config.input.split)
    store = PoolStore(output_dir / "shards", "generate", generate_config_hash(config))
    generators = [GeneratorSpec(g.id, g.name_or_path, g.weight, g.trust_remote_code) for g in config.generators]
    progress = GenerateProgress(store.directory / "status.json", len(shards), sum(s.rows for s in shards))
    with ray_session(config.ray.address, config.ray.local_num_cpus):
        fetch_on_every_node([g.name_or_path for g in config.generators])  # once per node, not once per actor
        run_summary = generate_shards(shards, store, actor_settings(config), generators, sampling_settings(config),
                                      config.seed, progress)
    manifest = store.finalize(shards, {"dataset_dir": str(dataset_dir), "split": config.input.split,
                                       "dataset_config_hash": load_manifest(dataset_dir).get("config_hash"),
                                       "generators": [g.id for g in config.generators]})
    progress.update("finalized", force=True)
    pool = write_pool(store.directory, output_dir / "pool.parquet")
    replies = pool_models(read_pool(pool["path"], ["model_a", "model_b"]))
    print(f"[generate] {manifest['rows']} prompts answered by two generators each ({run_summary['shards_generated']} "
          f"shards generated, {run_summary['shards_skipped']} already done; replies per generator: "
          + ", ".join(f"{m} {n}" for m, n in replies.items()) + f") -> {pool['path']}", flush=True)
    if run_summary["empty_replies"]:
        print(f"[generate] warning: {run_summary['empty_replies']} empty replies this run; prepare quarantines "
              "their rows (raise sampling.min_new_tokens)", flush=True)
    summary = {"output_dir": str(output_dir), "pool": pool, "replies_per_generator": replies, **run_summary}
    atomic_write_json(output_dir / "generate_summary.json", summary)
    write_generate_artefact(config, output_dir, summary)
    return summary


def write_generate_artefact(config: Config, output_dir: Path, summary: dict) -> None:
    """Headline: generated tokens per second of this run (model loading excluded)."""
    from arena_dist.artefacts import write_artefact

    inputs = {"dataset": config.input.dataset_dir, **{f"generator/{g.id}": g.name_or_path for g in config.generators}}
    outputs = {"pool": summary["pool"]["path"], "summary": output_dir / "generate_summary.json",
               "status": output_dir / "shards" / "status.json"}
    metrics = {"new_tokens_per_s": summary["new_tokens_per_s"], "rows_generated": summary["rows_generated"],
               "prompt_padding_ratio": summary["prompt_padding_ratio"]}
    write_artefact(output_dir, "generate", config, inputs=inputs, outputs=outputs,
                   rows={"pool": summary["pool"]["rows"]}, metrics=metrics, headline="new_tokens_per_s")
