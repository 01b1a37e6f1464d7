"""Reaching Ray: a local Ray head started and stopped by arena_dist itself (demo, tests, single box), and
`ray_session` / `connect_ray`, how every stage's driver connects (to $RAY_ADDRESS under `ray job submit`, else to a
private in-process Ray).

Every port is chosen free at start, the temp dir is private, the dashboard binds 127.0.0.1, the cluster runs with
Ray's token authentication (clients get the token from `client_env()`; jobs are submitted through Ray's job API with
it), and `stop()` ends only the processes this head started (its process group plus anything whose command line
names its temp dir): never a host-wide `ray stop`, which would kill other people's clusters on the same host.

Ray reads its auth settings (RAY_AUTH_MODE, RAY_AUTH_TOKEN) once per process, when it is imported, and offers no
public way to re-read them: a process that joins a cluster with `ray.init` must have them in its environment
before it imports Ray (a `ray job submit` driver inherits them from the head).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free right now: all sockets stay bound until every port is chosen, so the kernel
    cannot hand the same port out twice (one at a time, a just-closed port may come back on the next call)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def free_port() -> int:
    return free_ports(1)[0]


# Ray's own ports besides the GCS and the dashboard; each is chosen free at start, never left to Ray's defaults.
_COMPONENT_PORTS = ("ray-client-server", "dashboard-agent-grpc", "dashboard-agent-listen", "metrics-export",
                    "runtime-env-agent", "node-manager", "object-manager")


def ray_executable() -> str:
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else "ray"


def processes_mentioning(marker: str) -> list[int]:
    """Pids whose command line contains `marker` (our unique temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(entry.name))
    return pids


class HeadExitedEarly(RuntimeError):
    """The `ray start` process ended before the head was ready; the message holds its log's tail."""


class LocalRayHead:
    """`with LocalRayHead(num_cpus=2) as head:` -> `head.address`, `head.dashboard_url`."""

    def __init__(
        self, num_cpus: int | None = None, num_gpus: int | None = None, dashboard: bool = True,
        temp_root: str | os.PathLike | None = None, node_ip: str = "127.0.0.1", env: dict[str, str] | None = None,
        resources: dict[str, float] | None = None, auth_token: str | None = None,
    ):
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.dashboard = dashboard
        self.node_ip = node_ip
        self.extra_env = dict(env or {})
        self.resources = resources
        # Unix socket paths must stay short (< 108 bytes): a short private dir under /tmp, not the test's tmp_path.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ad-ray-", dir=temp_root or "/tmp"))
        self._choose_ports()
        self.process: subprocess.Popen | None = None
        # A token set explicitly: left unset, Ray turns token auth on by itself whenever a host-wide
        # ~/.ray/auth_token exists (any earlier local `ray.init()` writes one) and clients without it are refused.
        # The one in $RAY_AUTH_TOKEN when there is one: Ray reads a process's token once, so a process that
        # connects to heads with `ray.init` can only use one token; else a private one.
        self.auth_token = auth_token or os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32)

    def _choose_ports(self) -> None:
        self.gcs_port, self.dashboard_port, *component = free_ports(2 + len(_COMPONENT_PORTS))
        self.component_ports = dict(zip(_COMPONENT_PORTS, component))

    def client_env(self) -> dict[str, str]:
        """Environment a client (ray job submit, ray.init, a worker node) needs to talk to this head."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.auth_token}

    @property
    def address(self) -> str:
        return f"{self.node_ip}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def command(self) -> list[str]:
        cmd = [
            ray_executable(), "start", "--head", "--block", "--disable-usage-stats",
            f"--node-ip-address={self.node_ip}", f"--port={self.gcs_port}",
            f"--temp-dir={self.temp_dir}",
            *(f"--{name}-port={port}" for name, port in self.component_ports.items()),
        ]
        if self.dashboard:
            cmd += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}"]
        else:
            cmd += ["--include-dashboard=false"]
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        if self.num_gpus is not None:
            cmd.append(f"--num-gpus={self.num_gpus}")
        if self.resources:
            cmd.append(f"--resources={json.dumps(self.resources)}")
        return cmd

    def start(self, timeout: float = 90.0, attempts: int = 3) -> "LocalRayHead":
        """Start the head. A head that exits during start-up is started again with fresh ports, up to `attempts`
        times. The causes seen: a lost port race (another process, e.g. a second head started by a parallel test
        worker, bound one of the chosen free ports before Ray did), and on a busy machine Ray's raylet aborting when
        its dashboard agent takes longer than a fixed 15 s to start (ray-project/ray#65983)."""
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **self.extra_env, **self.client_env()}
        # Jobs run `python ...` from the head's PATH: make that this interpreter's environment (the project venv).
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        for attempt in range(1, attempts + 1):
            with open(self.temp_dir / "head.log", "wb") as log:
                self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True)
            try:
                self._wait_ready(timeout)
                return self
            except HeadExitedEarly:
                if attempt == attempts:
                    raise
                self._end_leftovers()
                self._choose_ports()
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise HeadExitedEarly(f"ray head exited early; see {self.temp_dir / 'head.log'}:\n{self.log_tail()}")
            if self._gcs_up() and raylet_started(self.temp_dir) and (not self.dashboard or self._dashboard_up()):
                return
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ray head not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def _gcs_up(self) -> bool:
        try:
            with socket.create_connection((self.node_ip, self.gcs_port), timeout=1):
                return True
        except OSError:
            return False

    def _dashboard_up(self) -> bool:
        try:
            request = urllib.request.Request(f"{self.dashboard_url}/api/version",
                                             headers={"Authorization": f"Bearer {self.auth_token}"})
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return (self.temp_dir / "head.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 6.0) -> None:
        """End this head's processes only: its process group, then anything still naming its temp dir."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._end_leftovers()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _end_leftovers(self) -> None:
        marker = str(self.temp_dir)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = processes_mentioning(marker)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if pids:
                time.sleep(1.0)

    def __enter__(self) -> "LocalRayHead":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def submit_job(
    head: LocalRayHead | str, entrypoint: list[str], working_dir: str | os.PathLike | None = None,
    env: dict[str, str] | None = None, timeout: float | None = None, log_path: str | os.PathLike | None = None,
    echo: bool = False,
) -> subprocess.CompletedProcess:
    """Submit a job to a dashboard (`ray.job_submission.JobSubmissionClient`) and wait for it; the returned exit
    status is the job driver's (1 for a job that failed without one, e.g. a runtime env that could not be built).

    The job's log is captured (returned as stdout), appended to `log_path` if given, and echoed as it arrives when
    `echo` is set (the demo streams it). `env` goes into the job's runtime env, which the dashboard and the job
    API show to anyone who can reach them: never a secret there; the job inherits the head's environment, and
    arena_dist.worker_env hands the hub token on to its workers. Past `timeout` the job is stopped and
    `subprocess.TimeoutExpired` raised; an interrupt (Ctrl-C) stops the job too.
    """
    import shlex

    from ray.job_submission import JobSubmissionClient

    from arena_dist.worker_env import SECRET_ENV

    secrets = sorted(set(env or {}) & set(SECRET_ENV))
    if secrets:
        raise ValueError(f"submit_job: {secrets[0]} would be visible in the job's runtime env; set it in the "
                         "environment of the Ray head instead")
    dashboard_url = head.dashboard_url if isinstance(head, LocalRayHead) else head
    with _quiet_ray_client():
        client = JobSubmissionClient(dashboard_url, headers=auth_headers(head))
    runtime_env: dict = {}
    if working_dir is not None:
        runtime_env["working_dir"] = str(working_dir)
    if env:
        runtime_env["env_vars"] = dict(env)
    command = shlex.join(entrypoint)
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    chunks: list[str] = []
    with open(log_path, "a") if log_path else contextlib.nullcontext() as log:

        def emit(text: str) -> None:
            chunks.append(text)
            if log is not None:
                log.write(text)
                log.flush()
            if echo:
                print(text, end="", flush=True)

        with _quiet_ray_client():
            job_id = client.submit_job(entrypoint=command, runtime_env=runtime_env or None)
        emit(f"job {job_id} submitted to {dashboard_url}: {command}\n")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with _quiet_ray_client():
                asyncio.run(asyncio.wait_for(_tail_logs(client, job_id, emit), timeout))
            info = _final_info(client, job_id, deadline)
        except BaseException as err:
            with contextlib.suppress(Exception):  # the head may be gone already (Ctrl-C stops it too)
                client.stop_job(job_id)
            if isinstance(err, asyncio.TimeoutError):
                raise subprocess.TimeoutExpired(entrypoint, timeout, output="".join(chunks)) from None
            raise
        code = info.driver_exit_code if info.driver_exit_code is not None else int(info.status != "SUCCEEDED")
        emit(f"job {job_id} {info.status.lower()} (exit {code})" + (f": {info.message}" if info.message and code
                                                                     else "") + "\n")
    return subprocess.CompletedProcess(entrypoint, code, stdout="".join(chunks), stderr="")


@contextmanager
def _quiet_ray_client() -> Iterator[None]:
    """Ray's job client logs each file it leaves out of the working-dir package and each closed log stream: noise
    around the job's own log in the console. Errors still show."""
    import logging

    names = ["ray", *(name for name in list(logging.root.manager.loggerDict) if name.startswith("ray."))]
    loggers = [logging.getLogger(name) for name in names]  # some of Ray's modules set a level of their own
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


async def _tail_logs(client, job_id: str, emit) -> None:
    """Every log chunk of the job as it arrives, until the job ends."""
    async for chunk in client.tail_job_logs(job_id):
        emit(chunk)


def _final_info(client, job_id: str, deadline: float | None):
    """The job's info once its status is terminal (the log stream can end a moment before the status is set);
    asyncio.TimeoutError past `deadline` (monotonic time)."""
    while True:
        info = client.get_job_info(job_id)
        if info.status.is_terminal():
            return info
        if deadline is not None and time.monotonic() > deadline:
            raise asyncio.TimeoutError
        time.sleep(0.2)


def auth_headers(head: LocalRayHead | str) -> dict[str, str]:
    """The bearer token for a dashboard: the LocalRayHead's own, else the one in $RAY_AUTH_TOKEN /
    $RAY_AUTH_TOKEN_PATH (none: Ray's own defaults apply)."""
    token = head.auth_token if isinstance(head, LocalRayHead) else os.environ.get("RAY_AUTH_TOKEN")
    if not token and os.environ.get("RAY_AUTH_TOKEN_PATH"):
        token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser().read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextmanager
def ray_session(address: str | None = None, local_num_cpus: int | None = None) -> Iterator[str]:
    """Connect to Ray for the length of a run.

    Already initialised (a test, a notebook): used as is and left running. `address` (or `$RAY_ADDRESS`, which
    `ray job submit` sets): join that cluster. Neither, or "local": a private single-node Ray with its own temp dir
    and no dashboard, shut down at the end — never `address="auto"`, which could join someone else's cluster.
    """
    import ray

    if ray.is_initialized():
        yield "existing"
        return
    address = address or os.environ.get("RAY_ADDRESS")
    temp_dir = None
    if address and address != "local":
        connect_ray(address)
        where = address
    else:
        _private_auth_token()
        temp_dir = tempfile.mkdtemp(prefix="ad-ray-", dir="/tmp")  # short: Ray's unix sockets live here
        ray.init(num_cpus=local_num_cpus, include_dashboard=False, _temp_dir=temp_dir)
        where = "local"
    try:
        yield where
    finally:
        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _private_auth_token() -> None:
    """Token auth for the private local Ray, with a token that lives in this process's environment only.

    Left alone, a local `ray.init()` turns token auth on and writes a new token to ~/.ray/auth_token: a file shared
    by everyone on the host, which then switches every later `ray start` there into token mode while their clients
    lack the token. With RAY_AUTH_TOKEN set, `ray.init()` turns token auth on with that token and writes no file.
    Only the token is set, not RAY_AUTH_MODE: Ray reads the mode once, at import, and switches it on itself when it
    starts a local cluster. An explicit RAY_AUTH_MODE / token from the user is respected."""
    if any(os.environ.get(key) for key in AUTH_ENV):
        return
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def raylet_started(temp_dir: str | Path) -> bool:
    """Whether the raylet of the Ray node whose `--temp-dir` is `temp_dir` got past its start-up: it logs "Raylet
    of id ... started" only after its dashboard agent reported in. Until then the node can still abort (the agent's
    fixed 15 s start-up wait, ray-project/ray#65983), so the GCS port alone does not make a usable node."""
    log = Path(temp_dir) / "session_latest" / "logs" / "raylet.out"
    try:
        with open(log, "rb") as handle:
            return any(line.startswith(b"[") and b"Raylet of id" in line and b" started" in line
                       for line in handle)
    except OSError:
        return False


def connect_ray(address: str, env: dict[str, str] | None = None, **init_kwargs) -> None:
    """`ray.init(address=...)` with the auth settings of the environment (plus `env`, e.g. a LocalRayHead's
    `client_env()`: RAY_AUTH_MODE / RAY_AUTH_TOKEN).

    Ray reads its auth settings once per process, when it is first imported, and has no public way to re-read them:
    auth settings in `env` that differ from the environment are refused once Ray is imported (set them before, as
    `ray job submit` and a fresh driver process do)."""
    changed = sorted(key for key, value in (env or {}).items() if key in AUTH_ENV and os.environ.get(key) != value)
    if changed and "ray" in sys.modules:
        raise RuntimeError(f"connect_ray: {', '.join(changed)} must be set before Ray is imported in this process "
                           "(Ray reads its auth settings once, at import)")
    os.environ.update(env or {})
    import ray

    ray.init(address=address, **init_kwargs)
