from typing import Literal

import pytest
from pydantic import Field

from arena_dist.config import StrictModel, config_hash, load_config, save_resolved_config
from arena_dist.errors import ConfigError


class Inner(StrictModel):
    lr: float = Field(1e-4, gt=0)
    mode: Literal["full", "lora"] = "full"


class Outer(StrictModel):
    name: str = "run"
    steps: int = Field(10, ge=1)
    inner: Inner = Inner()


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_keep_types(tmp_path):
    path = write(tmp_path, "name: a\ninner:\n  lr: 0.5\n")
    config = load_config(Outer, path, ["steps=7", "inner.mode=lora"])
    assert (config.name, config.steps, config.inner.lr, config.inner.mode) == ("a", 7, 0.5, "lora")


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "inner:\n  lrr: 0.5\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    message = str(err.value)
    assert "inner.lrr" in message and "unknown key" in message and str(path) in message
    assert "\n" not in message


def test_wrong_type_and_out_of_range(tmp_path):
    path = write(tmp_path, "steps: many\n")
    with pytest.raises(ConfigError, match=r"steps: .*integer"):
        load_config(Outer, path)
    with pytest.raises(ConfigError, match=r"inner\.lr: .*greater than 0"):
        load_config(Outer, None, ["inner.lr=-1"])
    with pytest.raises(ConfigError, match=r"inner\.mode"):
        load_config(Outer, None, ["inner.mode=qlora"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, write(tmp_path, "a: [1,\n"))
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(Outer, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(Outer, None, ["steps"])


def test_resolved_config_saved_and_hash_stable(tmp_path):
    config = load_config(Outer, None, ["steps=3"])
    saved = save_resolved_config(config, tmp_path)
    again = load_config(Outer, saved)
    assert again == config
    assert config_hash(again) == config_hash(config)
    assert config_hash(load_config(Outer, None, ["steps=4"])) != config_hash(config)


class Item(StrictModel):
    path: str = ""


class WithList(StrictModel):
    items: list[Item] = []


def test_override_indexes_lists(tmp_path):
    path = write(tmp_path, "items:\n  - {path: a}\n  - {path: b}\n")
    config = load_config(WithList, path, ["items.1.path=z"])
    assert [i.path for i in config.items] == ["a", "z"]
    with pytest.raises(ConfigError, match="not an index"):
        load_config(WithList, path, ["items.5.path=z"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(Outer, write(tmp_path, "name: run\n"), ["name.x=1"])
