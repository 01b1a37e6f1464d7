"""The demo orchestrator: stages as real `ray job submit` jobs on a private head that is always stopped."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arena_dist.ray_local import processes_mentioning

REPO = Path(__file__).resolve().parents[1]


def demo_command(run_dir, *sets):
    command = [sys.executable, "-m", "arena_dist.demo", "--set", f"run_dir={run_dir}", "--set", "echo_logs=false"]
    for item in sets:
        command += ["--set", item]
    return command


def head_temp_dir(output: str) -> str:
    match = re.search(r"temp dir (\S+)", output)
    assert match, output
    return match.group(1)


@pytest.mark.slow
def test_demo_prefix_runs_as_ray_jobs_and_stops_its_head(tmp_path):
    run = tmp_path / "demo"
    done = subprocess.run(demo_command(run, "stages=[synth,prepare]"), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Ray head stopped" in done.stdout
    table = done.stdout.split("Ray head stopped", 1)[1]
    # time, rows and headline of each stage, from the records the jobs left
    assert re.search(r"^synth\s+[\d.]+ s\s+[\d.]+ s\s+lmsys [\d,]+.*bayes log loss 0\.\d{4}", table, re.M), table
    assert re.search(r"^prepare\s+[\d.]+ s\s+[\d.]+ s\s+\w+ [\d,]+, \w+ [\d,]+\s+quarantined \d", table, re.M), table
    assert "Bayes optimum on the test set: log loss 0." in table
    assert (run / "dataset" / "manifest.json").exists()
    assert (run / "logs" / "prepare.log").read_text().count("kept") >= 1
    assert processes_mentioning(head_temp_dir(done.stdout)) == []


@pytest.mark.slow
def test_demo_interrupted_still_stops_its_head(tmp_path):
    process = subprocess.Popen(demo_command(tmp_path / "demo"), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 300
    for line in process.stdout:
        lines.append(line)
        if line.startswith("=== prepare") or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=120)
    output = "".join(lines) + rest
    assert process.returncode != 0
    assert "Ray head stopped" in output
    assert processes_mentioning(head_temp_dir(output)) == []


def test_summary_row_is_the_stage_record_headline_first(tmp_path):
    from arena_dist.artefacts import read_artefact, write_artefact
    from arena_dist.demo import describe

    write_artefact(tmp_path, "student", rows={"train": 800, "eval": 200}, headline="eval_log_loss",
                   metrics={"eval_log_loss": 0.89, "eval_accuracy": 0.61, "steps": 40})
    seconds, rows, headline, others = describe(read_artefact(tmp_path))
    assert (rows, headline, others) == ("train 800, eval 200", "eval log loss 0.8900", "eval accuracy 0.6100, steps 40")
    assert seconds == "" and describe(None) == ("", "", "", "")  # not claimed in this process: no start time


def test_unknown_stage_name_is_refused():
    from arena_dist.config import load_config
    from arena_dist.demo import DemoConfig
    from arena_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="predict_no_tta"):
        load_config(DemoConfig, None, ["stages=[synth,predict_no_tta]"])
