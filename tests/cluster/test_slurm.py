"""The sbatch launcher on a real two-node Slurm (slurmctld + 2 slurmd in two network-namespace hosts)."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.multihost]

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = "launch/slurm/arena_dist.sbatch"
PROBE = "tests/cluster/jobs/probe_cluster.py"


def sbatch_command(tmp_path: Path, args: list[str], extra: list[str] = (),
                   launcher: str = LAUNCHER) -> tuple[list[str], dict[str, str]]:
    env = {"ARENA_NODE_IFNAME": "eth0", "ARENA_LOG_DIR": str(tmp_path / "logs"), "ARENA_JOIN_TIMEOUT": "120",
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = ["sbatch", "--wait", "--nodes=2", "--exclusive", f"--output={tmp_path / 'job.out'}", *extra, launcher,
               *args]
    return command, env


def sbatch(slurm, tmp_path: Path, args: list[str], extra: list[str] = (), timeout: float = 240,
           launcher: str = LAUNCHER):
    """`sbatch --wait` the launcher from the repository root; returns (completed process, job output text)."""
    output = tmp_path / "job.out"
    command, env = sbatch_command(tmp_path, args, extra, launcher)
    result = slurm.run(command, timeout=timeout, env=env, cwd=REPO)
    text = output.read_text(errors="replace") if output.exists() else ""
    return result, text


def ray_processes_left(slurm, timeout: float = 30.0) -> list[str]:
    """Command lines of Ray processes still alive in the hosts, waiting up to `timeout` for them to end."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for pid in slurm.hosts.processes_inside():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "ray" in cmdline.lower() and "slurm" not in cmdline.split(" ")[0]:
                left.append(cmdline[:200])
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1)


def test_launcher_brings_up_ray_on_both_nodes_and_runs_the_job(slurm_cluster, tmp_path):
    report_path = tmp_path / "report.json"
    result, log = sbatch(slurm_cluster, tmp_path, [PROBE, str(report_path), "0"], extra=["--gpus-per-node=2"])
    assert result.returncode == 0, (result.stdout, result.stderr, log[-4000:])
    report = json.loads(report_path.read_text())
    # One Ray node per Slurm node, each on its own address, and a task pinned to each ran there.
    assert report["nodes"] == ["10.200.0.1", "10.200.0.2"]
    assert sorted((p["ip"], p["node"]) for p in report["placed"]) == [("10.200.0.1", "n1"), ("10.200.0.2", "n2")]
    assert all(p["gloo"] == "eth0" and p["nccl"] == "eth0" for p in report["placed"])
    # Every GPU of every node reaches Ray, and concurrent one-GPU tasks on a node get different ids (not all GPU 0).
    assert report["gpus_per_node"] == [2, 2]
    ids_by_node: dict[str, list[str]] = {}
    for task in report["gpu_tasks"]:
        assert len(task["ray"]) == 1 and task["cuda_visible_devices"] == str(task["ray"][0])
        ids_by_node.setdefault(task["node"], []).append(task["cuda_visible_devices"])
    assert {node: sorted(ids) for node, ids in ids_by_node.items()} == {"n1": ["0", "1"], "n2": ["0", "1"]}
    assert "stage finished with exit code 0" in log
    assert ray_processes_left(slurm_cluster) == []
    job_id = result.stdout.split()[-1]
    assert not list(Path("/tmp").glob(f"ray-{slurm_cluster.cluster_name}-{job_id}-*"))  # node temp dirs removed


def test_failing_job_fails_the_slurm_job_with_its_exit_code(slurm_cluster, tmp_path):
    report_path = tmp_path / "report.json"
    result, log = sbatch(slurm_cluster, tmp_path, [PROBE, str(report_path), "7"])
    assert report_path.exists(), log[-4000:]  # the job did run ...
    assert result.returncode == 7, (result.stdout, result.stderr, log[-4000:])  # ... and its exit code came through
    assert "stage finished with exit code 7" in log
    assert ray_processes_left(slurm_cluster) == []


def test_launcher_rejects_an_unknown_stage_before_allocating_ray(slurm_cluster, tmp_path):
    result, log = sbatch(slurm_cluster, tmp_path, ["no_such_stage", "x.yaml"], timeout=60)
    assert result.returncode == 2
    assert "unknown stage 'no_such_stage'" in log


def test_launcher_runs_the_label_stage_across_both_nodes(slurm_cluster, tmp_path):
    """`sbatch --gpus-per-node=2 launch/slurm/label.sbatch label.yaml` (the per-stage wrapper, its 8-GPU default
    overridden on the command line): one teacher actor per node, every id labelled exactly once."""
    from arena_dist.label.store import input_shards, load_store_manifest, read_input_ids, read_labels
    from tiny_fixtures import make_pool_dataset, make_teacher_export

    pool = make_pool_dataset(tmp_path / "pool", n_rows=240, num_shards=8)
    export = make_teacher_export(tmp_path / "teacher", max_length=256)
    label_yaml = tmp_path / "label.yaml"
    label_yaml.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "labels"),
        "input": {"dataset_dir": str(pool), "split": "pool"},
        "teachers": [{"id": "tiny", "export_path": str(export)}],
        "batching": {"max_tokens": 1024},
        "ray": {"num_actors": 2, "cpus_per_actor": 2, "threads_per_actor": 1},  # one actor per node
    }))
    result, log = sbatch(slurm_cluster, tmp_path, [str(label_yaml)], extra=["--gpus-per-node=2"], timeout=300,
                         launcher="launch/slurm/label.sbatch")
    assert result.returncode == 0, (result.stderr, log[-5000:])
    store = tmp_path / "labels" / "tiny"
    ids = read_labels(store).column("id").to_pylist()
    expected = [i for shard in input_shards(pool, "pool") for i in read_input_ids(shard.path)]
    assert len(ids) == len(set(ids)) == 240 and sorted(ids) == sorted(expected)
    assert load_store_manifest(store)["rows"] == 240
    assert "labelled exactly once" in log
    assert ray_processes_left(slurm_cluster) == []


def test_preempted_zero3_teacher_across_both_nodes_is_requeued_and_resumes(slurm_cluster, tmp_path):
    """`sbatch --nodes=2 arena_dist.sbatch teacher launch/configs/teacher_tiny.yaml --set ...`: one ZeRO-3 rank per
    Slurm node, the `--set` overrides travelling through the launcher unchanged. `scontrol requeue` mid-run (what
    preemption does to a --requeue job): the launcher tears the cluster down on SIGTERM, Slurm starts the job again
    (SLURM_RESTART_COUNT=1), and the teacher resumes from its last complete checkpoint instead of starting over, then
    exports."""
    sys.path.insert(0, str(REPO / "tests" / "train"))
    from teacher_fixtures import make_dataset

    make_dataset(tmp_path, rows=96)
    runs = tmp_path / "runs"
    overrides = [f"data.dataset_dir={tmp_path / 'dataset'}", "data.num_folds=4", f"ray.storage_path={runs}",
                 "output.run_name=preempted", "format.max_length=128", "training.global_batch=8",
                 "training.micro_batch=2", "training.max_steps=12", "training.epochs=3", "training.log_every=1",
                 "training.eval_every=null", "training.checkpoint_every=4",
                 # 2 CPUs per worker on nodes of 2 CPUs: one rank per node, the two talking gloo over eth0.
                 "ray.cpus_per_worker=2", "ray.max_failures=0"]
    args = ["teacher", "launch/configs/teacher_tiny.yaml", *[part for o in overrides for part in ("--set", o)]]
    run_dir = tmp_path / "runs" / "preempted"
    command, env = sbatch_command(tmp_path, args)
    waiting = slurm_cluster.popen(command, timeout=480, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 300
        while not list(run_dir.glob("checkpoints/step_*/COMPLETE")):
            assert waiting.poll() is None, waiting.stdout.read()
            assert time.monotonic() < deadline, "no complete checkpoint"
            time.sleep(0.2)
        assert not (run_dir / "summary.json").exists(), "the run ended before it could be preempted"
        job_id = slurm_cluster.run(["squeue", "-h", "-o", "%i"]).stdout.split()[0]
        requeue = slurm_cluster.run(["scontrol", "requeue", job_id])
        assert requeue.returncode == 0, requeue.stderr
        # Slurm holds a requeued job back for 120 s (BeginTime); a real preemption waits for free nodes anyway.
        deadline = time.monotonic() + 60
        while "BeginTime" not in slurm_cluster.run(["squeue", "-h", "-j", job_id, "-o", "%r"]).stdout:
            assert time.monotonic() < deadline, slurm_cluster.run(["squeue"]).stdout
            time.sleep(0.5)
        update = slurm_cluster.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])
        assert update.returncode == 0, update.stderr
        output, _ = waiting.communicate(timeout=420)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    log = (tmp_path / "job.out").read_text(errors="replace")
    assert waiting.returncode == 0, (output, log[-5000:])
    assert f"job {job_id} attempt 0" in log and f"job {job_id} attempt 1" in log
    assert "SIGTERM (scancel, preemption or time limit): tearing down" in log
    assert "stage finished with exit code 0" in log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["world_size"] == 2
    assert summary["resumed_from"] and summary["resumed_from"].startswith("step_")  # not a fresh start
    assert list(Path(summary["export_dir"]).glob("*.safetensors"))
    ranks = re.findall(r"ip=(10\.200\.0\.\d+).*?world_rank=(\d)", log)
    assert {ip for ip, _ in ranks} == {"10.200.0.1", "10.200.0.2"}, log[-5000:]
    attempts = {json.loads(line)["attempt"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                if "attempt" in line}
    assert len(attempts) == 2
    assert ray_processes_left(slurm_cluster) == []
