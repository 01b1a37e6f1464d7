"""A verbaliser teacher (`model.head: verbalizer`) from a hub-layout Llama causal-LM checkpoint, trained for a few
steps by 2 DeepSpeed ZeRO-3 ranks (a torchrun subprocess: the same `run_rank` a Ray Train worker runs), full and
LoRA: the answer rows reach the partitioned head, the export reloads to the trained model's logits, and its
causal-LM export gives them as next-token logits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hub_checkpoints import build_checkpoint  # noqa: E402
from stage_process import torchrun  # noqa: E402
from teacher_fixtures import make_dataset, tiny_config  # noqa: E402

pytestmark = pytest.mark.slow
LR, STEPS = 1e-4, 4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("verbalizer_teacher")
    make_dataset(root, rows=64)
    build_checkpoint(root, "llama", "causal_lm")
    return root


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_zero3_verbalizer_teacher_exports_a_classifier_and_a_causal_lm(workdir, lora):
    from safetensors.torch import load_file

    from arena_dist.models.export import load_export
    from arena_dist.models.verbalizer import export_causal_lm, output_embedding_rows
    from arena_dist.train.config import TeacherConfig
    from arena_dist.train.launch import make_payload

    checkpoint = workdir / "llama-causal_lm"
    name = "lora" if lora else "full"
    model = {"name_or_path": str(checkpoint), "arch": None, "head": "verbalizer",
             "lora": {"r": 4, "alpha": 8, "dropout": 0.0} if lora else None}
    config = TeacherConfig.model_validate(tiny_config(
        workdir / "dataset", workdir / "runs", name, model=model,
        training={"lr": LR, "max_steps": STEPS, "epochs": 1}))
    payload = workdir / f"{name}.json"
    payload.write_text(json.dumps(make_payload(config, "teacher")))
    done = torchrun(payload, 2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((config.run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["world_size"] == 2

    # The partitioned head started from the LM head's answer rows: a few Adam steps of LR move it by at most
    # STEPS x LR per element (transformers' fresh init would be ~0.02 away), and they did move it.
    exported = load_file(str(config.export_dir / ("adapter_model.safetensors" if lora else "model.safetensors")))
    head = next(v for k, v in exported.items() if k.endswith("score.weight") or "score.modules_to_save" in k)
    meta = json.loads((config.export_dir / "arena_dist.json").read_text())
    from transformers import AutoConfig

    rows = output_embedding_rows(str(checkpoint), AutoConfig.from_pretrained(str(checkpoint)),
                                 meta["answer_token_ids"])
    moved = float((head.float() - rows.float()).abs().max())
    assert 0 < moved <= STEPS * LR * 1.01, moved

    probe = json.loads((config.run_dir / "probe.json").read_text())
    inputs = {"input_ids": torch.tensor(probe["input_ids"]), "attention_mask": torch.tensor(probe["attention_mask"])}
    trained = torch.tensor(probe["logits"])
    classifier, _, meta = load_export(config.export_dir)
    assert meta["head"] == "verbalizer" and meta["lora"] == lora
    with torch.no_grad():
        torch.testing.assert_close(classifier(**inputs).logits.float(), trained, atol=1e-5, rtol=0)

    from transformers import AutoModelForCausalLM

    causal = AutoModelForCausalLM.from_pretrained(str(export_causal_lm(config.export_dir, workdir / f"{name}_lm")))
    with torch.no_grad():
        logits = causal(**inputs).logits
    last = inputs["attention_mask"].sum(1) - 1
    torch.testing.assert_close(logits[torch.arange(len(last)), last][:, meta["answer_token_ids"]], trained,
                               atol=1e-4, rtol=0)
