"""Benchmark of predict's time budget on this machine (CPU, tiny random exports, ~200 synthetic LMSYS rows).

1. Budget use: 20 runs of the budget loop (`arena_dist.predict.budget`) on the wall clock, each with a random budget
   between "the first pass and a little refinement" and "most of the refinement": the share of the time left after
   the first submission that refinement used (target >= 90% of what remains before the safety margin), and whether
   any run ended past its deadline. Two members, the default refinement (member 0 swapped, member 1 both orders).
2. Kill: the predict stage in a child process with a budget, SIGKILLed at random moments during refinement; the
   submission on disk is checked the moment the child is gone (every id once, rows summing to 1). Valid by
   construction (every write is atomic), so the time from kill to a valid submission is the check's own time.

    python -m bench.predict_budget        # ~2-4 minutes; prints JSON, writes no file
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The tiny model fixtures live with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                     "DS_ACCELERATOR": "cpu"}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
ROWS = 200
RUNS = 20
KILLS = 3
TARGET_SHARE = 0.9
# Wider than the test exports, so a forward pass (not Python) dominates and budgets last seconds, not fractions.
BENCH_MODEL = dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256)


def machine_info() -> dict:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__}


def make_inputs(work: Path) -> dict:
    from tiny_fixtures import make_teacher_export

    from arena_dist.stages import synth

    synth.run(synth.Config(output_dir=str(work / "synth"), n_train=0, n_test=ROWS, n_pool=0, n_wsdm_train=0,
                           n_wsdm_test=0, n_pairwise=0, progress=False))
    return {"test_file": work / "synth" / "lmsys" / "test.csv",
            "exports": [make_teacher_export(work / f"m{seed}", seed=seed, head_std=0.5, max_length=256, **BENCH_MODEL)
                        for seed in (1, 2)]}


def budget_runs(inputs: dict, work: Path, rng: random.Random) -> dict:
    """The budget loop on the wall clock with the predict stage's default safety margin and real submission
    writes; budgets drawn between the first pass plus 10% and plus 90% of a full refinement."""
    from arena_dist.predict.budget import Pass, predict_in_budget
    from arena_dist.predict.infer import LocalScorer
    from arena_dist.predict.submission import build_submission, write_submission
    from arena_dist.predict.testfile import read_test_file
    from arena_dist.stages.predict import Config, default_refine, resolve_budget

    ids, records, _ = read_test_file(inputs["test_file"])
    members = [{"export_path": str(e), "dtype": "float32", "quantization": "auto", "trust_remote_code": False}
               for e in inputs["exports"]]
    scorer = LocalScorer(members, max_tokens=4096, threads=1)
    passes = [Pass(p["member"], p["swap"]) for p in default_refine(len(members))]

    def publish(probs):
        write_submission(work / "submission.csv", build_submission(ids, probs, "lmsys"), ids, "lmsys")

    quiet = lambda line: None  # noqa: E731
    predict_in_budget(scorer, records, passes, [1.0, 1.0], 3, log=quiet)  # warm-up (first forwards are slower)
    started = time.monotonic()
    full = predict_in_budget(scorer, records, passes, [1.0, 1.0], 3, publish=publish, log=quiet)
    full_seconds = time.monotonic() - started
    refine_seconds = full_seconds - full.first_pass_seconds
    runs = []
    for _ in range(RUNS):
        budget = full.first_pass_seconds + rng.uniform(0.1, 0.9) * refine_seconds
        config = Config(test_file="t.csv", output_dir="out", models=[{"export_path": "x"}], time_budget=budget)
        started = time.monotonic()
        deadline, margin = resolve_budget(config, started)
        outcome = predict_in_budget(scorer, records, passes, [1.0, 1.0], 3, "entropy", deadline, margin, publish,
                                    log=quiet)
        ended = time.monotonic()
        usable = deadline - margin - outcome.refine_started  # what remained after the first submission
        runs.append({
            "first_pass_left_time": usable > 0,  # the first pass is never cut short: a slow one uses up a budget
            "budget_s": round(budget, 3), "safety_margin_s": round(margin, 3),
            "first_pass_s": round(outcome.first_pass_seconds, 3),
            "refine_s": round(ended - outcome.refine_started, 3),
            "share_of_remaining_before_margin": round((ended - outcome.refine_started) / usable, 4),
            "share_of_remaining": round((ended - outcome.refine_started) / (deadline - outcome.refine_started), 4),
            "refined_rows": sum(p.rows for p in outcome.passes[1:]),
            "chunks": len(outcome.chunks),
            "seconds_past_deadline": round(max(0.0, ended - deadline), 4),
            "seconds_past_margin": round(max(0.0, ended - (deadline - margin)), 4),
        })
    scorer.close()
    refined = [r for r in runs if r["first_pass_left_time"]]
    shares = [r["share_of_remaining_before_margin"] for r in refined]
    return {
        "rows": len(records), "members": len(members), "passes": [p.name for p in passes],
        "unbudgeted_seconds": round(full_seconds, 3),
        "unbudgeted_first_pass_seconds": round(full.first_pass_seconds, 3),
        "runs": runs,
        # over the runs whose first pass left time for refinement
        "runs_with_time_to_refine": len(refined),
        "share_used_min": min(shares) if shares else None,
        "share_used_mean": round(sum(shares) / len(shares), 4) if shares else None,
        "runs_meeting_target": sum(share >= TARGET_SHARE for share in shares), "target_share": TARGET_SHARE,
        "any_run_past_deadline": any(r["seconds_past_deadline"] > 0 for r in runs),
        "any_refinement_past_deadline": any(r["seconds_past_deadline"] > 0 for r in refined),
    }


def kill_runs(inputs: dict, work: Path, rng: random.Random) -> dict:
    """The predict stage in a child process (three refinement passes, two rows per forward so each lasts a while),
    SIGKILLed at a random moment after refinement has begun; the submission is checked as soon as the child is
    gone."""
    from arena_dist.predict.submission import check_submission, read_table
    from arena_dist.predict.testfile import read_test_file

    ids, _, _ = read_test_file(inputs["test_file"])
    models = json.dumps([{"export_path": str(e)} for e in inputs["exports"]])
    kills = []
    for index in range(KILLS):
        out = work / f"kill{index}"
        log = work / f"kill{index}.log"
        writes = rng.randint(1, 3)  # the first write ends the first pass; later ones end refinement passes
        delay = rng.uniform(0.0, 0.3)  # then a random moment inside the next pass
        command = [sys.executable, "-m", "arena_dist.cli", "predict", "--set", f"test_file={inputs['test_file']}",
                   "--set", f"output_dir={out}", "--set", f"models={models}", "--set", "time_budget=600",
                   "--set", "threads=1", "--set", "batching.max_rows=2"]
        with log.open("w") as stdout:
            child = subprocess.Popen(command, stdout=stdout, stderr=subprocess.DEVNULL, cwd=REPO,
                                     env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
        while child.poll() is None and log.read_text().count("submission written") < writes:
            time.sleep(0.002)
        time.sleep(delay)
        finished = child.poll() is not None
        child.send_signal(signal.SIGKILL)
        child.wait()
        killed = time.perf_counter()
        check_submission(read_table(out / "submission.csv"), ids, "lmsys")  # raises if not valid
        valid = time.perf_counter()
        kills.append({"after_writes": writes, "then_seconds": round(delay, 3), "finished_before_kill": finished,
                      "seconds_from_kill_to_valid_submission": round(valid - killed, 4),
                      "temporary_files_left": len([p for p in out.iterdir() if p.name.endswith(".tmp")])})
    return {"kills": kills, "all_valid": True}  # check_submission raised otherwise


def run() -> dict:
    rng = random.Random(0)
    work = Path(tempfile.mkdtemp(prefix="bench-predict-budget-"))
    # the stages' own lines (synth, progress) go to stderr: stdout is the JSON alone
    with contextlib.redirect_stdout(sys.stderr):
        try:
            return _run(work, rng)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _run(work: Path, rng: random.Random) -> dict:
    info = machine_info()
    inputs = make_inputs(work)
    return {"machine": info, "budget": budget_runs(inputs, work, rng), "kill": kill_runs(inputs, work, rng)}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
