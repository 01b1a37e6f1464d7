"""Student stage on more than one worker: 2 workers (torchrun) equal 1 with the same global batch and resume on 1;
a real Ray Train run survives a SIGKILLed worker and ends with the uninterrupted run's weights. (Its own file so the
suite's workers share the student tests.)"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distill"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from distill_fixtures import NO_DROPOUT, assert_same_weights, fit, make_distill_fixture, student_config, trainable  # noqa: E402,E501
from stage_process import torchrun  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return make_distill_fixture(tmp_path_factory.mktemp("distill"), n_train=160, n_pool=200, n_test=40)


@pytest.mark.slow
def test_two_workers_equal_one_worker_and_resume_on_one(fixture, tmp_path):
    """2 workers with the same global batch take the same optimizer steps as 1 (the gradient all-reduce: without
    it each rank steps on its half of the batch and the weights drift apart), and a checkpoint written by 2 workers
    resumes exactly on 1."""
    from arena_dist.train.launch import make_payload

    one = student_config(fixture, tmp_path / "one", "4bit", model=NO_DROPOUT, max_steps=8, checkpoint_every=4)
    fit(one)
    two = student_config(fixture, tmp_path / "two", "4bit", model=NO_DROPOUT, max_steps=8, checkpoint_every=4,
                         stop_after_steps=4, ray={"enabled": True, "num_workers": 2})
    payload = tmp_path / "two.json"
    payload.write_text(json.dumps(make_payload(two, "student")))
    done = torchrun(payload, 2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    marker = json.loads((tmp_path / "two" / "checkpoints" / "step_0000004" / "COMPLETE").read_text())
    assert marker["world_size"] == 2
    assert_same_weights(trainable(tmp_path / "one", 4), trainable(tmp_path / "two", 4), atol=2e-5)

    # the same run, resumed by one worker: ends where the 1-worker run ended
    resumed = two.model_copy(update={"ray": two.ray.model_copy(update={"enabled": False}),
                                     "training": two.training.model_copy(update={"stop_after_steps": None})})
    _, summary = fit(resumed)
    assert summary["resumed_from"] == "step_0000004" and summary["world_size"] == 1 and summary["finished"]
    a = load_file(str(tmp_path / "one" / "export" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "two" / "export" / "adapter_model.safetensors"))
    assert_same_weights(a, b, atol=5e-5)


@pytest.mark.slow
def test_killed_ray_worker_resumes_exactly(fixture, tmp_path):
    """Ray Train with 2 workers through the CLI in a fresh process (as `ray job submit` runs it); rank 1 is
    SIGKILLed after the first checkpoint; FailureConfig restarts the group, which resumes from that checkpoint and
    ends with the weights of an uninterrupted 1-worker run."""
    from arena_dist.config import save_resolved_config

    reference = student_config(fixture, tmp_path / "ref", "4bit", model=NO_DROPOUT, max_steps=12)
    fit(reference)
    cfg = student_config(fixture, tmp_path / "run", "4bit", model=NO_DROPOUT, max_steps=12, checkpoint_every=3,
                         ray={"enabled": True, "num_workers": 2, "cpus_per_worker": 1, "max_failures": 1})
    config_file = save_resolved_config(cfg, tmp_path, "student.yaml")
    result: dict = {}
    command = [sys.executable, "-m", "arena_dist.cli", "student", "--config", str(config_file)]
    job = threading.Thread(target=lambda: result.update(done=subprocess.run(
        command, capture_output=True, text=True, timeout=900, cwd=REPO)))
    job.start()
    marker = tmp_path / "run" / "checkpoints" / "step_0000003" / "COMPLETE"
    deadline = time.monotonic() + 600
    while not marker.exists() and time.monotonic() < deadline and job.is_alive():
        time.sleep(0.2)
    assert marker.exists(), "the first checkpoint never completed"
    victim = json.loads((tmp_path / "run" / "workers" / "rank1.json").read_text())["pid"]
    os.kill(victim, signal.SIGKILL)
    job.join(timeout=900)
    done = result["done"]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["finished"] and summary["resumed_from"].startswith("step_")
    assert json.loads((tmp_path / "run" / "workers" / "rank1.json").read_text())["pid"] != victim
    assert summary["counts"]["used"] == summary["counts"]["train_rows"] + summary["counts"]["pool_rows"]
    assert (tmp_path / "run" / "resolved_config.yaml").exists()
    a = load_file(str(tmp_path / "ref" / "export" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "run" / "export" / "adapter_model.safetensors"))
    assert_same_weights(a, b, atol=5e-5)
