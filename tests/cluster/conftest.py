"""Fixtures for the cluster tests: hosts made of network namespaces, a Ray cluster over them, a real private Slurm.

Each fixture skips (with the reason) where it cannot run: not root, no `ip`/`nsenter`, no slurm-wlm/munge.
Everything a fixture starts is stopped by pid / unique temp dir, and everything it creates is deleted, even when the
test fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from netns import NetnsHosts, NetnsUnavailable, RayOnHosts, netns_unavailable_reason  # noqa: E402
from slurm_fixture import PrivateSlurm, slurm_unavailable_reason  # noqa: E402


def _skip_without_netns() -> None:
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)


def _start_hosts(count: int = 2) -> NetnsHosts:
    _skip_without_netns()
    try:
        return NetnsHosts(count).start()
    except NetnsUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture
def netns_hosts():
    """Two hosts h1, h2 (10.200.0.1, 10.200.0.2) joined by a private bridge."""
    with _start_hosts() as hosts:
        yield hosts


@pytest.fixture
def ray_on_hosts(netns_hosts):
    """A Ray head in h1 and a worker in h2, fast dead-node detection; `kill_raylet(1)` loses h2."""
    with RayOnHosts(netns_hosts, num_cpus=1) as cluster:
        yield cluster


@pytest.fixture
def slurm_cluster():
    """slurmctld + slurmd n1 (in h1) + slurmd n2 (in h2), 2 CPUs and 2 pretend GPUs each, a private munged."""
    reason = slurm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with _start_hosts() as hosts, PrivateSlurm(hosts, gpus_per_node=2) as slurm:
        yield slurm
