"""Run a stage through the CLI in a fresh Python process, as `ray job submit` does, and return its summary; or the
training loop's ranks under torchrun (`torchrun`).

Ray Train fits started in-process after an earlier Ray session in the same process can have their TrainController
cancelled; a fresh process per stage run is also what real use looks like.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from arena_dist.config import save_resolved_config


def run_stage(stage: str, config, workdir, timeout: float = 900) -> dict:
    config_file = save_resolved_config(config, workdir, f"{stage}.yaml")
    summary_file = workdir / f"{stage}_summary.json"
    done = subprocess.run([sys.executable, "-m", "arena_dist.cli", stage, "--config", str(config_file)],
                          env={**os.environ, "ARENA_DIST_SUMMARY": str(summary_file)},
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(summary_file.read_text())


def torchrun(payload_file: Path, nproc: int, timeout: float = 600) -> subprocess.CompletedProcess:
    """`torchrun` of `arena_dist.train.loop` on one payload file: the ranks a Ray worker group would run."""
    from arena_dist.ray_local import free_port

    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--node-rank=0",
               "--master-addr=127.0.0.1", f"--master-port={free_port()}", f"--nproc-per-node={nproc}",
               "-m", "arena_dist.train.loop", str(payload_file)]
    return subprocess.run(command, cwd=Path(__file__).resolve().parents[2],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=timeout)
