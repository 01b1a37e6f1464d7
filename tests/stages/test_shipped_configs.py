"""The shipped real configs (launch/configs) run as they are against the hub-layout checkpoint of their family
(tests/hub_checkpoints.py), with only model paths, data paths, sizes, step counts and world size overridden: a config
that cannot run is caught here, not on the cluster.

One chain on a real local Ray head: teacher_llama33_70b, its verbaliser variant and teacher_qwen25_72b (MLP head,
ZeRO-3 with CPU offload) at once, 2 ZeRO-3 workers and 2 steps each, bf16, gradient checkpointing -> label_llama70b_a100 (its two fold slots
given the two exports, 8-bit, the ensemble) -> student_gemma2_9b (4-bit), its verbaliser variant (with the causal-LM
export) and student_qwen25_14b (its documented 8-bit option), 2 steps each in one process -> predict_lmsys with both students.
Then the students' base checkpoint moves to another folder: predict says which setting to use, and with
`models.0.base_path` writes the same probabilities. The consoles carry neither transformers' load report for a LoRA
base ("MISSING") nor bitsandbytes' per-forward "MatMul8bitLt" line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hub_checkpoints import build_checkpoint  # noqa: E402

from arena_dist.ray_local import LocalRayHead  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "launch" / "configs"
ENV = {"DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
       "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
TEACHERS = {"teacher_llama33_70b": "llama", "teacher_qwen25_72b": "qwen2", "teacher_llama33_70b_verbalizer": "llama"}
FALSE_ALARMS = ("MISSING", "newly initialized", "MatMul8bitLt")
SMALL = ["format.max_length=256", "data.max_eval_records=8"]
STUDENT = SMALL + ["training.global_batch=4", "training.micro_batch=2", "training.eval_micro_batch=4",
                   "training.max_steps=2", "training.warmup_steps=0", "training.log_every=1", "training.threads=1",
                   "ray.enabled=false", "ray.use_gpu=false"]


def make_dataset(root: Path) -> tuple[Path, Path]:
    """Synthetic LMSYS train / test + pool, prepared into 5 folds as the shipped configs expect."""
    from arena_dist.stages import prepare, synth

    synth.run(synth.Config(output_dir=str(root / "synth"), seed=0, n_train=60, n_test=12, n_pool=24,
                           n_wsdm_train=0, n_wsdm_test=0, n_pairwise=0, progress=False,
                           prepare={"output_dir": str(root / "dataset"), "num_shards": 2, "num_folds": 5}))
    prepare.run(prepare.Config.model_validate(yaml.safe_load((root / "synth" / "prepare.yaml").read_text())))
    return root / "dataset", root / "synth" / "lmsys" / "test.csv"


def cli(stage: str, config_file: Path, sets: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """`arena-dist <stage> --config <shipped config> --set ...` in a fresh process, as a user runs it."""
    command = [sys.executable, "-m", "arena_dist.cli", stage, "--config", str(config_file)]
    command += [x for s in sets for x in ("--set", s)]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO,
                          env={**os.environ, **ENV, **(env or {})})


def ok(done: subprocess.CompletedProcess, what: str, loads_exports: bool = True) -> str:
    """Exit 0; a stage that loads exports prints no false alarm (training a new head on a checkpoint reports its
    missing head truthfully)."""
    output = done.stdout + done.stderr
    assert done.returncode == 0, (what, output[-4000:])
    for alarm in FALSE_ALARMS if loads_exports else ():
        assert alarm not in output, (what, alarm, output[-4000:])
    return output


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("shipped")
    hub = {family: build_checkpoint(root / "hub", family, "causal_lm") for family in ("llama", "qwen2", "gemma2")}
    dataset, test_csv = make_dataset(root)
    out = {"root": root, "hub": hub, "test_csv": test_csv}
    with LocalRayHead(num_cpus=6, env=ENV) as head:
        ray_env = {**head.client_env(), "RAY_ADDRESS": head.address}
        teachers: dict = {}

        def teacher(name, family):  # both shipped teachers at once, 2 ZeRO-3 workers each
            teachers[name] = cli("teacher", CONFIGS / f"{name}.yaml", SMALL + [
                f"model.name_or_path={hub[family]}", f"output.tokenizer={hub[family]}", f"data.dataset_dir={dataset}",
                "training.global_batch=4", "training.micro_batch=1", "training.max_steps=2", "training.warmup_steps=0",
                "training.log_every=1", "ray.num_workers=2", "ray.use_gpu=false", "ray.gpus_per_worker=0",
                "ray.cpus_per_worker=1", "ray.max_failures=0", f"ray.storage_path={root / 'runs'}"], ray_env)

        threads = [threading.Thread(target=teacher, args=args) for args in TEACHERS.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for name, done in teachers.items():
            out[name] = ok(done, name, loads_exports=False)
        exports = [root / "runs" / run / "export" for run in ("llama33_70b_fold0", "qwen25_72b_fold0")]
        label = cli("label", CONFIGS / "label_llama70b_a100.yaml", [
            f"output_dir={root / 'labels'}", f"input.dataset_dir={dataset}", f"teachers.0.export_path={exports[0]}",
            f"teachers.1.export_path={exports[1]}", "ray.num_actors=1", "ray.cpus_per_actor=1", "ray.gpus_per_actor=0",
            "batching.max_tokens=4096"], ray_env)
        out["label"] = ok(label, "label")
    for name, family, extra in (("student_gemma2_9b", "gemma2", []), ("student_gemma2_9b_verbalizer", "gemma2", []),
                                ("student_qwen25_14b", "qwen2", ["model.quantization=8bit"])):
        done = cli("student", CONFIGS / f"{name}.yaml", STUDENT + extra + [
            f"model.name_or_path={hub[family]}", f"output.tokenizer={hub[family]}", f"data.dataset_dir={dataset}",
            f"data.soft_labels=[{root / 'labels' / 'ensemble'}]", f"output.run_dir={root / name}"])
        out[name] = ok(done, name, loads_exports=False)
    return out


def predict(chain, out: Path, *sets: str) -> subprocess.CompletedProcess:
    root = chain["root"]
    return cli("predict", CONFIGS / "predict_lmsys.yaml", [
        f"test_file={chain['test_csv']}", f"output_dir={out}",
        f"models.0.export_path={root / 'student_gemma2_9b' / 'export'}",
        f"models.1.export_path={root / 'student_qwen25_14b' / 'export'}", "batching.max_tokens=4096", *sets])


def test_teacher_and_label_configs_run(chain):
    root = chain["root"]
    for run, head, template in (("llama33_70b_fold0", "linear", "llama3"), ("qwen25_72b_fold0", "mlp", "chatml"),
                                ("llama33_70b_verbalizer_fold0", "verbalizer", "llama3")):
        summary = json.loads((root / "runs" / run / "summary.json").read_text())
        assert summary["finished"] and summary["steps"] == 2 and summary["world_size"] == 2
        meta = json.loads((root / "runs" / run / "export" / "arena_dist.json").read_text())
        assert meta["model_config"]["dtype"] == "bfloat16" and meta["model_config"]["gradient_checkpointing"]
        assert meta["num_labels"] == 3 and meta["template"] == template and meta["head"] == head
    labels = json.loads((root / "labels" / "label_summary.json").read_text())
    assert set(labels["teachers"]) == {"llama70b-fold0", "llama70b-fold1"}
    assert all(t["rows"] == 24 for t in labels["teachers"].values())
    assert (root / "labels" / "ensemble").is_dir()


def test_student_configs_quantise_their_checkpoints(chain):
    root = chain["root"]
    for name, quantization, base in (("student_gemma2_9b", "4bit", "gemma2"), ("student_qwen25_14b", "8bit", "qwen2")):
        summary = json.loads((root / name / "summary.json").read_text())
        assert summary["finished"] and summary["steps"] == 2, name
        meta = json.loads((root / name / "export" / "arena_dist.json").read_text())
        assert meta["quantization"] == quantization and meta["lora"]
        assert meta["base"] == {"name_or_path": str(chain["hub"][base])}  # as the config gave it
    meta = json.loads((root / "student_gemma2_9b_verbalizer" / "export" / "arena_dist.json").read_text())
    assert meta["head"] == "verbalizer" and meta["quantization"] == "4bit"
    assert (root / "student_gemma2_9b_verbalizer" / "export_causal_lm" / "config.json").is_file()


def test_predict_config_and_a_moved_base(chain, tmp_path):
    first = predict(chain, tmp_path / "before")
    ok(first, "predict")
    submission = pd.read_csv(tmp_path / "before" / "submission.csv")
    assert len(submission) == 12 and list(submission.columns) == ["id", "winner_model_a", "winner_model_b",
                                                                  "winner_tie"]
    before = pd.read_parquet(tmp_path / "before" / "probabilities.parquet")

    moved = tmp_path / "elsewhere" / "gemma-2-9b-it"
    original = chain["hub"]["gemma2"]
    shutil.move(str(original), str(moved))
    try:
        lost = predict(chain, tmp_path / "lost")
        assert lost.returncode == 2, lost.stdout[-2000:] + lost.stderr[-2000:]
        assert str(original) in lost.stderr and "models.0.base_path" in lost.stderr
        again = predict(chain, tmp_path / "after", f"models.0.base_path={moved}")
        ok(again, "predict with models.0.base_path")
    finally:
        shutil.move(str(moved), str(original))
    after = pd.read_parquet(tmp_path / "after" / "probabilities.parquet")
    pd.testing.assert_frame_equal(before, after, check_exact=True)
