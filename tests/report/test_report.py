import json
import re
import time

import pandas as pd
import pytest

from arena_dist import cli
from arena_dist.artefacts import write_artefact

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def run_dir(tmp_path):
    """A run directory as the demo leaves it: synth data, a TensorBoard log, an evaluation, label-stage status."""
    run = tmp_path / "run"
    sets = [f"output_dir={run / 'synth'}", "n_train=50", "n_test=200", "n_pool=10", "n_wsdm_train=10",
            "n_wsdm_test=10", "n_pairwise=0"]
    assert cli.main(["synth", *sum((["--set", s] for s in sets), [])]) == 0

    answers = pd.read_csv(run / "synth" / "lmsys" / "test_answers.csv")
    predictions = pd.DataFrame({"id": answers["id"], "winner_model_a": answers["p_a"],
                                "winner_model_b": answers["p_b"], "winner_tie": answers["p_tie"]})
    predictions.to_csv(run / "preds.csv", index=False)
    assert cli.main(["evaluate", "--set", f"predictions={run / 'preds.csv'}",
                     "--set", f"answers={run / 'synth' / 'lmsys' / 'test_answers.csv'}",
                     "--set", f"output_dir={run / 'evaluate'}"]) == 0

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run / "teacher" / "tensorboard"))
    for step in range(1, 21):
        writer.add_scalar("train/loss", 1.1 - 0.01 * step, step)
        if step % 5 == 0:
            writer.add_scalar("eval/loss", 1.05 - 0.005 * step, step)
    writer.close()
    (run / "labels" / "t1").mkdir(parents=True)
    (run / "labels" / "t1" / "status.json").write_text(json.dumps({"shards_done": 4, "shards_total": 4,
                                                                   "padding_ratio": 1.04, "rows_per_s": 812.5}))
    # The label stage's record, as the stage writes it (the stage itself needs Ray and a teacher export).
    write_artefact(run / "labels", "label", outputs={"t1": run / "labels" / "t1",
                                                     "t1/status": run / "labels" / "t1" / "status.json"},
                   rows={"t1": 10}, headline="rows_per_s",
                   metrics={"rows_per_s": 812.5, "padding_ratio": 1.04, "t1/source_agreement": 0.6875},
                   started=time.time() - 2.5)
    return run


def test_report_renders_plots_tables_and_configs(run_dir):
    assert cli.main(["report", str(run_dir)]) == 0
    index = run_dir / "report" / "index.html"
    page = index.read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert any("training_teacher" in src for src in images)
    assert any("calibration" in src for src in images)
    for src in images:
        assert (index.parent / src).read_bytes()[:8] == PNG_MAGIC, src
    assert "share of achievable gain" in page and "by language" in page and "<td>en</td>" in page
    assert "padding_ratio" in page and "1.0400" in page
    assert "t1/source_agreement" in page and "0.6875" in page  # the teacher against a pool source's own labels
    assert page.count("<details>") >= 2  # synth's and evaluate's resolved configs
    # The Bayes optimum on the answers' own probabilities: the perfect predictor captures the whole gain.
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert metrics["log_loss"] == pytest.approx(metrics["bayes_log_loss"], abs=1e-6)


def test_report_on_missing_dir_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
