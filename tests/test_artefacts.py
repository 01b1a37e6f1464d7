"""Stage records (arena_dist.artefacts): the schema, one record per stage run, a failed stage's record, and the
report's stage table built from the records of real stage runs."""

import html
import json
import re

import pandas as pd
import pytest

from arena_dist import cli
from arena_dist.artefacts import ARTEFACT_FILE, StageArtefact, find_artefacts, read_artefact, write_artefact
from arena_dist.errors import InputError


def sets(*items):
    return [arg for item in items for arg in ("--set", item)]


def test_record_round_trip_and_headline_must_be_a_metric(tmp_path):
    written = write_artefact(tmp_path, "evaluate", inputs={"answers": tmp_path / "a.csv"}, rows=200,
                             outputs={"metrics": tmp_path / "metrics.json"}, metrics={"log_loss": 0.5, "n": 200,
                                                                                     "bad": float("nan")},
                             headline="log_loss", started=1.0)
    assert read_artefact(tmp_path) == written
    assert written.metrics == {"log_loss": 0.5, "n": 200.0, "bad": None} and written.seconds > 0
    assert written.outputs["metrics"] == str(tmp_path / "metrics.json")
    assert written.rows_text() == "200" and written.headline_text() == "log loss 0.5000"
    with pytest.raises(ValueError, match="headline 'accuracy'"):
        write_artefact(tmp_path, "evaluate", metrics={"log_loss": 0.5}, headline="accuracy")
    with pytest.raises(ValueError, match="names its headline"):
        write_artefact(tmp_path, "evaluate", metrics={"log_loss": 0.5})
    with pytest.raises(ValueError, match="carries its error"):
        write_artefact(tmp_path, "evaluate", status="failed")
    assert read_artefact(tmp_path / "nowhere") is None


def test_damaged_record_is_an_error_naming_the_file(tmp_path):
    (tmp_path / ARTEFACT_FILE).write_text(json.dumps({"stage": "synth"}))
    with pytest.raises(InputError, match=re.escape(str(tmp_path / ARTEFACT_FILE))):
        read_artefact(tmp_path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory from real (cheap, in-process) stage runs: synth, prepare, evaluate, plan, then report."""
    run = tmp_path_factory.mktemp("artefacts") / "run"
    assert cli.main(["synth", *sets(f"output_dir={run / 'synth'}", "n_train=60", "n_test=80", "n_pool=20",
                                    "n_wsdm_train=10", "n_wsdm_test=10", "n_pairwise=0", "progress=false",
                                    "prepare.num_shards=2")]) == 0
    prepare_config = read_artefact(run / "synth").outputs["prepare_config"]
    assert cli.main(["prepare", "--config", prepare_config, *sets(f"output_dir={run / 'dataset'}")]) == 0
    answers = read_artefact(run / "synth").outputs["lmsys/test_answers"]
    truth = pd.read_csv(answers)
    pd.DataFrame({"id": truth["id"], "winner_model_a": truth["p_a"], "winner_model_b": truth["p_b"],
                  "winner_tie": truth["p_tie"]}).to_csv(run / "preds.csv", index=False)
    assert cli.main(["evaluate", *sets(f"predictions={run / 'preds.csv'}", f"answers={answers}",
                                       f"output_dir={run / 'evaluate'}")]) == 0
    assert cli.main(["plan", *sets(f"out_dir={run / 'plan'}")]) == 0
    assert cli.main(["report", str(run)]) == 0
    return run


EXPECTED = {  # directory: (stage, headline metric)
    "synth": ("synth", "bayes_log_loss"), "dataset": ("prepare", "quarantined"),
    "evaluate": ("evaluate", "log_loss"), "plan": ("plan", "teacher_epoch_hours"), "report": ("report", "stages"),
}


def test_every_stage_run_leaves_one_record(run_dir):
    records = {path.relative_to(run_dir).as_posix(): record for path, record in find_artefacts(run_dir)}
    assert set(records) == set(EXPECTED)
    for directory, (stage, headline) in EXPECTED.items():
        record = records[directory]
        assert (record.stage, record.status, record.headline) == (stage, "succeeded", headline), directory
        assert record.headline_value() is not None and record.seconds is not None and record.seconds >= 0
        assert record.config_hash and record.started <= record.finished
        for path in record.outputs.values():
            assert (run_dir / directory / path).exists(), (directory, path)
    assert records["dataset"].rows["pool"] == 20 and records["dataset"].rows["train"] > 0
    assert records["evaluate"].rows == 80 and records["evaluate"].inputs["answers"].endswith("test_answers.csv")
    assert records["dataset"].inputs["lmsys"].endswith("train.csv")


def test_report_stage_table_has_time_rows_and_headline_of_every_stage(run_dir):
    page = (run_dir / "report" / "index.html").read_text()
    table = page.split("<h2>Stages</h2>", 1)[1].split("</table>", 1)[0]
    rows = [[html.unescape(cell) for cell in re.findall(r"<td>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", table) if "<td>" in row]
    by_dir = {row[0]: row for row in rows}
    assert set(by_dir) == set(EXPECTED) - {"report"}  # the report cannot time itself before it is written
    for directory, (stage, headline) in EXPECTED.items():
        if directory == "report":
            continue
        _, shown_stage, status, seconds, count, shown_headline = by_dir[directory]
        assert (shown_stage, status) == (stage, "succeeded")
        assert re.fullmatch(r"\d+\.\d s", seconds), seconds
        assert shown_headline.startswith(headline.replace("_", " ") + " "), shown_headline
        assert count or stage == "plan", directory  # the planner reads no rows
    assert by_dir["evaluate"][4] == "80"


def test_a_stage_that_fails_after_claiming_its_directory_records_the_error(tmp_path, capsys):
    out = tmp_path / "evaluate"
    assert cli.main(["evaluate", *sets(f"predictions={tmp_path / 'missing.csv'}", f"answers={tmp_path / 'x.csv'}",
                                       f"output_dir={out}")]) == 2
    error = capsys.readouterr().err.strip()
    record = read_artefact(out)
    assert record.status == "failed" and record.stage == "evaluate" and record.headline is None
    assert record.error and record.error in error and "\n" not in record.error


def test_stage_records_validate_as_the_schema(run_dir):
    for path in run_dir.rglob(ARTEFACT_FILE):
        StageArtefact.model_validate_json(path.read_text())
