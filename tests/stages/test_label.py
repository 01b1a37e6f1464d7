"""`arena-dist label` end to end through the CLI: two teachers on a real local Ray head, then their ensemble."""

import json

import numpy as np
import pytest
import yaml

from arena_dist.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from arena_dist.label.tiny import make_pool_dataset, make_teacher_export
    from arena_dist.ray_local import LocalRayHead

    root = tmp_path_factory.mktemp("label-stage")
    dataset = make_pool_dataset(root / "dataset", n_rows=60, num_shards=2)
    exports = {name: make_teacher_export(root / name, seed=seed, max_length=256)
               for name, seed in (("teacher-a", 0), ("teacher-b", 1))}
    head = LocalRayHead(num_cpus=2, dashboard=False).start()
    try:
        yield {"root": root, "dataset": dataset, "exports": exports, "head": head}
    finally:
        head.stop()


def write_config(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_label_two_teachers_and_ensemble(setup, monkeypatch):
    from arena_dist.label.store import load_store_manifest, read_labels

    out = setup["root"] / "labels"
    config = write_config(setup["root"] / "label.yaml", {
        "output_dir": str(out),
        "input": {"dataset_dir": str(setup["dataset"]), "split": "pool"},
        "teachers": [{"id": name, "export_path": str(path)} for name, path in setup["exports"].items()],
        "batching": {"max_tokens": 4096},
        "ray": {"num_actors": 1, "cpus_per_actor": 1},
    })
    for key, value in setup["head"].client_env().items():  # the head's private auth token, as a user would export
        monkeypatch.setenv(key, value)
    assert main(["label", "--config", config, "--set", f"ray.address={setup['head'].address}"]) == 0
    summary = json.loads((out / "label_summary.json").read_text())
    assert summary["ensemble"]["members"] == ["teacher-a", "teacher-b"] and summary["ensemble"]["rows"] == 60
    assert (out / "resolved_config.yaml").exists()
    stores = {name: read_labels(out / name).to_pydict() for name in ("teacher-a", "teacher-b", "ensemble")}
    for name in ("teacher-a", "teacher-b"):
        manifest = load_store_manifest(out / name)
        assert manifest["rows"] == 60 and manifest["num_labels"] == 3 and manifest["swap_tta"] is True
        assert manifest["padding"]["padding_ratio"] >= 1.0
        status = json.loads((out / name / "status.json").read_text())
        assert status["shards_done"] == status["shards_total"] == 2 and status["phase"] == "finalized"
    by_id = {name: dict(zip(t["id"], t["p_mean"])) for name, t in stores.items()}
    for record_id, p in by_id["ensemble"].items():
        np.testing.assert_allclose(p, (np.array(by_id["teacher-a"][record_id])
                                       + np.array(by_id["teacher-b"][record_id])) / 2, atol=1e-12)
    assert by_id["teacher-a"] != by_id["teacher-b"]  # two different teachers really were averaged

    # A rerun finds everything committed: nothing is scored, no actor is even started.
    assert main(["label", "--config", config, "--set", f"ray.address={setup['head'].address}"]) == 0
    rerun = json.loads((out / "label_summary.json").read_text())
    assert all(t["shards_scored"] == 0 and t["shards_skipped"] == 2 for t in rerun["teachers"].values())

    # Members finished by separate jobs merge later with a merge-only config (no Ray, no input).
    merge_only = write_config(setup["root"] / "merge.yaml", {
        "output_dir": str(setup["root"] / "merged"),
        "ensemble": {"id": "geo", "method": "logit_mean", "merge_stores": [str(out / "teacher-a"),
                                                                           str(out / "teacher-b")]},
    })
    assert main(["label", "--config", merge_only]) == 0
    merged = load_store_manifest(setup["root"] / "merged" / "geo")
    assert merged["ensemble"]["method"] == "logit_mean" and merged["rows"] == 60


def test_config_errors_name_the_key(tmp_path, capsys):
    config = write_config(tmp_path / "bad.yaml", {"output_dir": str(tmp_path), "teachers": [],
                                                   "ensemble": {"merge_stores": ["x"]}, "ray": {"num_actors": 0}})
    assert main(["label", "--config", config]) == 2
    assert "ray.num_actors" in capsys.readouterr().err
    config = write_config(tmp_path / "none.yaml", {"output_dir": str(tmp_path)})
    assert main(["label", "--config", config]) == 2
    assert "nothing to do" in capsys.readouterr().err
    config = write_config(tmp_path / "typo.yaml", {"output_dir": str(tmp_path), "batching": {"max_token": 5}})
    assert main(["label", "--config", config]) == 2
    assert "batching.max_token: unknown key" in capsys.readouterr().err
