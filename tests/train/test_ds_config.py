"""DeepSpeed config: ZeRO knobs from the file, batch / precision / optimizer / schedule from the run config."""

import json

import pytest

from arena_dist.errors import ConfigError
from arena_dist.train.config import TrainingSettings
from arena_dist.train.ds_config import REPO_ROOT, build_ds_config, load_zero_knobs


@pytest.mark.parametrize("name", ["zero3.json", "zero3_offload.json", "zero2.json"])
def test_shipped_files_hold_only_zero_knobs(name):
    knobs = load_zero_knobs(REPO_ROOT / "ds_configs" / name)
    assert set(knobs) == {"zero_optimization"}


def test_accumulation_keeps_global_batch():
    knobs = load_zero_knobs("ds_configs/zero3.json", {"zero_optimization": {"stage3_param_persistence_threshold": 0}})
    assert knobs["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    assert knobs["zero_optimization"]["stage"] == 3
    training = TrainingSettings(global_batch=32, micro_batch=2, lr=1e-4, clip=0.5, warmup_steps=10)
    for world, accumulation in ((1, 16), (2, 8), (16, 1)):
        config = build_ds_config(knobs, training, "bfloat16", world, use_gpu=False)
        assert config["gradient_accumulation_steps"] == accumulation
        assert config["train_micro_batch_size_per_gpu"] * world * accumulation == config["train_batch_size"] == 32
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    assert config["gradient_clipping"] == 0.5
    assert config["optimizer"]["params"]["torch_adam"] is True  # CPU: no compiled op
    assert "scheduler" not in config  # one LR schedule for both parallelisms (parallel.lr_schedule)
    with pytest.raises(ConfigError, match="not a multiple"):
        build_ds_config(knobs, training, "float32", 3, use_gpu=False)


def test_batch_keys_in_ds_file_are_rejected(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 4}))
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu come from the run config"):
        load_zero_knobs(path)
    with pytest.raises(ConfigError, match="bf16"):
        load_zero_knobs("ds_configs/zero3.json", {"bf16": {"enabled": True}})
    with pytest.raises(ConfigError, match="not found"):
        load_zero_knobs(tmp_path / "missing.json")
