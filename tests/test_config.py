from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from arena_dist.cli import STAGES, stage_module
from arena_dist.config import StrictModel, config_hash, load_config, save_resolved_config
from arena_dist.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


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


class Kinds(StrictModel):
    count: int = 1
    maybe_count: int | None = Field(None, gt=0)
    rate: float = 0.5
    flag: bool = False
    bits: Literal[4, 8] = 4
    weights: dict[str, float] = {}
    betas: tuple[float, float] = (0.9, 0.99)
    sizes: list[int] | None = None
    label: str = ""
    where: Path = Path(".")


@pytest.mark.parametrize("item, message", [
    ("count=true", "count: Input should be an integer, not a boolean"),
    ("count=2.0", "count: Input should be an integer, not a float"),
    ("count='2'", "count: Input should be an integer, not a string"),
    ("maybe_count=false", "maybe_count: Input should be an integer, not a boolean"),
    ("rate=true", "rate: Input should be a number, not a boolean"),
    ("rate='0.5'", "rate: Input should be a number, not a string"),
    ("flag=1", "flag: Input should be true or false, not an integer"),
    ("flag=0.0", "flag: Input should be true or false, not a float"),
    ("flag='yes'", "flag: Input should be true or false, not a string"),
    ("bits=4.0", "bits: Input should be one of 4, 8, not a float"),
    ("weights={en: true}", "weights: key 'en': Input should be a number, not a boolean"),
    ("betas=[0.9, '0.99']", "betas: item 1: Input should be a number, not a string"),
    ("sizes=[1, 2.0]", "sizes: item 1: Input should be an integer, not a float"),
])
def test_numbers_booleans_and_strings_are_not_coerced(item, message, tmp_path):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(Kinds, None, [item])
    assert "\n" not in str(err.value)
    key, value = item.split("=", 1)  # the same value from a file names the file
    path = write(tmp_path, f"{key}: {value}\n")
    with pytest.raises(ConfigError, match=rf"config error in {path}: {message}"):
        load_config(Kinds, path)


def test_values_of_the_right_kind_still_load():
    config = load_config(Kinds, None, ["count=2", "maybe_count=null", "rate=1", "flag=true", "bits=8",
                                       "weights={en: 1, ru: 0.5}", "betas=[1, 0.999]", "sizes=[1, 2]", "label=x",
                                       "where=a/b", "rate=1.0e-4"])
    assert (config.count, config.maybe_count, config.rate, config.flag, config.bits) == (2, None, 1.0e-4, True, 8)
    assert isinstance(load_config(Kinds, None, ["rate=1"]).rate, float)  # YAML users write `lr: 1`
    assert config.weights == {"en": 1.0, "ru": 0.5} and config.betas == (1.0, 0.999) and config.sizes == [1, 2]
    assert (config.label, config.where) == ("x", Path("a/b"))


@pytest.mark.parametrize("text, value", [("1e-4", 1e-4), ("3E9", 3e9), ("-2.5e-3", -2.5e-3), ("1.0e+9", 1e9),
                                         ("1_000e2", 1e5)])
def test_yaml_12_exponent_floats_are_numbers(text, value, tmp_path):
    """YAML 1.1 (PyYAML) reads `1e-4` as text; the config loader reads it as the number every user means."""
    assert load_config(Kinds, write(tmp_path, f"rate: {text}\n")).rate == value
    assert load_config(Kinds, None, [f"rate={text}"]).rate == value
    assert load_config(Kinds, None, ["label=1e5x"]).label == "1e5x"
    assert load_config(Kinds, None, ["count=12"]).count == 12  # integers stay integers


def test_assignment_is_as_strict_as_loading():
    config = Kinds()
    with pytest.raises(ValueError, match="not a float"):
        config.count = 3.0
    config.rate = 2
    assert config.rate == 2.0


def test_nested_sections_are_strict(tmp_path):
    with pytest.raises(ConfigError, match=r"inner\.lr: Input should be a number, not a boolean"):
        load_config(Outer, write(tmp_path, "inner:\n  lr: true\n"))
    with pytest.raises(ConfigError, match=r"steps: Input should be an integer, not a float"):
        load_config(Outer, None, ["steps=10.0"])


def shipped_configs() -> list[Path]:
    return sorted((REPO / "launch" / "configs").rglob("*.yaml"))


def stage_config_class(path: Path):
    """launch/configs/demo.yaml is the demo's; demo/<stage>.yaml and <stage>_*.yaml are that stage's."""
    if path.name == "demo.yaml":
        from arena_dist.demo import DemoConfig

        return DemoConfig
    stage = path.stem if path.parent.name == "demo" else path.stem.split("_")[0]
    assert stage in STAGES, f"{path}: no stage named {stage!r}"
    return stage_module(stage).Config


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: str(p.relative_to(REPO / "launch" / "configs")))
def test_every_shipped_config_loads_into_its_stage_config(path):
    load_config(stage_config_class(path), path)


def test_shipped_configs_are_all_found():
    assert len(shipped_configs()) >= 20


@pytest.mark.parametrize("name", ["teacher_llama33_70b", "student_gemma2_9b"])
def test_verbalizer_variants_are_their_shipped_config_with_the_lm_head(name):
    base_path, variant_path = (REPO / "launch" / "configs" / f"{name}{suffix}.yaml" for suffix in ("", "_verbalizer"))
    base, variant = (load_config(stage_config_class(path), path) for path in (base_path, variant_path))
    assert base.model.head == "linear" and variant.model.head == "verbalizer"
    assert variant.model.model_dump(exclude={"head"}) == base.model.model_dump(exclude={"head"})
    assert variant.format == base.format and variant.data == base.data
    assert variant.run_dir != base.run_dir  # both can run side by side
