"""The driver's HF_TOKEN / HF_HOME reach every Ray worker and actor (label actors, teacher and student Ray Train
workers), while the token stays out of runtime envs, payloads, saved configs and command lines."""

import json
import os
import pickle
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from arena_dist.worker_env import (FORWARDED_ENV, SECRET_ENV, SECRETS_KEY, SecretEnv, patched_environment,
                                   plain_env, with_secrets)

REPO = Path(__file__).resolve().parents[1]


def new_token() -> str:
    return "hf_" + secrets.token_hex(20)


def ray_train_state_view(payload: dict) -> str:
    """What Ray Train keeps of a train_loop_config in its state API (dashboard, export events)."""
    from ray.train.v2._internal.state.schema import _to_json_serializable_value

    return json.dumps(_to_json_serializable_value(payload))


def test_secret_env_never_shows_its_values(monkeypatch):
    token = new_token()
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HF_HOME", "/shared/hf")
    held = SecretEnv.from_environ()
    assert set(SECRET_ENV) <= set(FORWARDED_ENV) and "HF_HOME" in FORWARDED_ENV
    assert plain_env()["HF_HOME"] == "/shared/hf" and "HF_TOKEN" not in plain_env()
    assert token not in repr(held) and token not in str(held) and token not in f"{[held]}"
    with pytest.raises(TypeError):
        json.dumps({"secrets": held})
    monkeypatch.delenv("HF_TOKEN")
    pickle.loads(pickle.dumps(held)).apply()  # how Ray hands it over
    assert os.environ["HF_TOKEN"] == token


def test_patched_environment_sets_and_restores_only_its_keys(monkeypatch):
    """No other key is ever unset (a whole-environment clear and refill would leave other threads an empty one)."""
    monkeypatch.setenv("ARENA_KEPT", "1")
    monkeypatch.setenv("ARENA_CHANGED", "old")
    monkeypatch.delenv("ARENA_NEW", raising=False)
    unset, real_unsetenv = [], os.unsetenv
    monkeypatch.setattr(os, "unsetenv", lambda key: (unset.append(os.fsdecode(key)), real_unsetenv(key)))
    with patched_environment({"ARENA_CHANGED": "new", "ARENA_NEW": "x"}):
        assert os.environ["ARENA_CHANGED"] == "new" and os.environ["ARENA_NEW"] == "x"
        assert unset == []
    assert os.environ["ARENA_CHANGED"] == "old" and os.environ["ARENA_KEPT"] == "1" and "ARENA_NEW" not in os.environ
    assert unset == ["ARENA_NEW"]


def test_label_actor_gets_the_drivers_hub_token_and_home(ray_cluster, tmp_path, monkeypatch, files_containing):
    import ray

    from arena_dist.label.driver import ActorSettings, start_actor
    from tiny_fixtures import make_teacher_export

    export = make_teacher_export(tmp_path / "teacher", max_length=64)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HOME", raising=False)
    # Set after Ray started: the raylet (and so any worker it starts) never inherited them.
    token, home = new_token(), str(tmp_path / "hf_home")
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HF_HOME", home)
    actor = start_actor(ActorSettings(num_actors=1, cpus_per_actor=0.5, threads_per_actor=1), str(export))
    seen = ray.get(actor.__ray_call__.remote(lambda self: (os.environ.get("HF_TOKEN"),
                                                           os.environ.get("HF_HOME"))), timeout=300)
    assert seen == (token, home)
    ray.kill(actor)
    assert files_containing(ray_cluster.temp_dir, token) == []  # not in a runtime env: Ray's agent logs those


def teacher_config(tmp_path, **ray_settings):
    sys.path.insert(0, str(REPO / "tests" / "train"))
    from teacher_fixtures import tiny_config

    from arena_dist.train.config import TrainJobConfig

    return TrainJobConfig.model_validate(tiny_config(tmp_path / "dataset", tmp_path / "storage", "env",
                                                     ray=ray_settings))


def test_teacher_workers_get_the_token_outside_the_payload(tmp_path, monkeypatch):
    from ray import cloudpickle

    from arena_dist.train.launch import make_payload, ray_payload, worker_env
    from arena_dist.train.loop import apply_payload_env

    token = new_token()
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    config = teacher_config(tmp_path)
    assert worker_env(config)["HF_HOME"] == str(tmp_path / "hf_home") and "HF_TOKEN" not in worker_env(config)
    assert token not in json.dumps(make_payload(config))  # what the bench writes to a file for torchrun
    payload = ray_payload(config)
    assert token not in ray_train_state_view(payload)
    shipped = cloudpickle.loads(cloudpickle.dumps(payload))  # as Ray Train hands it to a worker
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HF_HOME")
    apply_payload_env(shipped)  # what every rank does first
    assert os.environ["HF_TOKEN"] == token and os.environ["HF_HOME"] == str(tmp_path / "hf_home")


def test_student_workers_get_the_token_outside_the_config(tmp_path, monkeypatch):
    """The student goes through the same payload as the teacher (arena_dist.train.launch)."""
    from ray import cloudpickle

    from arena_dist.distill.config import StudentConfig
    from arena_dist.train.launch import make_payload, ray_payload
    from arena_dist.train.loop import apply_payload_env

    token = new_token()
    monkeypatch.setenv("HF_TOKEN", token)
    config = StudentConfig.model_validate({"output": {"run_dir": str(tmp_path / "run")}, "model": {"arch": "llama"},
                                           "data": {"dataset_dir": str(tmp_path / "dataset")}})
    assert token not in json.dumps(make_payload(config, "student"))
    payload = ray_payload(config, "student")
    assert payload["recipe"] == "student" and payload["zero_knobs"] is None
    assert token not in ray_train_state_view(payload)
    shipped = cloudpickle.loads(cloudpickle.dumps(payload))
    monkeypatch.delenv("HF_TOKEN")
    apply_payload_env(shipped)
    assert os.environ["HF_TOKEN"] == token
    assert StudentConfig.model_validate(shipped["config"]) == config


def test_a_token_in_a_saved_config_or_in_a_jobs_runtime_env_is_refused(tmp_path, monkeypatch):
    from arena_dist.ray_local import submit_job

    with pytest.raises(ValueError, match="HF_TOKEN would be saved with the config"):
        teacher_config(tmp_path, worker_env={"HF_TOKEN": "hf_x"})
    with pytest.raises(ValueError, match="HF_TOKEN would be visible in the job's runtime env"):
        submit_job("http://127.0.0.1:1", ["true"], env={"HF_TOKEN": "hf_x"})
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert with_secrets({"a": 1})[SECRETS_KEY].names() == []  # no token in the environment: nothing forwarded


TRAIN_PROBE = '''
import hashlib, json, os, sys
from pathlib import Path

import ray
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from arena_dist.train.config import TrainJobConfig
from arena_dist.train.launch import ray_payload
from arena_dist.train.loop import apply_payload_env
from arena_dist.worker_env import plain_env

work, ray_dir = Path(sys.argv[1]), sys.argv[2]
token = sys.stdin.readline().strip()  # not on the command line


def probe(payload):
    """A teacher rank's first step (apply_payload_env), then report what the worker sees: hashes, not values."""
    import ray.train

    apply_payload_env(payload)
    seen = {key: hashlib.sha256(os.environ.get(key, "").encode()).hexdigest() for key in ("HF_TOKEN", "HF_HOME")}
    rank = ray.train.get_context().get_world_rank()
    out = Path(payload["config"]["ray"]["storage_path"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(seen))


ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_dir, log_to_driver=False)
os.environ["HF_TOKEN"] = token  # after the raylet started: the workers cannot inherit it
os.environ["HF_HOME"] = str(work / "hf_home")
config = TrainJobConfig.model_validate(json.loads((work / "teacher.json").read_text()))
TorchTrainer(probe, train_loop_config=ray_payload(config), torch_config=TorchConfig(backend="gloo"),
             scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
             run_config=RunConfig(name="probe", storage_path=str(work / "ray_results"),
                                  worker_runtime_env={"env_vars": plain_env()})).fit()
ray.shutdown()
'''


@pytest.mark.slow
def test_ray_train_workers_get_the_token_and_ray_keeps_no_copy(tmp_path, files_containing):
    """Real Ray Train (2 workers, a fresh process as for every stage): each worker sees the driver's HF_TOKEN and
    HF_HOME, set in the driver only after Ray started; neither the run's storage nor Ray's session files hold it."""
    import hashlib
    import subprocess

    token = new_token()
    config = teacher_config(tmp_path)
    (tmp_path / "teacher.json").write_text(config.model_dump_json())
    ray_dir = tempfile.mkdtemp(prefix="ad-ray-", dir="/tmp")  # short: Ray's unix sockets live here
    try:
        env = {key: value for key, value in os.environ.items() if key not in ("HF_TOKEN", "HF_HOME")}
        done = subprocess.run([sys.executable, "-c", TRAIN_PROBE, str(tmp_path), ray_dir], input=token + "\n",
                              capture_output=True, text=True, timeout=600, env={**env, "RAY_AUTH_MODE": "disabled"},
                              cwd=REPO)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        expected = {key: hashlib.sha256(value.encode()).hexdigest()
                    for key, value in (("HF_TOKEN", token), ("HF_HOME", str(tmp_path / "hf_home")))}
        for rank in (0, 1):
            assert json.loads((tmp_path / "storage" / f"rank{rank}.json").read_text()) == expected
        assert token not in done.stdout and token not in done.stderr
        assert files_containing(tmp_path, token) == [] and files_containing(ray_dir, token) == []
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
