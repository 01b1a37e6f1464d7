"""A real, private Slurm (Debian slurm-wlm + munge) whose two nodes are two network-namespace hosts.

Nothing is installed here: the packages come from `make setup` (scripts/install_system_deps.sh). The fixture writes
its own slurm.conf into a private temp dir, starts its own munged (own key, own socket, `AuthInfo=socket=...`), then
slurmctld and slurmd n1 inside host h1 (10.200.0.1) and slurmd n2 inside host h2 (10.200.0.2), started with
`nsenter --net=...` (not `ip netns exec`, which remounts /sys and kills slurmd). Each namespace has its own port space,
so Slurm's default ports never collide with another run. Every client call goes through `timeout` (with a down node
`srun`/`sbatch` wait forever). Teardown: cancel jobs, stop the daemons by pid, then the namespace hosts end whatever
still runs inside them (job steps, Ray nodes started by a job).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from netns import NetnsHosts, venv_env

SLURM_TOOLS = ("slurmctld", "slurmd", "sbatch", "srun", "sinfo", "squeue", "scancel", "scontrol", "munged")


def slurm_unavailable_reason() -> str | None:
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        return (f"real-Slurm tests need Debian's slurm-wlm + munge (missing: {', '.join(missing)}; "
                "run `make setup` as root)")
    if os.geteuid() != 0:
        return "real-Slurm tests need root (slurmd runs jobs as root here)"
    return None


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class PrivateSlurm:
    """`with NetnsHosts(2) as hosts, PrivateSlurm(hosts) as slurm:` -> `slurm.run(["sinfo"])`, `slurm.env`."""

    def __init__(self, hosts: NetnsHosts, cpus_per_node: int = 2, gpus_per_node: int = 0, kill_wait_s: int = 5):
        self.hosts = hosts
        # Pretend GPUs: GRES backed by plain files, so Slurm allocates and binds GPU ids (CUDA_VISIBLE_DEVICES) as on
        # a real GPU node; nothing uses them, it proves the ids reach Ray right.
        self.gpus_per_node = gpus_per_node
        self.cpus_per_node = cpus_per_node
        self.kill_wait_s = kill_wait_s
        self.root = Path(tempfile.mkdtemp(prefix=f"ads{hosts.token}-", dir="/tmp"))
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge.sock"
        self.node_names = [f"n{host.index}" for host in hosts.hosts]
        self.daemons: dict[str, subprocess.Popen] = {}
        self.hostname = socket.gethostname().split(".")[0]
        self.cluster_name = f"ad{hosts.token}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm clients (and the jobs they submit): the private config, the venv first in PATH."""
        return venv_env({"SLURM_CONF": str(self.conf)})

    def slurm_conf(self) -> str:
        r = self.root
        lines = [
            f"ClusterName={self.cluster_name}",
            # The controller lives in h1; the name must be this machine's hostname, the address is h1's.
            f"SlurmctldHost={self.hostname}({self.hosts[0].ip})",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool-%n",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/slurmctld.log", f"SlurmdLogFile={r}/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill", "MpiDefault=none", "SwitchType=switch/none",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none", "MailProg=/bin/true",
            "ReturnToService=2", f"KillWait={self.kill_wait_s}", "InactiveLimit=0", "MinJobAge=300",
            "SlurmctldTimeout=30", "SlurmdTimeout=30", "SlurmctldDebug=info", "SlurmdDebug=info",
        ]
        gres = ""
        if self.gpus_per_node:
            lines.append("GresTypes=gpu")
            gres = f" Gres=gpu:{self.gpus_per_node}"
        for host, name in zip(self.hosts.hosts, self.node_names):
            lines.append(f"NodeName={name} NodeHostname={self.hostname} NodeAddr={host.ip} "
                         f"CPUs={self.cpus_per_node}{gres} State=UNKNOWN")
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 60.0) -> "PrivateSlurm":
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        (self.root / "state").mkdir()
        self.conf.write_text(self.slurm_conf())
        if self.gpus_per_node:
            devices = self.root / "dev"
            devices.mkdir()
            for index in range(self.gpus_per_node):
                # Slurm wants a character device: a clone of /dev/null (1, 3) is one and harmless.
                os.mknod(devices / f"nvidia{index}", stat.S_IFCHR | 0o666, os.makedev(1, 3))
            (self.root / "gres.conf").write_text(
                f"AutoDetect=off\nName=gpu File={devices}/nvidia[0-{self.gpus_per_node - 1}]\n")
        self._start_munge()
        self._daemon("slurmctld", self.hosts[0].command([_tool("slurmctld"), "-D", "-f", str(self.conf)]))
        for index, name in enumerate(self.node_names):
            self._daemon(f"slurmd-{name}",
                         self.hosts[index].command([_tool("slurmd"), "-D", "-N", name, "-f", str(self.conf)]))
        self.wait_idle(timeout)

    def _start_munge(self) -> None:
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._daemon("munged", [
            _tool("munged"), "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
            f"--log-file={self.root / 'munged.log'}", f"--pid-file={self.root / 'munged.pid'}",
            f"--seed-file={self.root / 'munged.seed'}",
        ])
        deadline = time.monotonic() + 20
        while not self.munge_socket.exists():
            if self.daemons["munged"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start:\n{self.log_tail('munged.log')}")
            time.sleep(0.1)

    def _daemon(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.out", "wb")
        self.daemons[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                              start_new_session=True)

    def run(self, argv: list[str], timeout: float = 60, env: dict[str, str] | None = None,
            cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
        """A Slurm client command, run inside h1 (where the controller is reachable), always under `timeout`."""
        command = ["timeout", "-k", "5", str(int(timeout)), *self.hosts[0].command(argv)]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout + 15,
                              env={**self.env, **(env or {})}, cwd=cwd)

    def popen(self, argv: list[str], timeout: float = 60, env: dict[str, str] | None = None,
              cwd: str | os.PathLike | None = None) -> subprocess.Popen:
        """Like `run`, in the background (e.g. `sbatch --wait` while the test acts on the job)."""
        command = ["timeout", "-k", "5", str(int(timeout)), *self.hosts[0].command(argv)]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**self.env, **(env or {})}, cwd=cwd)

    def node_states(self) -> dict[str, str]:
        result = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=15)
        if result.returncode != 0:
            return {}
        states = {}
        for line in result.stdout.splitlines():
            if line.strip():
                node, state = line.split()
                states[node] = state
        return states

    def wait_idle(self, timeout: float = 60.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            for name, process in self.daemons.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited ({process.returncode}):\n{self.log_tail(name + '.out')}"
                                       f"\n{self.log_tail('slurmctld.log')}")
            states = self.node_states()
            if states and all(states.get(name) == "idle" for name in self.node_names):
                return states
            time.sleep(0.5)
        raise TimeoutError(f"Slurm nodes not idle after {timeout:.0f}s: {states}\n{self.log_tail('slurmctld.log')}")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        try:
            return (self.root / name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            self.run(["scancel", "-u", "root"], timeout=15)
        for name in [n for n in self.daemons if n != "munged"] + ["munged"]:
            process = self.daemons.get(name)
            if process is None or process.poll() is not None:
                continue
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
            except ProcessLookupError:
                pass
        # Job steps (slurmstepd and their tasks) live on in h1/h2: the hosts' teardown ends them by namespace.
        self.hosts.kill_processes_inside()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PrivateSlurm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
