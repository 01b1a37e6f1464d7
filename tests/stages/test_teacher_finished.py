"""A resubmitted teacher job whose run already finished with the same config does no training."""

import json

from arena_dist.artefacts import read_artefact
from arena_dist.config import config_hash, load_config
from arena_dist.stages import teacher
from arena_dist.train.launch import absolute_paths, finished_run


def finished_layout(tmp_path, config):
    config.run_dir.mkdir(parents=True)
    config.export_dir.mkdir(parents=True)
    (config.run_dir / "summary.json").write_text(json.dumps(
        {"steps": 8, "total_steps": 8, "export_dir": str(config.export_dir)}))
    (config.export_dir / "arena_dist.json").write_text(json.dumps({"config_hash": config_hash(config)}))


def test_finished_run_is_recognised_only_for_the_same_config(tmp_path):
    sets = [f"data.dataset_dir={tmp_path / 'data'}", f"ray.storage_path={tmp_path / 'ray'}",
            f"output.run_dir={tmp_path / 'run'}"]
    config = load_config(teacher.Config, "launch/configs/teacher_tiny.yaml", sets)
    absolute_paths(config)
    assert finished_run(config) is None
    finished_layout(tmp_path, config)
    assert finished_run(config)["steps"] == 8
    assert teacher.run(config)["steps"] == 8  # returns at once: no Ray, no training
    # A job that ended after its export but before its stage record (killed, timed out): the rerun writes the
    # record, so the next stage finds the export; a record already there is kept as it is.
    record = read_artefact(config.run_dir)
    assert record.status == "succeeded" and record.outputs["export"] == str(config.export_dir)
    before = (config.run_dir / "stage.json").read_bytes()
    teacher.run(config)
    assert (config.run_dir / "stage.json").read_bytes() == before

    changed = load_config(teacher.Config, "launch/configs/teacher_tiny.yaml", sets + ["training.lr=0.5"])
    absolute_paths(changed)
    assert finished_run(changed) is None

    summary = json.loads((config.run_dir / "summary.json").read_text())
    (config.run_dir / "summary.json").write_text(json.dumps({**summary, "steps": 4}))
    assert finished_run(config) is None  # stopped early: resume, not skip
