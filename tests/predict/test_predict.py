"""predict on synthetic LMSYS / WSDM test files with tiny exports, without a time budget: valid submissions, the
label stage's swap-TTA reproduced, refinement on a fraction of the rows, a second member's weighted blend."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from arena_dist.cli import main
from arena_dist.errors import InputError
from arena_dist.predict.ensemble import uncertainty
from arena_dist.predict.infer import load_model, score
from arena_dist.predict.submission import check_submission, read_table
from arena_dist.predict.testfile import read_test_file


def models(*exports, **settings) -> str:
    """`--set models=[...]` (JSON is YAML) for exports given as paths or (path, weight) pairs."""
    specs = [{"export_path": str(e)} if not isinstance(e, tuple) else {"export_path": str(e[0]), "weight": e[1]}
             for e in exports]
    return "models=" + json.dumps([{**spec, **settings} for spec in specs])


def run_predict(files, out, *sets):
    args = ["predict", "--set", f"test_file={files['lmsys']}", "--set", f"output_dir={out}",
            "--set", models(files["model3"]), *[x for s in sets for x in ("--set", s)]]
    assert main(args) == 0
    return pd.read_parquet(out / "probabilities.parquet")


@pytest.mark.slow
def test_lmsys_submission_with_full_swap_tta_matches_the_label_stage_reference(files, tmp_path):
    from arena_dist.label.scoring import score_records

    probs = run_predict(files, tmp_path)  # the default refinement of one member: swap-TTA on every row
    ids, records, counts = read_test_file(files["lmsys"])
    submission = read_table(tmp_path / "submission.csv")
    check_submission(submission, ids, "lmsys")
    assert list(submission["id"]) == ids and counts["rows"] == 60
    assert probs["pass_m0_direct"].all() and probs["pass_m0_swap"].all()
    loaded = load_model(str(files["model3"]))
    reference = score_records(loaded.model, loaded.tokenizer, loaded.fmt, records, 4096, swap_tta=True).p_mean
    np.testing.assert_allclose(probs[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy(), reference,
                               atol=1e-6)
    # evaluate reads the probabilities file against the synthetic answers
    assert main(["evaluate", "--set", f"predictions={tmp_path / 'probabilities.parquet'}",
                 "--set", f"answers={files['lmsys_answers']}", "--set", f"output_dir={tmp_path / 'eval'}"]) == 0
    assert (tmp_path / "eval" / "calibration.png").exists()
    from arena_dist.artefacts import read_artefact

    record = read_artefact(tmp_path)
    assert (record.stage, record.rows, record.headline) == ("predict", 60, "rows_per_second")
    assert record.outputs["probabilities"] == str(tmp_path / "probabilities.parquet") and record.seconds > 0


@pytest.mark.slow
def test_swap_tta_on_a_fraction_and_a_second_member_on_the_most_uncertain_rows(files, tmp_path):
    _, records, _ = read_test_file(files["lmsys"])
    first = load_model(str(files["model3"]))
    direct, _ = score(first, records, False, 4096, None)
    swapped_back, _ = score(first, records, True, 4096, None)

    probs = run_predict(files, tmp_path / "a", 'refine=[{member: 0, swap: true, fraction: 0.25}]')
    flags = probs["pass_m0_swap"].to_numpy()
    assert flags.sum() == math.ceil(0.25 * 60)
    assert uncertainty(direct, "entropy")[flags].min() >= uncertainty(direct, "entropy")[~flags].max()
    p = probs[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy()
    np.testing.assert_allclose(p[~flags], direct[~flags], atol=1e-6)
    np.testing.assert_allclose(p[flags], (direct[flags] + swapped_back[flags]) / 2, atol=1e-6)

    # member weights 3 : 1, the second member in its direct order on the half the first is least sure of (margin)
    out = tmp_path / "b"
    assert main(["predict", "--set", f"test_file={files['lmsys']}", "--set", f"output_dir={out}",
                 "--set", models((files["model3"], 3), (files["model3b"], 1)),
                 "--set", "refine=[{member: 1, swap: false, fraction: 0.5}]", "--set", "uncertainty=margin"]) == 0
    blended = pd.read_parquet(out / "probabilities.parquet")
    second = load_model(str(files["model3b"]))
    p2, _ = score(second, records, False, 4096, None)
    mask = blended["pass_m1_direct"].to_numpy()
    assert mask.sum() == 30 and [c for c in blended.columns if c.startswith("pass_")] == ["pass_m0_direct",
                                                                                        "pass_m1_direct"]
    margin = uncertainty(direct, "margin")
    assert margin[mask].min() >= margin[~mask].max()
    q = blended[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy()
    np.testing.assert_allclose(q[mask], 0.75 * direct[mask] + 0.25 * p2[mask], atol=1e-6)
    np.testing.assert_allclose(q[~mask], direct[~mask], atol=1e-6)


@pytest.mark.slow
def test_two_replicas_write_the_submission_one_process_writes(files, tmp_path):
    """The stage on 2 worker processes (one replica per device; CPU here): an ensemble with its default refinement
    gives the 1-process probabilities, every test id exactly once."""
    ensemble = models((files["model3"], 2), (files["model3b"], 1))
    one = run_predict(files, tmp_path / "one", ensemble)
    two = run_predict(files, tmp_path / "two", ensemble, "replicas=2")
    ids, _, _ = read_test_file(files["lmsys"])
    submission = read_table(tmp_path / "two" / "submission.csv")
    check_submission(submission, ids, "lmsys")
    assert list(two["id"]) == ids == list(one["id"]) and two["id"].is_unique
    columns = ["winner_model_a", "winner_model_b", "winner_tie"]
    np.testing.assert_allclose(two[columns].to_numpy(), one[columns].to_numpy(), atol=1e-5, rtol=0)
    passes = [c for c in two.columns if c.startswith("pass_")]
    assert len(passes) == 4 and two[passes].all().all()  # every pass of the default refinement on every row
    summary = json.loads((tmp_path / "two" / "predict_summary.json").read_text())
    assert summary["replicas"] == 2


def test_one_resident_model_at_a_time_scores_like_all_resident(files):
    """`resident_models: one`: a member's model is loaded when it first scores and the other members' models are
    dropped first; encoding and label counts need no model; the probabilities are those of all-resident."""
    from arena_dist.predict.infer import LocalScorer

    _, records, _ = read_test_file(files["lmsys"])
    specs = [{"export_path": str(files[name]), "dtype": "float32", "quantization": "auto",
              "trust_remote_code": False, "base_path": None} for name in ("model3", "model3b", "model2")]
    every = LocalScorer(specs, 4096)
    one = LocalScorer(specs, 4096, resident="one")
    assert every.loaded_members() == [0, 1, 2] and one.loaded_members() == [0]
    assert [one.num_labels(m) for m in range(3)] == [3, 3, 2] and one.loaded_members() == [0]
    for member in (1, 0, 2):
        sequences = one.encode(member, records, swap=member == 1)
        assert sequences == every.encode(member, records, swap=member == 1)
        np.testing.assert_allclose(one.score(member, sequences)[0], every.score(member, sequences)[0], atol=1e-6)
        assert one.loaded_members() == [member]


@pytest.mark.slow
def test_wsdm_submission_and_two_class_guard(files, tmp_path, capsys):
    assert main(["predict", "--set", f"test_file={files['wsdm']}", "--set", f"output_dir={tmp_path}",
                 "--set", models(files["model2"])]) == 0
    submission = read_table(tmp_path / "submission.csv")
    ids, _, _ = read_test_file(files["wsdm"])
    assert list(submission.columns) == ["id", "winner"]
    check_submission(submission, ids, "wsdm")
    # a 2-class model cannot fill LMSYS' tie column: one clear error, no submission written
    assert main(["predict", "--set", f"test_file={files['lmsys']}", "--set", f"output_dir={tmp_path / 'x'}",
                 "--set", models(files["model3"], files["model2"])]) == 2
    assert "models.1.export_path: a 2-class model cannot predict LMSYS ties" in capsys.readouterr().err
    assert not (tmp_path / "x" / "submission.csv").exists()


def test_test_file_rows_are_never_dropped_and_duplicates_refused(tmp_path):
    path = tmp_path / "test.csv"
    pd.DataFrame({"id": [1, 2, 3], "prompt": ['["hi"]', "not json", '["q"]'],
                  "response_a": ['["a"]', '["x"]', '["same"]'], "response_b": ['["b"]', '["y"]', '["same"]']}
                 ).to_csv(path, index=False)
    ids, records, counts = read_test_file(path)
    assert ids == ["1", "2", "3"] and counts["lenient_rows"] == 2
    assert records[1]["prompt"] == ["not json"]
    pd.DataFrame({"id": [1, 1], "prompt": ['["a"]'] * 2, "response_a": ['["a"]'] * 2,
                  "response_b": ['["b"]'] * 2}).to_csv(path, index=False)
    with pytest.raises(InputError, match="duplicate id '1'"):
        read_test_file(path)


def shipping_copy(files, tmp_path, ship_code, name="model3"):
    """A copy of a tiny export that ships Python code (and whose metadata claims trust_remote_code for itself)."""
    import shutil

    marker = tmp_path / f"{name}-imported.txt"
    return ship_code(shutil.copytree(files[name], tmp_path / f"{name}-shipping"), marker), marker


@pytest.mark.slow
def test_predict_refuses_an_export_that_ships_code(files, tmp_path, capsys, ship_code):
    export, marker = shipping_copy(files, tmp_path, ship_code)
    out = tmp_path / "out"
    args = ["predict", "--set", f"test_file={files['lmsys']}", "--set", f"output_dir={out}"]
    assert main([*args, "--set", models(export)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(export) in err and "models.0.trust_remote_code: true" in err
    # Every member is checked before the first is even loaded.
    assert main([*args, "--set", models(files["model3b"], export)]) == 2
    assert "models.1.trust_remote_code: true" in capsys.readouterr().err
    assert not marker.exists() and not (out / "submission.csv").exists()


@pytest.mark.slow
def test_predict_runs_shipped_code_when_its_config_trusts_it(files, tmp_path, ship_code):
    import os
    import subprocess
    import sys

    export, marker = shipping_copy(files, tmp_path, ship_code)
    # A fresh process with its own modules cache: transformers copies the shipped code there before importing it.
    done = subprocess.run([sys.executable, "-m", "arena_dist.cli", "predict", "--set", f"test_file={files['lmsys']}",
                           "--set", f"output_dir={tmp_path / 'out'}",
                           "--set", models(export, trust_remote_code=True), "--set", "refine=[]"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker.read_text() == "imported"
    check_submission(read_table(tmp_path / "out" / "submission.csv"), read_test_file(files["lmsys"])[0], "lmsys")
