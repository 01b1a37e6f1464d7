"""Session-wide test settings: offline hub, CPU DeepSpeed, no Ray telemetry, one thread per process; shared
fixtures."""

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray >= 2.5x: a local `ray.init()` turns token auth on and writes ~/.ray/auth_token; that host-wide file then puts
# every later `ray start` on the host into token mode while clients without the token fail ("InvalidAuthToken").
# One token for the whole session, set before anything imports Ray (Ray reads its auth settings once per process):
# every test head (LocalRayHead takes $RAY_AUTH_TOKEN), private local Ray and child process uses it, and no test
# writes or depends on that file.
if not os.environ.get("RAY_AUTH_MODE") and not os.environ.get("RAY_AUTH_TOKEN"):
    import secrets

    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".venv" / "torch_extensions"))


SHIPPED_MODULE = '''"""A model class shipped inside an export (tests): importing this module leaves a marker file."""
from pathlib import Path

from transformers import LlamaForSequenceClassification

Path({marker!r}).write_text("imported")


class ShippedLlamaForSequenceClassification(LlamaForSequenceClassification):
    pass
'''
SHIPPED_MAPS = {
    "config.json": {"AutoModelForSequenceClassification": "shipped_model.ShippedLlamaForSequenceClassification"},
    "tokenizer_config.json": {"AutoTokenizer": ["shipped_model.ShippedTokenizer", None]},
}


def _ship_code(directory, marker, config_file="config.json"):
    """Make a (tiny Llama) export folder declare Python code of its own, as a downloaded export could: `auto_map` in
    `config_file` -> `shipped_model.py` inside the folder, whose import writes `marker`; and the export's metadata
    (when the folder has one) claims trust_remote_code for itself."""
    directory = Path(directory)
    (directory / "shipped_model.py").write_text(SHIPPED_MODULE.format(marker=str(marker)))
    config = json.loads((directory / config_file).read_text())
    config["auto_map"] = SHIPPED_MAPS[config_file]
    (directory / config_file).write_text(json.dumps(config))
    meta_file = directory / "arena_dist.json"
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        meta["model_config"]["trust_remote_code"] = True
        meta_file.write_text(json.dumps(meta))
    return directory


@pytest.fixture
def ship_code():
    """`ship_code(export_dir, marker, config_file="config.json")`: see _ship_code."""
    return _ship_code


def _files_containing(root, needle: str) -> list[str]:
    """Every regular file under `root` whose bytes contain `needle` (binary-safe; sockets and links skipped)."""
    data = needle.encode()
    found = []
    for path in Path(root).rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and data in path.read_bytes():
                found.append(str(path))
        except OSError:  # gone meanwhile (a live Ray session's files come and go)
            continue
    return found


@pytest.fixture
def files_containing():
    """`files_containing(root, text)`: see _files_containing."""
    return _files_containing


def pytest_collection_modifyitems(config, items):
    """`make test` runs two pytest-xdist workers with `--dist loadfile`: a file's tests stay on one worker, so
    module-scoped fixtures (a Ray head, a trained reference run) are built once. Files with the most slow tests are
    handed out first, so the long ones do not all end up in the tail (`--no-loadscope-reorder` keeps this order:
    by default xdist hands out the files with the most tests first, which put the long end-to-end files last). (The
    cluster tests' network-namespace hosts and private Slurm carry a per-run token in every name, so two of them may
    run at once.)"""
    slow: dict[str, int] = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[item.path])  # stable: the order inside a file is kept


@pytest.fixture(scope="module")
def ray_cluster():
    """A private Ray head (2 CPUs, no dashboard) for one test module, this process connected to it."""
    import ray

    from arena_dist.ray_local import LocalRayHead, connect_ray

    saved = {key: os.environ.get(key) for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    head = LocalRayHead(num_cpus=2, dashboard=False).start()
    try:
        connect_ray(head.address, head.client_env(), log_to_driver=False)
        yield head
    finally:
        ray.shutdown()
        head.stop()
        for key, value in saved.items():  # the next module's head has its own token
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)

