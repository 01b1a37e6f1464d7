"""The generate config: mistakes stop the CLI with one line naming the key."""

import pytest
import yaml

from arena_dist.cli import main


def base(tmp_path) -> dict:
    return {"output_dir": str(tmp_path / "out"), "input": {"dataset_dir": str(tmp_path / "dataset")},
            "generators": [{"id": "a", "name_or_path": "x"}, {"id": "b", "name_or_path": "y"}]}


@pytest.mark.parametrize("change, message", [
    (lambda c: c["generators"].pop(), "generators: List should have at least 2 items"),
    (lambda c: c["generators"][1].update(id="a"), "generators: id 'a' is used twice"),
    (lambda c: c["generators"][0].update(weight=0), "generators.0.weight"),
    (lambda c: c.update(ray={"gpus_per_actor": 2}), "ray.gpus_per_actor: at most 1"),
    (lambda c: c["input"].update(split="train"), "input.split"),
    (lambda c: c.update(sampling={"temperature": -1}), "sampling.temperature"),
])
def test_bad_generate_configs_are_one_line_errors(tmp_path, capsys, change, message):
    config = base(tmp_path)
    change(config)
    path = tmp_path / "generate.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["generate", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_missing_dataset_is_named(tmp_path, capsys):
    path = tmp_path / "generate.yaml"
    path.write_text(yaml.safe_dump(base(tmp_path)))
    assert main(["generate", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(tmp_path / "dataset") in err, err
