"""Hub ids fetched once per node into the shared `HF_HOME` before Ray Train workers or label actors start: left to
`from_pretrained`, all 32 ranks of a job would ask the hub for 140 GB at once. One Ray task pinned to each alive node
runs `snapshot_download` (plain variables in its runtime env, the token as a `SecretEnv` argument: worker_env.py)."""

from __future__ import annotations

import os
from pathlib import Path

HUB_FILES = ["*.safetensors", "*.json", "*.jinja", "tokenizer*", "merges.txt"]  # what the stages read


def is_hub_id(name) -> bool:
    """`org/name` or `name` that is no local folder (a path starting with /, . or ~ never is)."""
    name = str(name or "")
    return bool(name) and not name.startswith(("/", ".", "~")) and name.count("/") <= 1 \
        and not Path(name).expanduser().exists()


def _download(repo_ids: list[str], secrets) -> str:
    import ray
    from huggingface_hub import snapshot_download

    secrets.apply()
    for repo_id in repo_ids:
        snapshot_download(repo_id, allow_patterns=HUB_FILES)
    return ray.get_runtime_context().get_node_id()


def fetch_on_every_node(names) -> list[str]:
    """The hub ids among `names` downloaded on every alive node of the connected Ray cluster (nothing in offline mode,
    read as huggingface_hub reads it); returns the ids of the nodes that did."""
    repo_ids = sorted({str(name) for name in names if is_hub_id(name)})
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if not repo_ids or offline.upper() in {"1", "ON", "YES", "TRUE"}:
        return []
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from arena_dist.worker_env import SecretEnv, plain_env

    print(f"hub: fetching {', '.join(repo_ids)} once per node", flush=True)
    return ray.get([ray.remote(_download).options(
        num_cpus=0, max_retries=2, runtime_env={"env_vars": plain_env()},
        scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
    ).remote(repo_ids, SecretEnv.from_environ()) for node in ray.nodes() if node["Alive"]])
