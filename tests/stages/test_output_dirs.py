"""No stage writes into, or replaces, a directory holding files that arena_dist did not create.

Each stage is pointed at an output directory that holds a file of the user's: the stage must stop with exit 2 and
a one-line error naming the directory, and the file must be untouched. The checks run before any model, Ray or data
work, so every stage of the pipeline is covered cheaply through its real entry point (`arena-dist <stage>`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from prepare_fixtures import good_lmsys_rows, write_csv  # noqa: E402

from arena_dist.cli import main  # noqa: E402
from arena_dist.data.store import MANIFEST, load_manifest, verify_dataset  # noqa: E402
from arena_dist.io import OWNER_MARKER  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "launch" / "configs"
USER_TEXT = "the user's own notes\n"


def foreign_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "mine"
    directory.mkdir()
    (directory / "notes.txt").write_text(USER_TEXT)
    return directory


def assert_refused(capsys, directory: Path, status: int) -> None:
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) == 1 and str(directory) in err and "did not write" in err, err
    assert sorted(p.name for p in directory.iterdir()) == ["notes.txt"]
    assert (directory / "notes.txt").read_text() == USER_TEXT


# stage -> (config file, the override that points its output at a directory)
STAGES = {
    "synth": ("synth_tiny.yaml", "output_dir"),
    "prepare": ("prepare_synth_demo.yaml", "output_dir"),
    "teacher": ("teacher_tiny.yaml", "output.run_dir"),
    "label": ("label_tiny.yaml", "output_dir"),
    "student": ("student_tiny.yaml", "output.run_dir"),
    "predict": ("predict_tiny.yaml", "output_dir"),
    "evaluate": ("evaluate_lmsys_synth.yaml", "output_dir"),
    "plan": ("plan_llama70b_a100.yaml", "out_dir"),
    "generate": ("generate_tiny.yaml", "output_dir"),
    "merge": ("merge_gemma2_9b_5folds.yaml", "output_dir"),
    "bundle": ("bundle_lmsys_kaggle.yaml", "output_dir"),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_refuses_a_foreign_output_dir(stage, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs' relative paths land in tmp_path, never in the repository
    config, key = STAGES[stage]
    directory = foreign_dir(tmp_path)
    if stage == "prepare":  # its sources must exist: they are opened only after the output dir is checked
        for source in yaml.safe_load((CONFIGS / config).read_text())["sources"]:
            Path(source["path"]).parent.mkdir(parents=True, exist_ok=True)
            Path(source["path"]).write_text("")
    status = main([stage, "--config", str(CONFIGS / config), "--set", f"{key}={directory}"])
    assert_refused(capsys, directory, status)


def test_report_refuses_a_foreign_output_dir(tmp_path, capsys):
    directory = foreign_dir(tmp_path)
    (tmp_path / "run").mkdir()
    assert_refused(capsys, directory, main(["report", str(tmp_path / "run"), "--set", f"output_dir={directory}"]))


def test_demo_refuses_a_foreign_run_dir(tmp_path, capsys):
    from arena_dist.demo import main as demo_main

    directory = foreign_dir(tmp_path)
    assert_refused(capsys, directory, demo_main(["--set", f"run_dir={directory}"]))


def test_export_refuses_a_foreign_folder(tmp_path):
    from arena_dist.errors import InputError
    from tiny_fixtures import make_teacher_export

    directory = foreign_dir(tmp_path)
    with pytest.raises(InputError, match="did not write"):
        make_teacher_export(directory)
    assert sorted(p.name for p in directory.iterdir()) == ["notes.txt"]


# --------------------------------------------------------------------------------------------- prepare in detail
def prepare_config(tmp_path: Path, output_dir, source_dir: Path | None = None) -> Path:
    source_dir = source_dir or tmp_path
    source_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(source_dir / "train.csv", good_lmsys_rows(30))
    path = tmp_path / "prepare.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(output_dir), "num_shards": 2, "num_folds": 3, "force": True,
                                    "sources": [{"name": "lmsys", "kind": "lmsys_csv", "path": str(csv_path)}]}))
    return path


def test_prepare_into_the_current_directory_touches_nothing(tmp_path, capsys, monkeypatch):
    config = prepare_config(tmp_path, ".")
    monkeypatch.chdir(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(["prepare", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arena-dist prepare: .: output_dir") and len(err.splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_prepare_never_replaces_the_folder_of_its_sources(tmp_path, capsys):
    """Even a folder of ours is not replaced when a source lives inside it."""
    raw = tmp_path / "raw"
    config = prepare_config(tmp_path, raw, source_dir=raw)
    (raw / OWNER_MARKER).write_text("{}")
    assert main(["prepare", "--config", str(config)]) == 2
    assert "contains the source" in capsys.readouterr().err
    assert (raw / "train.csv").exists()


def test_prepare_output_dir_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "dataset"
    target.write_text("a file")
    assert main(["prepare", "--config", str(prepare_config(tmp_path, target))]) == 2
    assert "not a directory" in capsys.readouterr().err and target.read_text() == "a file"


def test_prepare_replaces_its_own_dataset_and_a_failed_rebuild_keeps_the_old_one(tmp_path, capsys):
    dataset = tmp_path / "dataset"
    config = prepare_config(tmp_path, dataset)
    assert main(["prepare", "--config", str(config)]) == 0
    first = load_manifest(dataset)
    assert main(["prepare", "--config", str(config), "--set", "num_shards=3"]) == 0  # ours: replaced
    assert load_manifest(dataset)["num_shards"] == 3
    (tmp_path / "train.csv").write_text("id,prompt\n")  # the rebuild now fails on the source
    assert main(["prepare", "--config", str(config), "--set", "num_shards=2"]) == 2
    capsys.readouterr()
    assert load_manifest(dataset)["num_shards"] == 3 and verify_dataset(dataset)["train"] == first["splits"][
        "train"]["rows"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "prepare.yaml", "train.csv"]
    assert (dataset / MANIFEST).exists()


@pytest.mark.parametrize("stage,config,key", [("teacher", "teacher_tiny.yaml", "output.export_dir"),
                                              ("student", "student_tiny.yaml", "output.export_dir")])
def test_a_foreign_export_dir_is_refused_before_training(stage, config, key, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    directory = foreign_dir(tmp_path)
    status = main([stage, "--config", str(CONFIGS / config), "--set", f"{key}={directory}"])
    assert_refused(capsys, directory, status)


@pytest.mark.parametrize("mask", [0o077, 0o022])
def test_prepare_outputs_follow_the_users_umask(mask, tmp_path, capsys):
    import os

    dataset = tmp_path / "dataset"
    config = prepare_config(tmp_path, dataset)
    previous = os.umask(mask)
    try:
        assert main(["prepare", "--config", str(config)]) == 0
    finally:
        os.umask(previous)
    entries = [dataset, *dataset.rglob("*")]
    assert len(entries) > 5
    for path in entries:
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert path.stat().st_mode & 0o777 == expected, path
