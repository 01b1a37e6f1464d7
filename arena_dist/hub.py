"""Hub checkpoints on a cluster: fetched once per node into the shared `HF_HOME` before any worker or actor starts.

Left to `from_pretrained`, each of 32 ranks would ask the hub for 140 GB at the same moment (rate limits, a cache
written concurrently by every rank of a node). Instead the driver runs one small Ray task pinned to each alive node
that calls `snapshot_download` with only the files a stage reads; the ranks then find everything in the cache. The
task gets the plain variables (`HF_HOME`, `HF_ENDPOINT`, offline flags) in its runtime env and the token of a gated
repo as a `SecretEnv` argument, as every worker does (arena_dist.worker_env).
"""

from __future__ import annotations

import os
from pathlib import Path

HUB_FILES = ["*.safetensors", "*.json", "*.jinja", "tokenizer*", "merges.txt"]  # weights, configs, tokenizer: what stages read


def is_hub_id(name: str | os.PathLike | None) -> bool:
    """`org/name` (or `name`) that is no local folder; an absolute or relative path never is."""
    name = str(name or "")
    return bool(name) and not name.startswith(("/", ".", "~")) and name.count("/") <= 1 \
        and not Path(name).expanduser().exists()


def hub_offline() -> bool:
    """As huggingface_hub reads it (TRANSFORMERS_OFFLINE counts too)."""
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.upper() in {"1", "ON", "YES", "TRUE"}


def _download(repo_ids: list[str], secrets) -> str:
    import ray
    from huggingface_hub import snapshot_download

    from arena_dist.worker_env import apply_secrets

    apply_secrets(secrets)
    for repo_id in repo_ids:
        snapshot_download(repo_id, allow_patterns=HUB_FILES)
    return ray.get_runtime_context().get_node_id()


def fetch_on_every_node(names) -> list[str]:
    """Download the hub ids among `names` (local folders, None and everything when HF_HUB_OFFLINE is set are
    skipped) once on every alive node of the connected Ray cluster; returns the ids of the nodes that did."""
    repo_ids = sorted({str(name) for name in names if is_hub_id(name)})
    if not repo_ids or hub_offline():
        return []
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from arena_dist.worker_env import SecretEnv, plain_env

    task, env, secrets = ray.remote(_download), {"env_vars": plain_env()}, SecretEnv.from_environ()
    print(f"hub: fetching {', '.join(repo_ids)} once per node", flush=True)
    return ray.get([task.options(num_cpus=0, max_retries=2, runtime_env=env,
                                 scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                    .remote(repo_ids, secrets) for node in ray.nodes() if node["Alive"]])
