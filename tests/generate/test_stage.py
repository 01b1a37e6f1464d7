"""`arena-dist generate` on a real local Ray head with tiny Llama / Qwen2 / Gemma-2 chat checkpoints: every prompt
answered exactly once by two distinct generators with 2 actors and one SIGKILLed mid-run, a rerun does nothing, and
the pool goes through `arena-dist prepare` as a pool source."""

import json
import os
import signal
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from arena_dist.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # hub_checkpoints

pytestmark = pytest.mark.slow

N_PROMPTS = 32
NUM_SHARDS = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from hub_checkpoints import build_checkpoint

    from arena_dist.data.sources import SourceConfig
    from arena_dist.data.store import build_dataset

    root = tmp_path_factory.mktemp("generate")
    with open(root / "conversations.jsonl", "w") as out:
        for i in range(N_PROMPTS):
            messages = [{"role": "user", "content": f"question number {i}: " + "why? " * (i % 7)}]
            if i % 4 == 0:
                messages.insert(0, {"role": "system", "content": "be brief"})
            out.write(json.dumps({"id": i, "messages": messages}) + "\n")
    dataset = root / "dataset"
    build_dataset([SourceConfig(name="conv", kind="conversations", path=root / "conversations.jsonl")], dataset,
                  num_shards=NUM_SHARDS, num_folds=2, seed=0)
    checkpoints = {family: build_checkpoint(root / "models", family, "causal_lm")
                   for family in ("llama", "qwen2", "gemma2")}
    config = {
        "output_dir": str(root / "generated"),
        "input": {"dataset_dir": str(dataset), "split": "prompts"},
        "generators": [{"id": f"tiny-{family}", "name_or_path": str(path)} for family, path in checkpoints.items()],
        "sampling": {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 6, "min_new_tokens": 3},
        "batching": {"max_tokens": 4096},
        "ray": {"num_actors": 2, "cpus_per_actor": 0.5, "threads_per_actor": 1, "max_restarts": 2},
        "seed": 5,
    }
    path = root / "generate.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"root": root, "dataset": dataset, "config_path": path, "config": config}


def test_killed_actor_then_rerun_then_prepare(ray_cluster, setup):
    from arena_dist.config import load_config
    from arena_dist.data.store import iter_records, load_manifest
    from arena_dist.generate.driver import generate_shards
    from arena_dist.generate.pairing import pick_pair
    from arena_dist.generate.store import PoolStore
    from arena_dist.generate.worker import GeneratorSpec
    from arena_dist.io import claim_output_dir
    from arena_dist.label.store import input_shards
    from arena_dist.stages import generate as stage

    config = load_config(stage.Config, str(setup["config_path"]))
    shards = input_shards(setup["dataset"], "prompts")
    assert len(shards) == NUM_SHARDS and sum(s.rows for s in shards) == N_PROMPTS
    # what the stage does first: claim the output directory, then its store inside
    store = PoolStore(claim_output_dir(config.output_dir) / "shards", "generate", stage.generate_config_hash(config))
    generators = [GeneratorSpec(g.id, g.name_or_path, g.weight) for g in config.generators]
    killed = []

    def kill_an_actor_mid_run(slot, shard):
        # Third dispatch: both actors are loaded and busy; SIGKILL one while its shards are in flight.
        kill_an_actor_mid_run.calls += 1
        if kill_an_actor_mid_run.calls == 3 and not killed:
            os.kill(slot.pid, signal.SIGKILL)
            killed.append((slot.pid, [lost.index for lost in slot.inflight.values()]))

    kill_an_actor_mid_run.calls = 0
    first = generate_shards(shards, store, stage.actor_settings(config), generators, stage.sampling_settings(config),
                            config.seed, on_dispatch=kill_an_actor_mid_run)
    assert killed and first["actor_failures"] >= 1 and first["retries"] >= 1
    assert first["shards_generated"] == NUM_SHARDS and first["rows_generated"] == N_PROMPTS
    assert first["new_tokens"] >= 2 * N_PROMPTS * 3 and first["prompt_padding_ratio"] >= 1.0
    store.finalize(shards)  # raises unless every prompt id is there exactly once
    pid, lost = killed[0]
    # A shard the actor had finished before the kill keeps its result (already in Ray's object store); the rest
    # (retries >= 1 above) were generated again by another process.
    assert lost and any(json.loads(store.done_path(index).read_text())["actor_pid"] != pid for index in lost)

    # The stage on the same output: everything is committed, nothing is generated, the pool file is written.
    summary_path = setup["root"] / "summary.json"
    os.environ["ARENA_DIST_SUMMARY"] = str(summary_path)
    try:
        assert main(["generate", "--config", str(setup["config_path"])]) == 0
    finally:
        del os.environ["ARENA_DIST_SUMMARY"]
    summary = json.loads(summary_path.read_text())
    assert summary["shards_generated"] == 0 and summary["shards_skipped"] == NUM_SHARDS
    assert summary["new_tokens_per_s"] is None  # nothing ran
    pool_path = Path(config.output_dir) / "pool.parquet"
    pool = pq.read_table(pool_path).to_pylist()
    prompts = {r["id"]: r["prompt"] for r in iter_records(setup["dataset"], "prompts")}
    assert sorted(row["id"] for row in pool) == sorted(prompts)  # every prompt exactly once
    ids = [g["id"] for g in setup["config"]["generators"]]
    for row in pool:
        assert row["prompt"] == prompts[row["id"]]
        assert (row["model_a"], row["model_b"]) == pick_pair(row["id"], ids, seed=setup["config"]["seed"])
        assert row["model_a"] != row["model_b"]
        assert len(row["response_a"]) == len(row["response_b"]) == 1 and row["response_a"] != row["response_b"]
    assert len({row["model_a"] for row in pool} | {row["model_b"] for row in pool}) == 3
    assert json.loads((Path(config.output_dir) / "stage.json").read_text())["stage"] == "generate"

    # The pool file is a `pool` source for prepare: every generated pair becomes a pool record.
    prepared = setup["root"] / "prepared"
    prepare = setup["root"] / "prepare.yaml"
    prepare.write_text(yaml.safe_dump({"output_dir": str(prepared), "num_shards": 2, "num_folds": 2, "sources": [
        {"name": "gen", "kind": "pool", "path": str(pool_path)}]}))
    assert main(["prepare", "--config", str(prepare)]) == 0
    assert load_manifest(prepared)["splits"]["pool"]["rows"] == N_PROMPTS
    records = {r["id"]: r for r in iter_records(prepared, "pool")}
    assert sorted(records) == sorted(f"gen/{record_id}" for record_id in prompts)
    by_id = {row["id"]: row for row in pool}
    for record_id, record in records.items():
        row = by_id[record_id.removeprefix("gen/")]
        assert (record["model_a"], record["model_b"]) == (row["model_a"], row["model_b"])
        assert record["response_a"] == row["response_a"] and record["label"] is None
