import json
import math

import numpy as np
import pandas as pd
import pytest

from arena_dist.cli import main
from arena_dist.errors import InputError
from arena_dist.evaluate.report import evaluate_files


def write_lmsys(tmp_path):
    answers = pd.DataFrame({
        "id": [11, 12, 13, 14],
        "winner_model_a": [1, 0, 0, 1], "winner_model_b": [0, 1, 0, 0], "winner_tie": [0, 0, 1, 0],
        "p_a": [0.6, 0.2, 0.3, 0.5], "p_b": [0.2, 0.6, 0.3, 0.3], "p_tie": [0.2, 0.2, 0.4, 0.2],
        "language": ["en", "en", "ru", "ru"],
    })
    answers.to_csv(tmp_path / "answers.csv", index=False)
    # predictions in another order, plus one extra id that is ignored
    preds = pd.DataFrame({
        "id": [14, 12, 11, 13, 99],
        "winner_model_a": [0.4, 0.1, 0.5, 0.3, 0.3], "winner_model_b": [0.4, 0.8, 0.25, 0.3, 0.3],
        "winner_tie": [0.2, 0.1, 0.25, 0.4, 0.4],
    })
    preds.to_csv(tmp_path / "preds.csv", index=False)
    return tmp_path / "preds.csv", tmp_path / "answers.csv"


def test_report_matches_hand_computation(tmp_path):
    preds, answers = write_lmsys(tmp_path)
    summary = evaluate_files(preds, answers, n_bins=5)
    assert summary["n"] == 4 and summary["num_classes"] == 3 and summary["extra_predictions_ignored"] == 1
    assert summary["log_loss"] == pytest.approx(-(math.log(0.5) + math.log(0.8) + math.log(0.4) + math.log(0.4)) / 4)
    assert summary["accuracy"] == pytest.approx(1.0)  # 14: A/B tie -> argmax picks A, the label
    bayes = -(math.log(0.6) + math.log(0.6) + math.log(0.4) + math.log(0.5)) / 4
    assert summary["bayes_log_loss"] == pytest.approx(bayes)
    assert summary["share_of_achievable_gain"] == pytest.approx(
        (math.log(3) - summary["log_loss"]) / (math.log(3) - bayes))
    ru = next(r for r in summary["by_language"] if r["group"] == "ru")
    assert ru["n"] == 2 and ru["log_loss"] == pytest.approx(-(math.log(0.4) + math.log(0.4)) / 2)


def test_cli_writes_tables_and_png(tmp_path):
    preds, answers = write_lmsys(tmp_path)
    out = tmp_path / "eval"
    assert main(["evaluate", "--set", f"predictions={preds}", "--set", f"answers={answers}",
                 "--set", f"output_dir={out}"]) == 0
    data = json.loads((out / "metrics.json").read_text())
    assert data["n"] == 4
    assert (out / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(out / "by_language.csv")
    assert list(table.columns) == ["language", "n", "log_loss", "accuracy"] and set(table["language"]) == {"en", "ru"}
    assert (out / "resolved_config.yaml").exists()


def test_wsdm_hard_predictions_give_accuracy(tmp_path):
    pd.DataFrame({"id": ["a", "b", "c"], "winner": ["model_a", "model_b", "model_b"], "p_a": [0.7, 0.4, 0.6],
                  "language": ["en", "zh", "en"]}).to_parquet(tmp_path / "answers.parquet")
    pd.DataFrame({"id": ["c", "b", "a"], "winner": ["model_a", "model_b", "model_a"]}).to_csv(tmp_path / "s.csv", index=False)
    summary = evaluate_files(tmp_path / "s.csv", tmp_path / "answers.parquet")
    assert summary["accuracy"] == pytest.approx(2 / 3) and summary["log_loss"] is None


def test_missing_prediction_is_an_error_naming_the_id(tmp_path):
    preds, answers = write_lmsys(tmp_path)
    frame = pd.read_csv(preds)
    frame[frame["id"] != 13].to_csv(preds, index=False)
    with pytest.raises(InputError, match="no prediction.*'13'"):
        evaluate_files(preds, answers)
