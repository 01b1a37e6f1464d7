"""Hosts made of Linux network namespaces, and a real Ray cluster spread over them.

`NetnsHosts(n)` builds n "hosts": a private bridge on the host side, one veth pair per host, the peer moved into the
host's namespace and renamed `eth0`, address 10.200.0.I/24 (I = 1..n). Only the namespaces get addresses, so several
runs at the same time (other people's tests) never collide: every name carries a per-run token, and teardown deletes
only the namespaces and links this object created.

`RayOnHosts(hosts)` starts a Ray head in h1 (`--node-ip-address 10.200.0.1`) and one worker in each other host, each
with its own short `--temp-dir` (the filesystem is shared), waits until every node is alive, can kill one host's raylet
or cut its link, and stops everything it started by pid / by its unique temp dir. Never a host-wide `ray stop`.

Processes enter a namespace with `nsenter --net=/run/netns/NAME` (not `ip netns exec`, which remounts /sys and breaks
slurmd).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from arena_dist.ray_local import processes_mentioning, ray_executable, raylet_started

SUBNET_PREFIX = "10.200.0."
IFNAME = "eth0"  # the interface name inside every host: GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME point at it

# Dead nodes are noticed in about 1.5 s instead of 12-14 s.
FAST_HEALTH_CHECK = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


class NetnsUnavailable(RuntimeError):
    """`ip` refused to build the hosts (e.g. root in a container without CAP_NET_ADMIN): tests skip with this."""


def netns_unavailable_reason() -> str | None:
    """Why namespace hosts cannot be built here (None when they can)."""
    if os.geteuid() != 0:
        return "network-namespace hosts need root"
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"network-namespace hosts need `{tool}` (iproute2 / util-linux)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def venv_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for processes in a host: this interpreter's bin dir first in PATH (the project venv)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(extra or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass
class Host:
    index: int  # 1-based
    netns: str
    ip: str
    host_link: str  # the veth end on the host side (bring it down to partition this host)

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    def command(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net={self.netns_path}", *argv]


@dataclass
class NetnsHosts:
    """`with NetnsHosts(2) as hosts:` -> `hosts[0].ip == "10.200.0.1"`, `hosts.run(0, [...])`."""

    count: int = 2
    token: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: list[Host] = field(default_factory=list)
    bridge: str = ""
    _created_netns: list[str] = field(default_factory=list)
    _created_links: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Interface names are limited to 15 characters: "adb" + 6 hex + "h" + index fits.
        self.bridge = f"adb{self.token}"

    def start(self) -> "NetnsHosts":
        try:
            self._build()
        except subprocess.CalledProcessError as err:
            self.stop()
            detail = (err.stderr or "").strip().splitlines()
            raise NetnsUnavailable(f"cannot build network namespaces here: `{' '.join(err.cmd)}` failed"
                                   f" ({detail[-1] if detail else err.returncode})") from None
        except BaseException:
            self.stop()
            raise
        return self

    def _build(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._created_links.append(self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index in range(1, self.count + 1):
            netns = f"ad-{self.token}-h{index}"
            host_link, peer = f"adv{self.token}h{index}", f"adp{self.token}h{index}"
            _ip("netns", "add", netns)
            self._created_netns.append(netns)
            _ip("link", "add", host_link, "type", "veth", "peer", "name", peer)
            self._created_links.append(host_link)
            _ip("link", "set", host_link, "master", self.bridge)
            _ip("link", "set", host_link, "up")
            _ip("link", "set", peer, "netns", netns)
            inside = ("ip", "-n", netns)
            subprocess.run([*inside, "link", "set", peer, "name", IFNAME], check=True, capture_output=True, timeout=30)
            ip = f"{SUBNET_PREFIX}{index}"
            subprocess.run([*inside, "addr", "add", f"{ip}/24", "dev", IFNAME], check=True, capture_output=True,
                           timeout=30)
            subprocess.run([*inside, "link", "set", IFNAME, "up"], check=True, capture_output=True, timeout=30)
            subprocess.run([*inside, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=30)
            self.hosts.append(Host(index=index, netns=netns, ip=ip, host_link=host_link))

    def processes_inside(self, index: int | None = None) -> list[int]:
        """Pids of every process living in this object's namespaces (they are unique to this run), or in host
        `index` (0-based) only."""
        ours = set()
        names = self._created_netns if index is None else [self.hosts[index].netns]
        for netns in names:
            try:
                stat = os.stat(f"/run/netns/{netns}")
                ours.add((stat.st_dev, stat.st_ino))
            except OSError:
                pass
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = os.stat(entry / "ns" / "net")
            except OSError:
                continue
            if (stat.st_dev, stat.st_ino) in ours:
                pids.append(int(entry.name))
        return pids

    def kill_processes_inside(self, grace: float = 10.0) -> None:
        """SIGTERM what still runs in our namespaces, SIGKILL what is left: a namespace only dies with them."""
        _kill_pids(self.processes_inside(), signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.processes_inside():
            time.sleep(0.3)
        _kill_pids(self.processes_inside(), signal.SIGKILL)

    def stop(self) -> None:
        """End processes left inside, delete the namespaces and links this object created."""
        self.kill_processes_inside()
        for netns in reversed(self._created_netns):
            _ip("netns", "delete", netns, check=False)
        for link in reversed(self._created_links):
            _ip("link", "delete", link, check=False)
        self._created_netns.clear()
        self._created_links.clear()

    def __getitem__(self, index: int) -> Host:
        return self.hosts[index]

    def __len__(self) -> int:
        return len(self.hosts)

    def run(self, index: int, argv: list[str], timeout: float = 120, env: dict[str, str] | None = None,
            **kwargs) -> subprocess.CompletedProcess:
        """Run `argv` to the end inside host `index` (0-based), output captured."""
        return subprocess.run(self.hosts[index].command(argv), capture_output=True, text=True, timeout=timeout,
                              env=venv_env(env), **kwargs)

    def popen(self, index: int, argv: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.hosts[index].command(argv), env=venv_env(env), start_new_session=True, **kwargs)

    def set_link(self, index: int, up: bool) -> None:
        """Cut (or restore) one host's only link: a clean network partition."""
        _ip("link", "set", self.hosts[index].host_link, "up" if up else "down")

    def __enter__(self) -> "NetnsHosts":
        return self if self.hosts else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _kill_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class NodeExited(RuntimeError):
    """A Ray node's `ray start` process ended while the cluster was starting."""


class RayOnHosts:
    """A Ray head in host 1 and a worker in every other host. `address` is the GCS (10.200.0.1:6379)."""

    GCS_PORT = 6379  # each namespace has its own port space: the defaults are free
    DASHBOARD_PORT = 8265

    def __init__(self, hosts: NetnsHosts, num_cpus: float = 1, dashboard: bool = False,
                 env: dict[str, str] | None = None, head_env: dict[str, str] | None = None):
        self.hosts = hosts
        self.num_cpus = num_cpus
        self.dashboard = dashboard
        self.env = {
            "GLOO_SOCKET_IFNAME": IFNAME, "NCCL_SOCKET_IFNAME": IFNAME,
            # Token auth with a private token, set explicitly: with RAY_AUTH_MODE unset a head turns token auth on by
            # itself whenever ~/.ray/auth_token exists (any earlier local `ray.init()` writes one) and then rejects
            # workers that do not send it. The token goes to every node and driver through the environment only.
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
            **(env or {}),
        }
        self.head_env = {**FAST_HEALTH_CHECK, **(head_env or {})}  # the head only
        self.root, self.temp_dirs, self.processes = Path(), [], []
        self._new_temp_dirs()

    @property
    def head_ip(self) -> str:
        return self.hosts[0].ip

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{self.GCS_PORT}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head_ip}:{self.DASHBOARD_PORT}"

    def node_command(self, index: int) -> list[str]:
        host = self.hosts[index]
        cmd = [ray_executable(), "start", "--block", "--disable-usage-stats", f"--node-ip-address={host.ip}",
               f"--temp-dir={self.temp_dirs[index]}", f"--num-cpus={self.num_cpus}",
               # One custom resource per host, so tests and stages can pin work to a given host.
               f'--resources={{"host{host.index}": 1}}']
        if index == 0:
            cmd += ["--head", f"--port={self.GCS_PORT}"]
            if self.dashboard:
                cmd += ["--include-dashboard=true", f"--dashboard-host={host.ip}",
                        f"--dashboard-port={self.DASHBOARD_PORT}"]
            else:
                cmd += ["--include-dashboard=false"]
        else:
            cmd += [f"--address={self.address}"]
        return cmd

    def start(self, timeout: float = 120.0, attempts: int = 3) -> "RayOnHosts":
        """Start every node and wait until all are alive. A node that exits during start-up starts the whole cluster
        again in fresh temp dirs, up to `attempts` times: on a busy machine Ray's raylet aborts when its dashboard
        agent takes more than a fixed 15 s to start (ray-project/ray#65983)."""
        for attempt in range(1, attempts + 1):
            try:
                for index in range(len(self.hosts)):
                    self.start_node(index)
                    if index == 0:
                        self._wait_gcs(timeout)
                self.wait_alive(len(self.hosts), timeout)
                return self
            except NodeExited:
                self.stop()
                if attempt == attempts:
                    raise
                self._new_temp_dirs()
            except BaseException:
                self.stop()
                raise
        return self

    def _new_temp_dirs(self) -> None:
        # Short private temp dirs (Unix socket paths must stay < 108 bytes), one per node: the filesystem is shared.
        self.root = Path(tempfile.mkdtemp(prefix=f"adr{self.hosts.token}-", dir="/tmp"))
        self.temp_dirs = [self.root / f"h{host.index}" for host in self.hosts.hosts]
        self.processes = [None] * len(self.hosts)

    def start_node(self, index: int) -> None:
        self.temp_dirs[index].mkdir(parents=True, exist_ok=True)
        env = {**self.env, **(self.head_env if index == 0 else {})}
        log = open(self.root / f"h{index + 1}.log", "wb")
        self.processes[index] = self.hosts.popen(index, self.node_command(index), env=env, stdout=log,
                                                 stderr=subprocess.STDOUT)

    def _wait_gcs(self, timeout: float) -> None:
        probe = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)\n"
                 "except OSError: sys.exit(1)")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[0].poll() is not None:
                raise NodeExited(f"ray head exited early:\n{self.log_tail(0)}")
            if self.hosts.run(0, [sys.executable, "-c", probe, self.head_ip, str(self.GCS_PORT)]).returncode == 0:
                return
            time.sleep(0.5)
        raise TimeoutError(f"ray head not reachable after {timeout:.0f}s:\n{self.log_tail(0)}")

    def alive_nodes(self) -> list[str]:
        """Node IPs the GCS reports alive (asked from inside host 1, the only place that can reach it)."""
        script = (
            "import sys, ray\n"
            "ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False)\n"
            "for node in ray.nodes():\n"
            "    if node['Alive']: print(node['NodeManagerAddress'])\n"
        )
        result = self.hosts.run(0, [sys.executable, "-c", script, self.address], timeout=60, env=self.env)
        if result.returncode != 0:
            return []
        return sorted(line.strip() for line in result.stdout.splitlines() if line.strip())

    def wait_alive(self, count: int, timeout: float = 120.0) -> list[str]:
        deadline = time.monotonic() + timeout
        alive: list[str] = []
        while time.monotonic() < deadline:
            for index, process in enumerate(self.processes):
                if process is not None and process.poll() is not None:
                    raise NodeExited(f"ray node in h{index + 1} exited:\n{self.log_tail(index)}")
            alive = self.alive_nodes()
            started = all(raylet_started(self.temp_dirs[index])
                          for index, process in enumerate(self.processes) if process is not None)
            if len(alive) == count and started:
                return alive
            time.sleep(1.0)
        raise TimeoutError(f"{len(alive)}/{count} Ray nodes alive after {timeout:.0f}s: {alive}")

    def raylet_pids(self, index: int) -> list[int]:
        marker = str(self.temp_dirs[index])
        pids = []
        for pid in processes_mentioning(marker):
            try:
                exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if exe.endswith(b"/raylet"):
                pids.append(pid)
        return pids

    def kill_raylet(self, index: int) -> list[int]:
        """SIGKILL host `index`'s raylet: the whole host is lost to Ray (its workers die with it)."""
        pids = self.raylet_pids(index)
        if not pids:
            raise RuntimeError(f"no raylet found for h{index + 1}")
        _kill_pids(pids, signal.SIGKILL)
        return pids

    def stop(self, grace: float = 8.0) -> None:
        """SIGTERM every node's process group and everything naming our temp dirs at once, SIGKILL what is left."""
        marker = str(self.root)
        for process in self.processes:
            if process is not None and process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        _kill_pids(processes_mentioning(marker), signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (
            processes_mentioning(marker) or any(p is not None and p.poll() is None for p in self.processes)
        ):
            time.sleep(0.3)
        for process in self.processes:
            if process is not None and process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=5)
        _kill_pids(processes_mentioning(marker), signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, index: int, chars: int = 3000) -> str:
        try:
            return (self.root / f"h{index + 1}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def python(self, index: int, script: str, timeout: float = 120, env: dict[str, str] | None = None,
               args: list[str] | None = None) -> subprocess.CompletedProcess:
        """Run a Python driver inside host `index` with RAY_ADDRESS pointing at this cluster."""
        env = {**self.env, "RAY_ADDRESS": self.address, **(env or {})}
        return self.hosts.run(index, [sys.executable, "-c", script, *(args or [])], timeout=timeout, env=env)

    def __enter__(self) -> "RayOnHosts":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
