"""Hub ids are fetched once per node of a real two-node Ray cluster into the shared HF_HOME, with the driver's token.

The hub is the one part outside this machine, so a small local server stands in for it: a gated repo in the hub's
HTTP shape (revision info, file tree, `resolve` with the commit and etag headers) that answers only requests bearing
the token. Both Ray nodes run on this host, each its own raylet, as two machines would."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "train"))
from hub_checkpoints import build_checkpoint  # noqa: E402
from teacher_fixtures import make_dataset, tiny_config  # noqa: E402

from arena_dist.hub import fetch_on_every_node, is_hub_id
from arena_dist.ray_local import LocalRayHead, free_ports, ray_executable

SHA = "0123456789abcdef0123456789abcdef01234567"
REPO_ID = "acme/gated-tiny"
FILES = {name: f"{name} content".encode() * 100  # distinct contents: the cache stores each distinct blob once
         for name in ("config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                      "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "README.md",
                      "train.bin")}
NEEDED = sorted(set(FILES) - {"README.md", "train.bin"})


class FakeHub:
    """One gated repo serving `files`; `requests` holds (method, path, sent the token, user agent) of every request."""

    def __init__(self, token: str, files: dict[str, bytes] = FILES):
        self.requests: list[tuple[str, str, bool, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body: bool) -> None:
                path = self.path.split("?")[0]
                authorised = self.headers.get("Authorization") == f"Bearer {token}"
                hub.requests.append((self.command, path, authorised, self.headers.get("User-Agent", "")))
                api, resolve = f"/api/models/{REPO_ID}/", f"/{REPO_ID}/resolve/{SHA}/"
                headers = {"X-Repo-Commit": SHA}
                if not authorised:
                    code, content, headers = 401, b"{}", {"X-Error-Code": "GatedRepo"}
                elif path.startswith(api + "revision/"):
                    code, content = 200, json.dumps({"id": REPO_ID, "sha": SHA}).encode()
                elif path.startswith(api + "tree/"):
                    code, content = 200, json.dumps([{"type": "file", "path": name, "size": len(data),
                                                       "oid": hashlib.sha1(data).hexdigest()}
                                                      for name, data in files.items()]).encode()
                elif path.startswith(resolve) and path[len(resolve):] in files:
                    code, content = 200, files[path[len(resolve):]]
                    headers["ETag"] = f'"{hashlib.sha1(content).hexdigest()}"'
                else:
                    code, content, headers = 404, b"{}", {"X-Error-Code": "EntryNotFound"}
                self.send_response(code)
                for key, value in {**headers, "Content-Length": str(len(content))}.items():
                    self.send_header(key, value)
                self.end_headers()
                if body:
                    self.wfile.write(content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, method: str, prefix: str) -> int:
        return sum(1 for m, path, *_ in self.requests if m == method and path.startswith(prefix))


@pytest.fixture
def two_node_ray(tmp_path, monkeypatch):
    """A Ray head and a second raylet joined to it (`ray start --address`), 1 CPU each; the driver connected. The
    nodes start online (a runtime env can set a variable, not remove one the raylet inherited)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # tests/conftest.py sets them
        monkeypatch.delenv(flag, raising=False)
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    with LocalRayHead(num_cpus=1, dashboard=False, env=env) as head:
        # The driver attaches to the head's raylet before a second raylet with the same address exists.
        ray.init(address=head.address, logging_level="ERROR")
        worker = None
        try:
            for attempt in range(1, 4):
                worker = start_second_node(head, env, tmp_path / f"node2-{attempt}.log")
                # A placement group with one bundle on each of two distinct nodes becomes ready the moment the
                # second node has joined; awaited in 1 s slices so that a node whose `ray start --block` has
                # already exited is started again at once rather than after the whole timeout.
                both = placement_group([{"CPU": 0.01}] * 2, strategy="STRICT_SPREAD")
                joined, ready, deadline = both.ready(), [], time.monotonic() + 90
                while not ready and worker.poll() is None and time.monotonic() < deadline:
                    ready, _ = ray.wait([joined], timeout=1)
                remove_placement_group(both)
                if ready:
                    break
                # Ray's raylet gives its dashboard agent a fixed 15 s to start and aborts after it (ray-project/ray
                # #65983): on a busy machine the node can die while starting. Start it again.
                stop_node(worker)
                assert attempt < 3, "the second node did not join:\n" + \
                    (tmp_path / f"node2-{attempt}.log").read_text()[-3000:]
            yield head
        finally:
            ray.shutdown()
            if worker is not None:
                stop_node(worker)


def start_second_node(head, env: dict, log) -> subprocess.Popen:
    """`ray start --address` of a second raylet in the head's temp dir (LocalRayHead.stop() ends every process that
    names it), every port chosen free."""
    names = ("node-manager", "object-manager", "runtime-env-agent", "dashboard-agent-grpc", "dashboard-agent-listen",
             "metrics-export")
    ports = [f"--{name}-port={port}" for name, port in zip(names, free_ports(len(names)))]
    return subprocess.Popen(
        [ray_executable(), "start", "--block", f"--address={head.address}", "--node-ip-address=127.0.0.1",
         "--num-cpus=1", f"--temp-dir={head.temp_dir}", *ports],
        env={**os.environ, **env, **head.client_env()}, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
        start_new_session=True)


def stop_node(worker: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)  # its own session, started here; the rest goes with the head
    worker.wait(timeout=30)


def test_one_download_per_node_into_the_shared_home_with_the_token(two_node_ray, tmp_path, monkeypatch, capfd,
                                                                     files_containing):
    import ray

    token = "hf_" + secrets.token_hex(20)
    hub = FakeHub(token)
    home = tmp_path / "shared_hf_home"
    for key, value in {"HF_TOKEN": token, "HF_HOME": str(home), "HF_ENDPOINT": hub.url}.items():
        monkeypatch.setenv(key, value)

    nodes = fetch_on_every_node([REPO_ID, str(tmp_path), None])  # a local folder and an unset name: left alone

    alive = sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])
    assert sorted(nodes) == alive and len(alive) == 2  # one task per node, on every node
    assert hub.count("GET", f"/api/models/{REPO_ID}/revision/") == 2  # each node asked once, none twice
    for name in FILES:  # each file crossed the network at most once: the second node found it in the shared cache
        assert hub.count("GET", f"/{REPO_ID}/resolve/{SHA}/{name}") == (name in NEEDED), name
    assert all(authorised for _, path, authorised, _ in hub.requests if REPO_ID in path)  # the token went along
    snapshot = home / "hub" / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / SHA
    assert sorted(p.name for p in snapshot.iterdir()) == NEEDED
    assert all((snapshot / name).read_bytes() == FILES[name] for name in NEEDED)
    out, err = capfd.readouterr()
    assert token not in out + err and "once per node" in out
    assert files_containing(two_node_ray.temp_dir, token) == [] and files_containing(home, token) == []


def test_local_folders_and_offline_mode_fetch_nothing(tmp_path, monkeypatch):
    hub = FakeHub("unused")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    assert not any(is_hub_id(name) for name in (tmp_path, "./model", "/models/x", "~/m", "a/b/c", None, ""))
    assert is_hub_id("meta-llama/Llama-3.3-70B-Instruct") and is_hub_id("gpt2")
    assert fetch_on_every_node([str(tmp_path), None]) == []
    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setenv(flag, "1")
        assert fetch_on_every_node([REPO_ID]) == []  # Ray is not even connected: nothing was asked of it
    assert hub.requests == []


@pytest.mark.slow
def test_teacher_workers_find_the_checkpoint_fetched_before_they_started(two_node_ray, tmp_path, files_containing):
    """The teacher stage on a hub id, one ZeRO-3 rank per node: every file crossed the network once, fetched by the
    per-node task before Ray Train started (transformers' own downloads carry `transformers/` in their user agent)."""
    checkpoint = build_checkpoint(tmp_path, "llama", "causal_lm", num_labels=2)
    files = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    token = "hf_" + secrets.token_hex(20)
    hub = FakeHub(token, files)
    config = tiny_config(make_dataset(tmp_path), tmp_path / "runs", "hub", training={"max_steps": 1})
    config["model"] = {"name_or_path": REPO_ID, "head": "linear", "attn_implementation": "sdpa"}
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, **two_node_ray.client_env(), "RAY_ADDRESS": two_node_ray.address, "DS_ACCELERATOR": "cpu",
           "HF_TOKEN": token, "HF_HOME": str(tmp_path / "hf_home"), "HF_ENDPOINT": hub.url, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "arena_dist.cli", "teacher", "--config", str(tmp_path / "teacher.yaml")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=Path(__file__).parents[1])
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert f"fetching {REPO_ID} once per node" in output and token not in output
    downloads = [agent for method, path, _, agent in hub.requests if method == "GET" and "/resolve/" in path]
    assert len(downloads) == len(files) and not any("transformers/" in agent for agent in downloads)
    assert all(authorised for _, path, authorised, _ in hub.requests if REPO_ID in path)
    assert files_containing(tmp_path / "runs", token) == [] and files_containing(two_node_ray.temp_dir, token) == []
