"""A 4-bit QLoRA verbaliser student (`model.head: verbalizer`) from a hub-layout Gemma-2 causal-LM checkpoint,
distilled for a few steps on the shared loop (one rank), with `causal_lm_export`: the adapter export reloads, and the
causal-LM checkpoint written next to it gives the full-precision classifier's logits as next-token logits."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distill_fixtures import make_distill_fixture  # noqa: E402
from hub_checkpoints import build_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow


def test_qlora_verbalizer_student_writes_a_causal_lm(tmp_path):
    from transformers import AutoModelForCausalLM

    from arena_dist.distill.config import StudentConfig
    from arena_dist.distill.train import StudentRecipe
    from arena_dist.label.batching import pad_right
    from arena_dist.models.export import load_export
    from arena_dist.train.loop import Trainer

    fixture = make_distill_fixture(tmp_path / "fx", n_train=48, n_pool=32, n_test=8)
    checkpoint = build_checkpoint(tmp_path, "gemma2", "causal_lm")
    config = StudentConfig.model_validate({
        "output": {"run_dir": str(tmp_path / "run")},
        "model": {"name_or_path": str(checkpoint), "head": "verbalizer", "quantization": "4bit",
                  "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "format": {"template": "gemma2", "max_length": 256},
        "data": {"dataset_dir": fixture["dataset_dir"], "soft_labels": fixture["soft_labels"], "fold": 0,
                 "num_folds": 4},
        "training": {"lr": 1e-2, "epochs": 1, "max_steps": 3, "global_batch": 8, "micro_batch": 8, "threads": 1},
        "ray": {"enabled": False},
        "causal_lm_export": True,
    })
    with pytest.raises(ValueError, match="causal_lm_export needs model.head: verbalizer"):
        StudentConfig.model_validate({**config.model_dump(mode="json"),
                                      "model": {**config.model.model_dump(), "head": "linear"}})
    summary = Trainer(StudentRecipe(config), 0, 1, {"attempt_id": "t"}, under_ray=False).fit()
    assert summary["finished"] and Path(summary["causal_lm_dir"]).is_dir()

    classifier, tokenizer, meta = load_export(summary["export_dir"])  # full-precision base + adapter
    assert meta["head"] == "verbalizer" and meta["quantization"] == "4bit" and meta["logit_softcap"]
    texts = ["<bos><start_of_turn>user\nA or B?<end_of_turn>\n<start_of_turn>model\n", "<bos>x y z tie"]
    ids, mask = (torch.tensor(t) for t in pad_right([tokenizer.encode(t, add_special_tokens=False) for t in texts],
                                                    tokenizer.pad_token_id))
    causal = AutoModelForCausalLM.from_pretrained(summary["causal_lm_dir"])
    with torch.no_grad():
        want = classifier(input_ids=ids, attention_mask=mask).logits
        got = causal(input_ids=ids, attention_mask=mask).logits[torch.arange(2), mask.sum(1) - 1]
    torch.testing.assert_close(got[:, meta["answer_token_ids"]], want, atol=1e-4, rtol=0)
