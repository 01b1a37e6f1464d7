import subprocess
import time

import pytest

from arena_dist.ray_local import LocalRayHead, processes_mentioning, raylet_started, submit_job


@pytest.mark.slow
def test_local_head_runs_a_job_and_stops_only_its_processes():
    head = LocalRayHead(num_cpus=1)
    head.start()
    try:
        assert processes_mentioning(str(head.temp_dir)), "head processes should be running"
        assert raylet_started(head.temp_dir)  # what start() waited for, beside the GCS port
        script = "import ray; ray.init(); print('CPUS', ray.cluster_resources()['CPU'])"
        done = submit_job(head, ["python", "-c", script], timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "CPUS 1.0" in done.stdout
        failed = submit_job(head, ["python", "-c", "raise SystemExit(3)"], timeout=180)
        assert failed.returncode == 3
    finally:
        marker = str(head.temp_dir)
        head.stop()
    assert processes_mentioning(marker) == []


def test_raylet_counts_as_started_only_once_it_says_so(tmp_path):
    """A node whose GCS port is open can still abort while its raylet waits for the dashboard agent
    (ray-project/ray#65983): it is ready only after the raylet's own "started" line."""
    logs = tmp_path / "session_latest" / "logs"
    assert not raylet_started(tmp_path)  # no session yet
    logs.mkdir(parents=True)
    (logs / "raylet.out").write_text("[2026-12-02 17:54:03,746 I 1 1] (raylet) agent_manager.cc:81: Monitor agent "
                                     "process with name dashboard_agent\n")
    assert not raylet_started(tmp_path)
    with open(logs / "raylet.out", "a") as log:
        log.write("[2026-12-02 17:54:04,856 I 1 1] (raylet) node_manager.cc:355: Raylet of id, f3de started. "
                  "Raylet consists of node_manager and object_manager.\n")
    assert raylet_started(tmp_path)


@pytest.mark.slow
def test_job_api_submission_env_logs_timeout_and_token(tmp_path, capsys):
    """Through JobSubmissionClient: env vars reach the job, its log is streamed, captured and appended to a file, a
    job past its timeout is stopped, a secret is refused in the runtime env, and a client without the head's token
    is turned away."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    head = LocalRayHead(num_cpus=1, auth_token="a" * 64)
    head.start()
    try:
        log = tmp_path / "logs" / "job.log"
        script = "import os, sys; print('VALUE', os.environ['AD_TEST_VALUE']); print('to stderr', file=sys.stderr)"
        done = submit_job(head, ["python", "-c", script], env={"AD_TEST_VALUE": "x y"}, log_path=log, echo=True,
                          timeout=180)
        assert done.returncode == 0, done.stdout
        assert "VALUE x y" in done.stdout and "to stderr" in done.stdout
        assert log.read_text() == done.stdout and "VALUE x y" in capsys.readouterr().out
        assert "succeeded (exit 0)" in done.stdout.splitlines()[-1]

        with pytest.raises(subprocess.TimeoutExpired):
            submit_job(head, ["python", "-c", "import time; print('sleeping', flush=True); time.sleep(600)"],
                       timeout=15)
        client = JobSubmissionClient(head.dashboard_url, headers={"Authorization": f"Bearer {head.auth_token}"})
        sleeper = max(client.list_jobs(), key=lambda job: job.start_time or 0).submission_id
        deadline = time.monotonic() + 60
        while client.get_job_status(sleeper) == JobStatus.RUNNING and time.monotonic() < deadline:
            time.sleep(0.5)
        assert client.get_job_status(sleeper) == JobStatus.STOPPED  # stopped, not left running

        with pytest.raises(ValueError, match="HF_TOKEN"):
            submit_job(head, ["python", "-c", "pass"], env={"HF_TOKEN": "hf_x"})
        with pytest.raises(Exception):
            JobSubmissionClient(head.dashboard_url, headers={"Authorization": "Bearer " + "b" * 64}).list_jobs()
    finally:
        head.stop()


def test_auth_settings_cannot_change_once_ray_is_imported(monkeypatch):
    """Ray reads RAY_AUTH_MODE / RAY_AUTH_TOKEN once per process: a different token later is refused up front, not
    left to fail as an opaque authentication error inside ray.init."""
    import os

    import ray  # noqa: F401  (imported, as in any test process by now)

    from arena_dist.ray_local import auth_headers, connect_ray

    before = dict(os.environ)
    with pytest.raises(RuntimeError, match="RAY_AUTH_TOKEN must be set before Ray is imported"):
        connect_ray("127.0.0.1:1", {"RAY_AUTH_TOKEN": "c" * 64})
    assert dict(os.environ) == before
    head = LocalRayHead(num_cpus=1, auth_token="d" * 64)
    try:
        assert auth_headers(head) == {"Authorization": "Bearer " + "d" * 64}
        monkeypatch.setenv("RAY_AUTH_TOKEN", "e" * 64)
        assert auth_headers("http://127.0.0.1:1") == {"Authorization": "Bearer " + "e" * 64}
        other = LocalRayHead(num_cpus=1)
        other.stop()  # never started: removes its temp dir
        assert other.auth_token == "e" * 64  # one token per process: the environment's
    finally:
        head.stop()


def test_free_ports_are_distinct():
    from arena_dist.ray_local import free_ports

    for _ in range(20):
        ports = free_ports(9)
        assert len(set(ports)) == 9


def test_head_that_loses_a_port_race_is_retried_with_fresh_ports():
    """The first `ray start` gets two components on one port (what a parallel test worker's head, or two free-port
    draws that happen to agree, does to it): Ray refuses and exits; the head is started again with fresh ports."""

    class UnluckyHead(LocalRayHead):
        draws = 0

        def _choose_ports(self):
            super()._choose_ports()
            UnluckyHead.draws += 1
            if UnluckyHead.draws == 1:
                self.component_ports["runtime-env-agent"] = self.component_ports["ray-client-server"]

    head = UnluckyHead(num_cpus=1, dashboard=False)
    try:
        head.start(timeout=90)
        assert UnluckyHead.draws == 2 and head.process.poll() is None
        assert len(set(head.component_ports.values())) == len(head.component_ports)
    finally:
        head.stop()
