"""Small helpers the SLURM launcher calls around `ray start` / `ray job submit`.

    python cluster/slurm/ray_cluster.py wait-gcs   HOST PORT TIMEOUT_S
    python cluster/slurm/ray_cluster.py wait-nodes GCS_ADDRESS COUNT TIMEOUT_S
    python cluster/slurm/ray_cluster.py exit-code  DASHBOARD_URL SUBMISSION_ID

`wait-nodes` asks the GCS directly (no dashboard needed) and prints progress; `exit-code` prints the job driver's
exit status (0 when the job succeeded), so the sbatch launcher can pass the stage's own exit code on.
Standard library + Ray only; never imports arena_dist.
"""

from __future__ import annotations

import socket
import sys
import time


def wait_gcs(host: str, port: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2):
                return 0
        except OSError:
            time.sleep(1)
    print(f"ray_cluster: GCS {host}:{port} not reachable after {timeout:.0f}s", file=sys.stderr)
    return 1


def alive_node_ips(gcs_address: str) -> list[str]:
    """Node IPs the cluster reports alive (public API: a driver connected to the cluster, `ray.nodes()`)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=gcs_address, logging_level="ERROR", log_to_driver=False)
    return sorted(node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"])


def wait_nodes(gcs_address: str, count: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    alive: list[str] = []
    last = -1
    while time.monotonic() < deadline:
        try:
            alive = alive_node_ips(gcs_address)
        except Exception as err:  # the GCS may still be starting: retry until the deadline
            print(f"ray_cluster: waiting for the GCS ({type(err).__name__})", file=sys.stderr)
        if len(alive) != last:
            print(f"ray_cluster: {len(alive)}/{count} nodes alive after {time.monotonic() - start:.0f}s: "
                  f"{' '.join(alive)}", file=sys.stderr, flush=True)
            last = len(alive)
        if len(alive) >= count:
            return 0
        time.sleep(2)
    print(f"ray_cluster: only {len(alive)}/{count} nodes joined within {timeout:.0f}s", file=sys.stderr)
    return 1


def exit_code(dashboard_url: str, submission_id: str) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    info = JobSubmissionClient(dashboard_url).get_job_info(submission_id)
    if info.status == JobStatus.SUCCEEDED:
        code = 0
    elif info.driver_exit_code not in (None, 0):
        code = int(info.driver_exit_code)
    else:  # stopped, or failed before the driver ran (runtime env setup, ...)
        code = 1
    print(f"ray_cluster: job {submission_id} {info.status} (driver exit code {info.driver_exit_code})",
          file=sys.stderr)
    print(code)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "wait-gcs":
        return wait_gcs(argv[1], int(argv[2]), float(argv[3]))
    if len(argv) == 4 and argv[0] == "wait-nodes":
        return wait_nodes(argv[1], int(argv[2]), float(argv[3]))
    if len(argv) == 3 and argv[0] == "exit-code":
        return exit_code(argv[1], argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
