"""A real Ray cluster over separate network hosts (Linux namespaces): placement, object transfer, losing a host."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from netns import NetnsHosts, RayOnHosts, netns_unavailable_reason
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
    hosts = NetnsHosts(2).start()
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
