"""The teacher stage end to end on a real local Ray head with real 2-process DeepSpeed ZeRO-3 (CPU, gloo).

One reference run (through `ray job submit`) is shared by the assertions; the fault and resume tests compare their
trajectories against it. Tiny Llama, a dataset with an easy learnable signal (tests/train/teacher_fixtures.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from teacher_fixtures import make_dataset, tiny_config  # noqa: E402

from arena_dist.io import claim_output_dir  # noqa: E402
from arena_dist.ray_local import LocalRayHead, submit_job  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ENV = {"DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
STEPS, CHECKPOINT_EVERY = 32, 8
REFERENCE_TRAINING = {"lr": 1e-3, "epochs": 3, "max_steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY,
                      "eval_every": 16, "log_every": 4}


@pytest.fixture(scope="module")
def head():
    with LocalRayHead(num_cpus=4, env=ENV) as started:
        yield started


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    make_dataset(root)
    return root


def write_config(workdir: Path, name: str, **sections) -> Path:
    config = tiny_config(workdir / "dataset", workdir / "runs", name, **sections)
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_dir(workdir: Path, name: str) -> Path:
    return workdir / "runs" / name


def submit(head, config_path: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir <repo> -- python launch/teacher.py --config X.yaml`."""
    return submit_job(head, ["python", "launch/teacher.py", "--config", str(config_path)], working_dir=REPO,
                      env=ENV, timeout=timeout)


def run_cli(head, config_path: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`arena-dist teacher --config X.yaml` as a driver on the head (RAY_ADDRESS)."""
    env = {**os.environ, **ENV, **head.client_env(), "RAY_ADDRESS": head.address}
    return subprocess.run([sys.executable, "-m", "arena_dist.cli", "teacher", "--config", str(config_path)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def losses(directory: Path) -> dict[int, float]:
    """step -> train loss, the last line per step (a restarted attempt overwrites the steps it replays)."""
    out = {}
    for line in (directory / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "train_loss" in row:
            out[row["step"]] = row["train_loss"]
    return out


def attempts(directory: Path) -> list[str]:
    seen = []
    for line in (directory / "metrics.jsonl").read_text().splitlines():
        attempt = json.loads(line)["attempt"]
        if attempt not in seen:
            seen.append(attempt)
    return seen


def summary(directory: Path) -> dict:
    return json.loads((directory / "summary.json").read_text())


def probe_logits_of_export(directory: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    from arena_dist.models.export import load_export

    probe = json.loads((directory / "probe.json").read_text())
    model, _, meta = load_export(directory / "export")
    inputs = {"input_ids": torch.tensor(probe["input_ids"]), "attention_mask": torch.tensor(probe["attention_mask"])}
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    return logits, torch.tensor(probe["logits"]), meta


@pytest.fixture(scope="module")
def reference(head, workdir):
    config = write_config(workdir, "ref", training=REFERENCE_TRAINING)
    done = submit(head, config)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return run_dir(workdir, "ref"), done.stdout


def test_zero3_partitions_parameters_and_learns(reference):
    directory, output = reference
    states = [json.loads((directory / "workers" / f"rank{r}_state.json").read_text()) for r in (0, 1)]
    full = states[0]["param_full"]
    for state in states:
        assert state["param_full"] == full
        assert abs(state["param_local"] / full - 0.5) < 0.02  # each rank holds about half the parameters
        assert state["optimizer_state_local"] >= 2 * state["param_local"] * 0.95  # Adam moments of the partition
    assert sum(s["param_local"] for s in states) >= full

    trajectory = losses(directory)
    assert sorted(trajectory) == list(range(1, STEPS + 1))
    early = sum(trajectory[s] for s in range(1, 9)) / 8
    late = sum(trajectory[s] for s in range(STEPS - 7, STEPS + 1)) / 8
    assert late < early - 0.2, (early, late)  # loss falls
    final = summary(directory)["final"]
    from arena_dist.data.store import count_records

    assert final["eval_records"] == count_records(directory.parents[1] / "dataset", folds=[0]) > 0
    assert final["eval_log_loss"] < 0.4 and final["eval_accuracy"] >= 0.9, final
    assert list((directory / "tensorboard").glob("events.out.tfevents.*"))
    assert (directory / "resolved_config.yaml").is_file()
    assert "samples/s" in output and "ETA" in output
    # Readable console: each progress line once (not also through Ray Train's print patch), no per-report dump.
    progress = [line for line in output.splitlines() if "teacher: step " in line]
    assert progress and len(progress) == len(set(progress)), progress[:4]
    assert "Reporting training result" not in output
    # Checkpoints at 8, 16, 24; training.keep_last (default 2) keeps the newest two, no hidden leftover of the
    # deletion (the smaller-world test below copies both). DeepSpeed's scripts beside them are left alone.
    left = sorted(p.name for p in (directory / "checkpoints").iterdir() if not p.name.endswith(".py"))
    assert left == ["step_0000016", "step_0000024"]
    assert (directory / "checkpoints" / "zero_to_fp32.py").is_file()
    assert all((directory / "checkpoints" / tag / "COMPLETE").is_file() for tag in ("step_0000016", "step_0000024"))
    assert "removed old checkpoints step_0000008" in output


def test_export_reloads_with_identical_logits(reference):
    from transformers import AutoModelForSequenceClassification

    directory, _ = reference
    reloaded, trained, meta = probe_logits_of_export(directory)
    assert torch.allclose(reloaded, trained, atol=1e-5), (reloaded, trained)
    assert meta["label_mode"] == "2class" and meta["template"] == "llama3" and meta["max_length"] == 128
    assert meta["head"] == "linear" and meta["lora"] is False and meta["num_labels"] == 2
    assert list((directory / "export").glob("*.safetensors")) and not list((directory / "export").glob("*.bin"))
    # No forward before the first step unless asked (`training.probe_initial`): under ZeRO-3 it slows every later step
    assert not (directory / "probe_step0.json").exists()
    plain = AutoModelForSequenceClassification.from_pretrained(str(directory / "export"),
                                                               attn_implementation=meta["attn_implementation"]).eval()
    probe = json.loads((directory / "probe.json").read_text())
    with torch.no_grad():
        logits = plain(input_ids=torch.tensor(probe["input_ids"]),
                       attention_mask=torch.tensor(probe["attention_mask"])).logits
    assert torch.allclose(logits, trained, atol=1e-5)


def test_killed_worker_restarts_from_checkpoint(head, workdir, reference):
    ref_dir, _ = reference
    config = write_config(workdir, "killed", training=REFERENCE_TRAINING, ray={"max_failures": 1})
    directory = run_dir(workdir, "killed")
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(done=submit(head, config)))
    job.start()
    marker = directory / "checkpoints" / f"step_{CHECKPOINT_EVERY:07d}" / "COMPLETE"
    deadline = time.monotonic() + 400
    while not marker.exists() and time.monotonic() < deadline and job.is_alive():
        time.sleep(0.2)
    assert marker.exists(), "the first checkpoint never completed"
    victim = json.loads((directory / "workers" / "rank1.json").read_text())["pid"]
    os.kill(victim, signal.SIGKILL)
    job.join(timeout=600)
    done = result["done"]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    end = summary(directory)
    assert end["resumed_from"] and end["resumed_from"].startswith("step_")  # the restarted group resumed
    assert len(attempts(directory)) == 2
    assert json.loads((directory / "workers" / "rank1.json").read_text())["pid"] != victim
    reference_final = summary(ref_dir)["final"]
    assert abs(end["final"]["eval_log_loss"] - reference_final["eval_log_loss"]) < 1e-4
    assert end["final"]["eval_accuracy"] == reference_final["eval_accuracy"]
    # Same world size: the resumed trajectory is the uninterrupted one.
    mine, theirs = losses(directory), losses(ref_dir)
    assert sorted(mine) == sorted(theirs)
    assert all(abs(mine[s] - theirs[s]) <= 1e-5 * max(1.0, abs(theirs[s])) for s in theirs)


def test_resume_on_smaller_world_ignores_incomplete_checkpoint(head, workdir, reference):
    ref_dir, _ = reference
    directory = run_dir(workdir, "smaller")
    resume_at, stop_at = 2 * CHECKPOINT_EVERY, 3 * CHECKPOINT_EVERY
    claim_output_dir(directory)  # as the earlier attempt of this run that left the checkpoints did
    (directory / "checkpoints").mkdir(parents=True)
    shutil.copytree(ref_dir / "checkpoints" / f"step_{resume_at:07d}", directory / "checkpoints" / f"step_{resume_at:07d}")
    # A later checkpoint that crashed mid-save: files present, no COMPLETE marker. It must be ignored.
    crashed = directory / "checkpoints" / f"step_{stop_at:07d}"
    shutil.copytree(ref_dir / "checkpoints" / f"step_{stop_at:07d}", crashed)
    (crashed / "COMPLETE").unlink()
    config = write_config(workdir, "smaller", ray={"num_workers": 1},
                          training={**REFERENCE_TRAINING, "max_steps": stop_at})
    done = run_cli(head, config)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    end = summary(directory)
    assert end["world_size"] == 1 and end["resumed_from"] == f"step_{resume_at:07d}_universal"
    assert (directory / "checkpoints" / f"step_{resume_at:07d}_universal" / "COMPLETE").is_file()
    mine, theirs = losses(directory), losses(ref_dir)
    assert sorted(mine) == list(range(resume_at + 1, stop_at + 1))
    for step in mine:  # same global batches, other reduction order: equal up to float rounding
        assert abs(mine[step] - theirs[step]) <= 1e-3 * max(1.0, abs(theirs[step])), (step, mine[step], theirs[step])


def test_lora_mlp_head_export_under_zero3(head, workdir):
    from safetensors import safe_open

    config = write_config(workdir, "lora", training={"lr": 1e-3, "max_steps": 2, "log_every": 1},
                          model={"head": "mlp", "lora": {"r": 4, "alpha": 8, "dropout": 0.0,
                                                        "target_modules": ["q_proj", "v_proj"]}},
                          data={"max_eval_records": 8})
    done = run_cli(head, config)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    directory = run_dir(workdir, "lora")
    export = directory / "export"
    with safe_open(str(export / "adapter_model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
        lora_b = [k for k in keys if "lora_B" in k]
        assert len(lora_b) == 4  # q_proj, v_proj x 2 layers, not an empty stub (DeepSpeed#3620)
        assert all(handle.get_tensor(k).abs().sum() > 0 for k in lora_b)  # trained away from zero init
        assert any(k.startswith("base_model.model.score") for k in keys)  # the full head rides along
    reloaded, trained, meta = probe_logits_of_export(directory)
    assert meta["lora"] is True and meta["head"] == "mlp"
    assert torch.allclose(reloaded, trained, atol=1e-5), (reloaded, trained)
