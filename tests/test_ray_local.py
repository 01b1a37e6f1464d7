import pytest

from arena_dist.ray_local import LocalRayHead, processes_mentioning, submit_job


@pytest.mark.slow
def test_local_head_runs_a_job_and_stops_only_its_processes():
    head = LocalRayHead(num_cpus=1)
    head.start()
    try:
        assert processes_mentioning(str(head.temp_dir)), "head processes should be running"
        script = "import ray; ray.init(); print('CPUS', ray.cluster_resources()['CPU'])"
        done = submit_job(head, ["python", "-c", script], timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "CPUS 1.0" in done.stdout
        failed = submit_job(head, ["python", "-c", "raise SystemExit(3)"], timeout=180)
        assert failed.returncode != 0
    finally:
        marker = str(head.temp_dir)
        head.stop()
    assert processes_mentioning(marker) == []
