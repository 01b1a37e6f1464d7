"""The teacher from hub-layout checkpoints (tests/hub_checkpoints.py) on a real local Ray head, 2 workers, DeepSpeed
ZeRO-3 (CPU, gloo): `model.name_or_path` loads under zero.Init (each rank holds its partition only), a new head is
initialised on the partitioned model, it trains, and the export reloads with plain transformers (+ PEFT).

Two runs, in parallel on one head: a `*ForCausalLM` checkpoint with a new linear head, full fine-tune; a
`*ForSequenceClassification` checkpoint with a new MLP head, LoRA. Each writes the loaded model's logits on fixed
rows before its first step (`training.probe_initial`, `probe_step0.json`): a plain single-process build of the same
config must give them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from hub_checkpoints import build_checkpoint  # noqa: E402
from teacher_fixtures import make_dataset, tiny_config  # noqa: E402

from arena_dist.ray_local import LocalRayHead  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ENV = {"DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
       "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
RUNS = {  # name: (checkpoint kind, model settings, training settings)
    "full_linear": ("causal_lm", {"head": "linear"}, {"max_steps": 24, "lr": 2e-3}),
    # random checkpoint weights: frozen random embeddings cannot be read out by low-rank updates alone (and LoRA
    # learns more slowly: more steps)
    "lora_mlp": ("classifier", {"head": "mlp", "lora": {"r": 8, "alpha": 16, "dropout": 0.0,
                                                        "modules_to_save": ["embed_tokens"]}},
                 {"max_steps": 40, "lr": 3e-3, "epochs": 3}),
}


def run_config(root: Path, name: str) -> dict:
    kind, model, training = RUNS[name]
    config = tiny_config(root / "dataset", root / "runs", name,
                         training={"log_every": 1, "probe_initial": True, **training})
    config["model"] = {"name_or_path": str(root / f"llama-{kind}"), "attn_implementation": "sdpa", **model}
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher-pretrained")
    make_dataset(root)  # -> root/dataset
    for kind in ("causal_lm", "classifier"):
        build_checkpoint(root, "llama", kind, num_labels=2)
    results: dict = {}
    with LocalRayHead(num_cpus=4, env=ENV) as head:
        env = {**os.environ, **ENV, **head.client_env(), "RAY_ADDRESS": head.address}

        def run(name):
            path = root / f"{name}.yaml"
            path.write_text(yaml.safe_dump(run_config(root, name)))
            results[name] = subprocess.run([sys.executable, "-m", "arena_dist.cli", "teacher", "--config", str(path)],
                                           capture_output=True, text=True, timeout=900, env=env, cwd=REPO)

        threads = [threading.Thread(target=run, args=(name,)) for name in RUNS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for name, done in results.items():
        assert done.returncode == 0, (name, done.stdout[-3000:] + done.stderr[-3000:])
    return root, results


def probe(directory: Path, name: str) -> tuple[dict, torch.Tensor]:
    data = json.loads((directory / name).read_text())
    inputs = {"input_ids": torch.tensor(data["input_ids"]), "attention_mask": torch.tensor(data["attention_mask"])}
    return inputs, torch.tensor(data["logits"])


def losses(directory: Path) -> list[float]:
    rows = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    return [row["train_loss"] for row in rows if "train_loss" in row]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_partitioned_load_and_new_head_equal_a_plain_build(runs, name):
    from arena_dist.config import load_config
    from arena_dist.formatting.tokenizer import load_tokenizer
    from arena_dist.models.build import build_classifier
    from arena_dist.train.config import TeacherConfig

    root, _ = runs
    directory = root / "runs" / name
    states = [json.loads((directory / "workers" / f"rank{r}_state.json").read_text()) for r in (0, 1)]
    assert all(abs(s["param_local"] / s["param_full"] - 0.5) < 0.02 for s in states)  # partitioned over 2 ranks
    config = load_config(TeacherConfig, root / f"{name}.yaml")
    plain = build_classifier(config.model, load_tokenizer(config.tokenizer_name), config.format).eval()
    inputs, step0 = probe(directory, "probe_step0.json")
    with torch.no_grad():
        expected = plain(**inputs).logits.float()
    assert torch.allclose(step0, expected, atol=1e-5), (step0, expected)
    assert step0.std() > 0  # a head of zeros would match too
    trajectory = losses(directory)
    assert len(trajectory) == RUNS[name][2]["max_steps"]
    window = len(trajectory) // 3
    assert sum(trajectory[-window:]) / window < sum(trajectory[:window]) / window - 0.05, trajectory  # loss falls
    final = json.loads((directory / "summary.json").read_text())["final"]
    assert final["eval_log_loss"] < 0.69 and final["eval_accuracy"] > 0.7, final  # ln 2: the class prior


def test_full_export_reloads_with_plain_transformers(runs):
    from transformers import AutoModelForSequenceClassification

    root, _ = runs
    directory = root / "runs" / "full_linear"
    model = AutoModelForSequenceClassification.from_pretrained(str(directory / "export"),
                                                               attn_implementation="sdpa").eval()
    inputs, trained = probe(directory, "probe.json")
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, trained, atol=1e-5)


def test_lora_export_reloads_with_transformers_and_peft(runs):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from arena_dist.models.heads import install_mlp_head

    root, _ = runs
    directory = root / "runs" / "lora_mlp"
    meta = json.loads((directory / "export" / "arena_dist.json").read_text())
    assert meta["lora"] and meta["head"] == "mlp" and meta["base"] == {"name_or_path": str(root / "llama-classifier")}
    base = AutoModelForSequenceClassification.from_pretrained(meta["base"]["name_or_path"], num_labels=2,
                                                              pad_token_id=meta["pad_token_id"],
                                                              attn_implementation="sdpa")
    install_mlp_head(base, 2)
    model = PeftModel.from_pretrained(base, str(directory / "export")).eval()
    inputs, trained = probe(directory, "probe.json")
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, trained, atol=1e-5)
