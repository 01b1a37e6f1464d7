"""evaluate refuses what it cannot score honestly: one line naming the file (exit 2), never a traceback, never NaN."""

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from arena_dist.cli import main

GOOD_PREDICTIONS = {"id": [1, 2, 3], "winner_model_a": [0.6, 0.2, 0.3], "winner_model_b": [0.3, 0.7, 0.3],
                    "winner_tie": [0.1, 0.1, 0.4]}
LMSYS_ANSWERS = {"id": [1, 2, 3], "winner_model_a": [1, 0, 0], "winner_model_b": [0, 1, 0], "winner_tie": [0, 0, 1]}
WSDM_ANSWERS = {"id": [1, 2, 3], "winner": ["model_a", "model_b", "model_b"]}


def write(path, columns):
    frame = pd.DataFrame(columns)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def evaluate(tmp_path, predictions, answers, *sets):
    args = ["evaluate", "--set", f"predictions={predictions}", "--set", f"answers={answers}",
            "--set", f"output_dir={tmp_path / 'eval'}", *[x for s in sets for x in ("--set", s)]]
    return main(args)


def refused(capsys, tmp_path, predictions, answers, *sets) -> str:
    """Runs evaluate, expects exit 2 and one stderr line; returns that line."""
    assert evaluate(tmp_path, predictions, answers, *sets) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("arena-dist evaluate: "), err
    return err


def strict_json(path):
    def no_constant(name):
        raise AssertionError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=no_constant)


@pytest.mark.parametrize("onehot", [[0.5, 0.5, 0], [1, 1, 0], [0, 0, 0], [2, -1, 0], [1, 0, float("nan")]])
def test_answers_must_be_exactly_one_hot(onehot, tmp_path, capsys):
    answers = dict(LMSYS_ANSWERS, winner_model_a=[onehot[0], 0, 0], winner_model_b=[onehot[1], 1, 0],
                   winner_tie=[onehot[2], 0, 1])
    err = refused(capsys, tmp_path, write(tmp_path / "p.csv", GOOD_PREDICTIONS), write(tmp_path / "a.csv", answers))
    assert "a.csv" in err and "row 1 (id '1')" in err


@pytest.mark.parametrize("column, values, message", [
    ("winner", ["model_a", "B", "tie"], "column 'winner' row 2 (id '2') is 'B'"),
    ("winner", ["model_a", None, "tie"], "column 'winner' row 2"),
    ("label", [0, 3, 1], "column 'label' row 2 (id '2') is 3, not 0, 1 or 2"),
    ("label", [0, 1.5, 1], "is 1.5, not 0, 1 or 2"),
    ("label", [0, -1, 1], "is -1, not 0, 1 or 2"),
    ("label", [0, None, 1], "column 'label' row 2 (id '2') is empty"),
    ("label", [0, "b", 1], "column 'label' row 2 (id '2') is not a number (got 'b')"),
])
def test_winner_and_label_values_are_checked(column, values, message, tmp_path, capsys):
    answers = write(tmp_path / "a.csv", {"id": [1, 2, 3], column: values})
    err = refused(capsys, tmp_path, write(tmp_path / "p.csv", GOOD_PREDICTIONS), answers)
    assert "a.csv" in err and message in err


@pytest.mark.parametrize("row, rule", [
    ([-0.1, 0.6, 0.5], r"must each lie in \[0, 1\]"),
    ([1.2, -0.1, -0.1], r"must each lie in \[0, 1\]"),
    ([0.5, 0.5, 0.1], "must sum to 1"),
    ([0.2, 0.2, 0.2], "must sum to 1"),
    ([float("nan"), 0.5, 0.5], "column 'winner_model_a' row 2 .* is empty"),
    ([float("inf"), 0.0, 0.0], "are not all finite"),
    (["x", 0.5, 0.5], "column 'winner_model_a' row 2 .* is not a number"),
])
def test_predictions_follow_the_competition_rules(row, rule, tmp_path, capsys):
    predictions = dict(GOOD_PREDICTIONS, winner_model_a=[0.6, row[0], 0.3], winner_model_b=[0.3, row[1], 0.3],
                       winner_tie=[0.1, row[2], 0.4])
    err = refused(capsys, tmp_path, write(tmp_path / "p.csv", predictions), write(tmp_path / "a.csv", LMSYS_ANSWERS))
    assert "p.csv" in err and "row 2 (id '2')" in err
    assert re.search(rule, err), err


def test_sums_within_the_competition_tolerance_are_accepted(tmp_path):
    predictions = dict(GOOD_PREDICTIONS, winner_tie=[0.1 + 5e-7, 0.1, 0.4])
    assert evaluate(tmp_path, write(tmp_path / "p.csv", predictions), write(tmp_path / "a.csv", LMSYS_ANSWERS)) == 0


def test_two_class_evaluation_refuses_tie_mass_instead_of_nan(tmp_path, capsys):
    predictions = write(tmp_path / "p.csv", dict(GOOD_PREDICTIONS, winner_model_a=[0.6, 0.2, 0.0],
                                                 winner_model_b=[0.4, 0.8, 0.0], winner_tie=[0.0, 0.0, 1.0]))
    answers = write(tmp_path / "a.csv", WSDM_ANSWERS)
    err = refused(capsys, tmp_path, predictions, answers, "label_mode=2class")
    assert "p.csv" in err and "label_mode 2class" in err and "id '3' (winner_tie 1)" in err
    # auto sees the tie mass and scores 3 classes: a finite log loss, and the all-tie row is a miss
    assert evaluate(tmp_path, predictions, answers) == 0
    metrics = strict_json(tmp_path / "eval" / "metrics.json")
    assert metrics["num_classes"] == 3 and np.isfinite(metrics["log_loss"])
    assert metrics["accuracy"] == pytest.approx(2 / 3)


def test_two_class_predictions_without_tie_mass_are_scored_as_two_classes(tmp_path):
    predictions = write(tmp_path / "p.parquet", dict(GOOD_PREDICTIONS, winner_model_a=[0.6, 0.2, 0.4],
                                                     winner_model_b=[0.4, 0.8, 0.6], winner_tie=[0.0, 0.0, 0.0]))
    assert evaluate(tmp_path, predictions, write(tmp_path / "a.csv", WSDM_ANSWERS), "label_mode=2class") == 0
    metrics = strict_json(tmp_path / "eval" / "metrics.json")
    assert metrics["num_classes"] == 2 and metrics["accuracy"] == 1.0
    assert metrics["log_loss"] == pytest.approx(-(np.log(0.6) + np.log(0.8) + np.log(0.6)) / 3)


def test_two_class_mode_refuses_tie_answers_and_tie_winners(tmp_path, capsys):
    predictions = write(tmp_path / "p.csv", GOOD_PREDICTIONS)
    err = refused(capsys, tmp_path, predictions, write(tmp_path / "a.csv", LMSYS_ANSWERS), "label_mode=2class")
    assert "a.csv" in err and "1 answer(s) are ties" in err and "id '3'" in err
    hard = write(tmp_path / "h.csv", {"id": [1, 2, 3], "winner": ["model_a", "tie", "model_b"]})
    err = refused(capsys, tmp_path, hard, write(tmp_path / "w.csv", WSDM_ANSWERS), "label_mode=2class")
    assert "h.csv" in err and "winner 'tie'" in err


def corrupt_files(tmp_path):
    """name -> a predictions file evaluate cannot use."""
    good = write(tmp_path / "good.parquet", GOOD_PREDICTIONS).read_bytes()
    noise = np.random.default_rng(0).bytes(4096)
    files = {
        "zero_bytes.csv": b"", "zero_bytes.parquet": b"", "random.csv": noise, "random.parquet": noise,
        "truncated.parquet": good[: len(good) // 2], "parquet_named.csv": good,
        "truncated.csv": b'id,winner_model_a,winner_model_b,winner_tie\n1,0.6,0.3,0.1\n2,0.2,0.7',
        "open_quote.csv": b'id,winner_model_a,winner_model_b,winner_tie\n1,0.6,0.3,0.1\n"2,0.2,0.7,0.1\n',
        "header_only.csv": b"id,winner_model_a,winner_model_b,winner_tie\n",
        "wrong_columns.csv": b"id,a,b,c\n1,0.6,0.3,0.1\n",
        "no_id.csv": b"winner_model_a,winner_model_b,winner_tie\n0.6,0.3,0.1\n",
        "empty_id.csv": b"id,winner_model_a,winner_model_b,winner_tie\n,0.6,0.3,0.1\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    pd.DataFrame({c: pd.Series([], dtype=float) for c in GOOD_PREDICTIONS}).to_parquet(tmp_path / "no_rows.parquet")
    pd.DataFrame({"id": [1], "probability": [0.5]}).to_parquet(tmp_path / "wrong_columns.parquet")
    (tmp_path / "directory.csv").mkdir()
    return sorted([*files, "no_rows.parquet", "wrong_columns.parquet", "directory.csv", "missing.csv"])


CORRUPT = ["zero_bytes.csv", "zero_bytes.parquet", "random.csv", "random.parquet", "truncated.parquet",
           "parquet_named.csv", "truncated.csv", "open_quote.csv", "header_only.csv", "wrong_columns.csv", "no_id.csv",
           "empty_id.csv", "no_rows.parquet", "wrong_columns.parquet", "directory.csv", "missing.csv"]


def test_every_corrupt_case_is_tested(tmp_path):
    assert corrupt_files(tmp_path) == sorted(CORRUPT)


@pytest.mark.parametrize("name", CORRUPT)
def test_unusable_files_are_one_line_naming_the_file(name, tmp_path, capsys):
    corrupt_files(tmp_path)
    answers = write(tmp_path / "answers.csv", LMSYS_ANSWERS)
    err = refused(capsys, tmp_path, tmp_path / name, answers)
    assert str(tmp_path / name) in err
    # the same file as the answers is refused the same way
    err = refused(capsys, tmp_path, write(tmp_path / "p.csv", GOOD_PREDICTIONS), tmp_path / name)
    assert str(tmp_path / name) in err


def test_a_fresh_process_prints_no_traceback(tmp_path):
    corrupt_files(tmp_path)
    answers = write(tmp_path / "answers.csv", LMSYS_ANSWERS)
    for name in ("random.parquet", "random.csv"):
        done = subprocess.run([sys.executable, "-m", "arena_dist.cli", "evaluate", "--set",
                               f"predictions={tmp_path / name}", "--set", f"answers={answers}",
                               "--set", f"output_dir={tmp_path / 'eval'}"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith(f"arena-dist evaluate: {tmp_path / name}: cannot read as ")


def test_metrics_json_is_strict(tmp_path):
    from arena_dist.evaluate.report import write_metrics_json

    predictions = write(tmp_path / "p.csv", GOOD_PREDICTIONS)
    answers = write(tmp_path / "a.csv", dict(LMSYS_ANSWERS, p_a=[0.5, 0.2, 0.3], p_b=[0.3, 0.5, 0.3],
                                             p_tie=[0.2, 0.3, 0.4]))
    assert evaluate(tmp_path, predictions, answers, "n_bins=20") == 0
    metrics = strict_json(tmp_path / "eval" / "metrics.json")
    assert metrics["calibration"]["top_label"][0]["mean_predicted"] is None  # an empty bin is null
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_metrics_json(tmp_path / "nan.json", {"log_loss": float("nan")})
    assert not (tmp_path / "nan.json").exists()


def test_true_probabilities_in_the_answers_are_checked(tmp_path, capsys):
    answers = write(tmp_path / "a.csv", dict(LMSYS_ANSWERS, p_a=[0.5, 0.2, 0.3], p_b=[0.3, 0.5, 0.3],
                                             p_tie=[0.2, 0.3, -0.4]))
    err = refused(capsys, tmp_path, write(tmp_path / "p.csv", GOOD_PREDICTIONS), answers)
    assert "a.csv" in err and "row 3 (id '3')" in err and "p_tie=-0.4" in err
