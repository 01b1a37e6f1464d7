"""Fold adapters of one 4-bit base in one ensemble: the base is loaded once, each adapter is a named PEFT adapter on
it, and each member's probabilities equal its export loaded alone."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hub_checkpoints import build_checkpoint, build_tokenizer  # noqa: E402

from arena_dist.predict.infer import LocalScorer, shared_base_groups  # noqa: E402
from arena_dist.predict.testfile import read_test_file  # noqa: E402

pytestmark = pytest.mark.slow


def member(path, **settings) -> dict:
    return {"export_path": str(path), "dtype": "float32", "quantization": "auto", "trust_remote_code": False,
            "base_path": None, **settings}


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    """Two QLoRA student exports (4-bit, linear head) of one hub-layout Llama checkpoint, recorded by its path as a
    student's export records it, their adapters and heads moved apart by different seeds."""
    from arena_dist.models.build import build_model
    from arena_dist.models.config import ModelConfig
    from arena_dist.models.export import save_export

    root = tmp_path_factory.mktemp("folds")
    base = build_checkpoint(root / "hub", "llama", "causal_lm")
    tokenizer = build_tokenizer("llama")
    tokenizer.pad_token = "<|finetune_right_pad_id|>"
    exports = []
    for fold in range(2):
        cfg = ModelConfig(name_or_path=str(base), head="linear", quantization="4bit",
                          lora={"r": 4, "alpha": 8, "dropout": 0.0})
        model = build_model(cfg, 3, tokenizer.pad_token_id)
        generator = torch.Generator().manual_seed(fold)
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:  # the adapter and the head, as training would move them
                    param.add_(torch.randn(param.shape, generator=generator) * 0.3)
        meta = {"label_mode": "3class", "template": "llama3", "max_length": 96}
        exports.append(save_export(model, tokenizer, root / f"fold{fold}", meta))
    return exports


def test_fold_adapters_load_one_base_and_score_as_each_alone(folds, files, monkeypatch):
    from arena_dist.models import export
    from arena_dist.models.quant import quantized_layer_counts

    _, records, _ = read_test_file(files["lmsys"])
    records = records[:12]
    loads = []
    real = export._load_classifier

    def counted(directory, *args, **kwargs):
        loads.append(Path(directory))
        return real(directory, *args, **kwargs)

    monkeypatch.setattr(export, "_load_classifier", counted)
    shared = LocalScorer([member(folds[0]), member(folds[1])], max_tokens=4096)
    assert len(loads) == 1  # one base for both members
    model = shared.members[0].model
    assert shared.members[1].model is model and set(model.peft_config) == {"export0", "export1"}
    assert quantized_layer_counts(model)["Linear4bit"] > 0  # as trained (`quantization: auto`)

    alone = [LocalScorer([member(path)], max_tokens=4096) for path in folds]
    assert len(loads) == 3
    want = [scorer.score(0, scorer.encode(0, records, False))[0] for scorer in alone]
    assert np.abs(want[0] - want[1]).max() > 1e-3  # the adapters differ, so a wrong switch would show
    for index in (1, 0, 1):  # back and forth: each member switches its adapter on
        got, _ = shared.score(index, shared.encode(index, records, False))
        assert np.abs(got - want[index]).max() < 1e-5


def test_which_members_share_a_base(folds, files):
    from arena_dist.errors import InputError
    from arena_dist.models.export import load_lora_exports

    lora, other = [member(path) for path in folds], member(files["model3"])
    assert shared_base_groups([lora[0], other, lora[1]]) == [[0, 2], [1]]
    assert shared_base_groups([lora[0], {**lora[1], "dtype": "bfloat16"}]) == [[0], [1]]
    assert shared_base_groups([lora[0], {**lora[1], "quantization": "none"}]) == [[0], [1]]
    assert shared_base_groups([lora[0], {**lora[1], "quantization": "4bit"}]) == [[0, 1]]  # auto = as trained
    with pytest.raises(InputError, match="not a LoRA export"):  # refused before anything is loaded
        load_lora_exports([folds[0], files["model3"]], quantization="4bit")
