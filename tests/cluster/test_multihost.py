"""A real Ray cluster over separate network hosts (Linux namespaces): placement, object transfer, losing a host.
(A ZeRO-3 teacher with one rank per host runs in tests/cluster/test_slurm.py, through the Slurm launcher.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from netns import NetnsHosts, NetnsUnavailable, RayOnHosts, netns_unavailable_reason
from arena_dist.ray_local import processes_mentioning

pytestmark = [pytest.mark.slow, pytest.mark.multihost]


def result_line(stdout: str) -> dict:
    """The driver's `RESULT {...}` line (Ray also forwards worker logs to the driver's stdout)."""
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, stdout[-3000:]
    return json.loads(lines[-1][len("RESULT "):])

SPREAD_SCRIPT = """
import json, ray
ray.init()

@ray.remote(num_cpus=0)
def where():
    return ray.util.get_node_ip_address()

@ray.remote(num_cpus=0)
def make_block(n):
    return ray.util.get_node_ip_address(), list(range(n))

ips = ray.get([where.options(resources={f"host{i}": 0.01}).remote() for i in (1, 2)])
# The object is made on h2 and read by the driver on h1: it crosses the link between the hosts.
made_on, block = ray.get(make_block.options(resources={"host2": 0.01}).remote(100_000))
print("RESULT", json.dumps({"ips": ips, "made_on": made_on, "sum": sum(block),
                  "driver": ray.util.get_node_ip_address(), "nodes": len([n for n in ray.nodes() if n["Alive"]])}))
"""


def test_ray_cluster_spans_two_hosts(ray_on_hosts):
    assert ray_on_hosts.alive_nodes() == ["10.200.0.1", "10.200.0.2"]
    result = ray_on_hosts.python(0, SPREAD_SCRIPT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = result_line(result.stdout)
    assert report["ips"] == ["10.200.0.1", "10.200.0.2"]  # each pinned task ran on its own host
    assert report["made_on"] == "10.200.0.2" and report["driver"] == "10.200.0.1"
    assert report["sum"] == sum(range(100_000))
    assert report["nodes"] == 2


LOSE_HOST_SCRIPT = """
import json, sys, time, ray
ray.init()

@ray.remote(num_cpus=0, max_retries=0)
def sleeper():
    time.sleep(120)

ref = sleeper.options(resources={"host2": 0.01}).remote()
ray.wait([ref], timeout=3)  # let it start on h2
print("READY", flush=True)
start = time.monotonic()
try:
    ray.get(ref, timeout=90)
    outcome = "finished"
except ray.exceptions.RayError as err:
    outcome = type(err).__name__
print("RESULT", json.dumps({"outcome": outcome, "seconds": time.monotonic() - start}), flush=True)
"""


def test_killing_a_hosts_raylet_is_detected(ray_on_hosts):
    env = {"PYTHONUNBUFFERED": "1"}
    driver = ray_on_hosts.hosts.popen(
        0, ["python", "-c", LOSE_HOST_SCRIPT], env={**ray_on_hosts.env, "RAY_ADDRESS": ray_on_hosts.address, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        for line in driver.stdout:
            if line.strip() == "READY":
                break
        else:
            pytest.fail("driver ended before its task started: " + driver.stderr.read()[-3000:])
        killed_at = time.monotonic()
        assert ray_on_hosts.kill_raylet(1)
        # The GCS marks the host dead fast with the head's health-check knobs (default would be 12-14 s).
        deadline = time.monotonic() + 20
        while ray_on_hosts.alive_nodes() != ["10.200.0.1"]:
            assert time.monotonic() < deadline, "h2 never marked dead"
            time.sleep(0.3)
        detected_after = time.monotonic() - killed_at
        out, err = driver.communicate(timeout=90)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    report = result_line(out)
    assert report["outcome"] in {"NodeDiedError", "WorkerCrashedError", "RayTaskError"}, (report, err[-2000:])
    assert report["seconds"] < 30
    assert detected_after < 15
    print(f"h2 lost: task failed after {report['seconds']:.1f}s, node marked dead after {detected_after:.1f}s")


def test_teardown_removes_hosts_and_processes():
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        hosts = NetnsHosts(2).start()
    except NetnsUnavailable as err:
        pytest.skip(str(err))
    names = [host.netns for host in hosts.hosts]
    cluster = None
    try:
        cluster = RayOnHosts(hosts, num_cpus=1).start()
        root = str(cluster.root)
        assert processes_mentioning(root)
    finally:
        if cluster is not None:
            cluster.stop()
        hosts.stop()
    assert processes_mentioning(root) == []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert hosts.bridge not in links and hosts.token not in links


# --- the stages over separate hosts -------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
STAGE_ENV = {"DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def stage_command(stage: str, config: Path) -> list[str]:
    return [sys.executable, "-m", "arena_dist.cli", stage, "--config", str(config)]


def test_label_stage_loses_a_whole_host_and_still_labels_every_id_once(ray_on_hosts, tmp_path):
    from arena_dist.label.store import load_store_manifest, read_input_ids, read_labels, input_shards
    from tiny_fixtures import make_pool_dataset, make_teacher_export

    shards, rows = 24, 960
    dataset = make_pool_dataset(tmp_path / "dataset", n_rows=rows, num_shards=shards)
    export = make_teacher_export(tmp_path / "teacher", max_length=256)
    out = tmp_path / "labels"
    config_path = tmp_path / "label.yaml"
    config_path.write_text(yaml.safe_dump({
        "output_dir": str(out),
        "input": {"dataset_dir": str(dataset), "split": "pool"},
        "teachers": [{"id": "t0", "export_path": str(export)}],
        "batching": {"max_tokens": 512},
        # 1 CPU per actor on hosts of 1 CPU each: one actor per host.
        "ray": {"num_actors": 2, "cpus_per_actor": 1, "threads_per_actor": 1, "max_restarts": 3},
    }))
    env = {**ray_on_hosts.env, **STAGE_ENV, "RAY_ADDRESS": ray_on_hosts.address}
    driver = ray_on_hosts.hosts.popen(0, stage_command("label", config_path), env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed_after = None
    try:
        # Lose h2 once its actor has committed a shard and work is still left: its queued shards die with it.
        deadline = time.monotonic() + 240
        while killed_after is None:
            assert driver.poll() is None, "label run ended before h2 could be lost:\n" + driver.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "h2's actor never committed a shard"
            h2_pids = set(ray_on_hosts.hosts.processes_inside(1))
            records = [json.loads(p.read_text()) for p in (out / "t0").glob("*.done.json")]
            if any(r.get("actor_pid") in h2_pids for r in records):
                assert len(records) < shards - 4, "too little work left to lose a host mid-run"
                ray_on_hosts.kill_raylet(1)
                killed_after = len(records)
            time.sleep(0.05)
        output, _ = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0, output[-5000:]
    summary = json.loads((out / "label_summary.json").read_text())["teachers"]["t0"]
    assert summary["actor_failures"] >= 1 and summary["retries"] >= 1, summary  # h2's in-flight shards were lost
    # ... and redone elsewhere: every pool id exactly once.
    expected = [i for shard in input_shards(dataset, "pool") for i in read_input_ids(shard.path)]
    labelled = read_labels(out / "t0").column("id").to_pylist()
    assert len(labelled) == len(set(labelled)) == rows
    assert sorted(labelled) == sorted(expected)
    assert load_store_manifest(out / "t0")["rows"] == rows
    print(f"h2 lost after {killed_after}/{shards} shards; {summary['retries']} shard(s) redone on h1")
