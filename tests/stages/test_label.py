"""`arena-dist label` end to end through the CLI: two teachers on a real local Ray head, then their ensemble."""

import json

import numpy as np
import pytest
import yaml

from arena_dist.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tiny_fixtures import make_teacher_export
    from arena_dist.data.sources import SourceConfig
    from arena_dist.data.store import build_dataset
    from arena_dist.data.synth import generate_pool
    from arena_dist.ray_local import LocalRayHead

    root = tmp_path_factory.mktemp("label-stage")
    # 60 pool rows: 50 unlabelled, 10 from a preference file routed to the pool with their own labels kept
    generate_pool(50, 0, root / "pool.parquet", progress=False)
    with open(root / "prefs.jsonl", "w") as prefs:
        for i in range(10):
            prefs.write(json.dumps({"prompt": f"question {i}?", "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n")
    dataset = root / "dataset"
    build_dataset([SourceConfig(name="pool", kind="pool", path=root / "pool.parquet"),
                   SourceConfig(name="prefs", kind="pairwise_jsonl", path=root / "prefs.jsonl", use_as="pool")],
                  dataset, num_shards=2, num_folds=2, seed=0)
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


def test_label_two_teachers_and_ensemble(setup, monkeypatch, capsys):
    from arena_dist.artefacts import read_artefact
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
    # each teacher against the preference file's own labels, printed and recorded
    agreement = summary["teachers"]["teacher-a"]["source_agreement"]
    assert agreement["rows"] == 10 and list(agreement["by_source"]) == ["prefs"]
    assert f"[label teacher-a] agrees with the sources' own labels on {agreement['agreement']:.1%} of 10 rows" \
        in capsys.readouterr().out
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
    record = read_artefact(out)
    assert record.stage == "label" and record.status == "succeeded" and record.headline == "rows_per_s"
    assert record.rows == {"teacher-a": 60, "teacher-b": 60, "ensemble": 60} and record.headline_value() > 0
    assert record.outputs["teacher-a/status"] == str(out / "teacher-a" / "status.json")
    assert record.metrics["teacher-b/source_agreement"] == summary["teachers"]["teacher-b"]["source_agreement"][
        "agreement"]

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


def test_label_refuses_a_teacher_export_that_ships_code(setup, tmp_path, capsys, monkeypatch, ship_code):
    import shutil

    marker = tmp_path / "imported.txt"
    export = ship_code(shutil.copytree(setup["exports"]["teacher-a"], tmp_path / "shipping-teacher"), marker)
    config = write_config(tmp_path / "label.yaml", {
        "output_dir": str(tmp_path / "labels"),
        "input": {"dataset_dir": str(setup["dataset"]), "split": "pool"},
        "teachers": [{"id": "clean", "export_path": str(setup["exports"]["teacher-b"])},
                     {"id": "shipping", "export_path": str(export)}],
        "ray": {"num_actors": 1, "cpus_per_actor": 1},
    })
    for key, value in setup["head"].client_env().items():
        monkeypatch.setenv(key, value)
    assert main(["label", "--config", config, "--set", f"ray.address={setup['head'].address}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(export) in err and "teachers[1].trust_remote_code: true" in err, err
    assert not marker.exists()
    assert not (tmp_path / "labels" / "clean").exists()  # refused before any teacher ran


def test_hub_token_reaches_no_output_no_log_and_no_console(setup, tmp_path, files_containing):
    """A whole label run in a fresh driver process with a unique HF_TOKEN (the Ray head was started without it, so
    the actors get it only from the driver): the token is in no file under the run's output directory, the config's
    folder or the Ray session's logs, and not in the driver's stdout / stderr (where Ray also forwards the actors')."""
    import os
    import secrets
    import subprocess
    import sys

    token = "hf_" + secrets.token_hex(20)
    out = tmp_path / "labels"
    config = write_config(tmp_path / "label.yaml", {
        "output_dir": str(out),
        "input": {"dataset_dir": str(setup["dataset"]), "split": "pool"},
        "teachers": [{"id": "teacher-a", "export_path": str(setup["exports"]["teacher-a"])}],
        "batching": {"max_tokens": 4096},
        "ray": {"num_actors": 2, "cpus_per_actor": 0.5, "threads_per_actor": 1},
    })
    env = {**os.environ, **setup["head"].client_env(), "RAY_ADDRESS": setup["head"].address, "HF_TOKEN": token}
    done = subprocess.run([sys.executable, "-m", "arena_dist.cli", "label", "--config", config], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((out / "label_summary.json").read_text())["teachers"]["teacher-a"]["rows"] == 60
    assert token not in done.stdout and token not in done.stderr
    assert files_containing(tmp_path, token) == []
    assert files_containing(setup["head"].temp_dir, token) == []
