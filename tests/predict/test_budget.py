"""predict under a time budget: the refinement a budget allows goes to the most uncertain rows and ends before the
deadline (time made deterministic: a clock that advances by the tokens scored), and a run killed mid-refinement
(SIGKILL, SIGTERM) leaves a valid submission."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from arena_dist.classes import to_classes
from arena_dist.label.probs import swap_back
from arena_dist.predict.budget import Pass, predict_in_budget
from arena_dist.predict.ensemble import uncertainty
from arena_dist.predict.infer import LocalScorer
from arena_dist.predict.submission import check_submission, read_table
from arena_dist.predict.testfile import read_test_file

REPO = Path(__file__).resolve().parents[2]
ATOL = 1e-6  # a chunk batches rows with other rows than a whole pass does: float32 results differ by ~1e-7


def member(path) -> dict:
    return {"export_path": str(path), "dtype": "float32", "quantization": "auto", "trust_remote_code": False}


class TokenClock:
    """Time that passes only while rows are scored: `seconds_per_token[member]` for every token of every
    sequence a member scores. Deterministic, unlike the wall clock of a shared test machine."""

    def __init__(self, seconds_per_token: dict[int, float]):
        self.now = 0.0
        self.seconds_per_token = seconds_per_token

    def __call__(self) -> float:
        return self.now


class TimedScorer:
    """A real scorer whose `score` advances a TokenClock by the tokens it scores."""

    def __init__(self, scorer, clock: TokenClock):
        self.scorer, self.clock = scorer, clock

    def num_members(self):
        return self.scorer.num_members()

    def num_labels(self, member):
        return self.scorer.num_labels(member)

    def encode(self, member, records, swap):
        return self.scorer.encode(member, records, swap)

    def score(self, member, sequences):
        self.clock.now += self.clock.seconds_per_token[member] * sum(len(s) for s in sequences)
        return self.scorer.score(member, sequences)

    def close(self):
        self.scorer.close()


@pytest.fixture(scope="module")
def scored(files):
    """The test records, a two-member scorer, and each member's probabilities in both orders. Member 0 is the tiny
    export whose probabilities are the least extreme, so the two uncertainty measures rank its rows differently."""
    _, records, _ = read_test_file(files["lmsys"])
    scorer = LocalScorer([member(files["model3c"]), member(files["model3b"])], max_tokens=4096)
    probs = {(m, swap): to_classes(swap_back(p) if swap else p, 3)
             for m in (0, 1) for swap in (False, True)
             for p in [scorer.score(m, scorer.encode(m, records, swap))[0]]}
    tokens = sum(len(s) for s in scorer.encode(0, records, False))
    return records, scorer, probs, tokens


def top(values: np.ndarray, k: int) -> set[int]:
    return set(np.lexsort((np.arange(len(values)), -values))[:k].tolist())


@pytest.mark.parametrize("measure", ["entropy", "margin"])
def test_a_partial_budget_refines_exactly_the_most_uncertain_rows(scored, measure):
    records, scorer, probs, tokens = scored
    n = len(records)
    clock = TokenClock({0: 1e-3, 1: 3e-3})  # member 1 three times slower, which the planner has to find out
    first = 1e-3 * tokens  # the first pass's time: every row, member 0's direct order
    deadline = first + 0.3 * first  # 30% of one more pass of member 0
    written = []
    outcome = predict_in_budget(TimedScorer(scorer, clock), records, [Pass(0, True), Pass(1, False)], [1.0, 1.0], 3,
                                measure, deadline, safety_margin=0.0, publish=written.append, clock=clock)
    refined = outcome.ensemble.done(0, True)
    k = int(refined.sum())
    assert 0 < k < n
    assert set(np.flatnonzero(refined).tolist()) == top(uncertainty(probs[0, False], measure), k)
    # the other measure would have taken other rows: the configured one decided
    other = "margin" if measure == "entropy" else "entropy"
    assert top(uncertainty(probs[0, False], other), k) != top(uncertainty(probs[0, False], measure), k)
    assert not outcome.ensemble.done(1, False).any()  # the budget ran out in the first refinement pass
    # within the deadline, using all but less than one chunk's worth of the time left after the first pass
    assert clock.now <= deadline and clock.now - first >= 0.9 * (deadline - first)
    # the submission after every chunk, the first one from member 0's direct pass alone
    assert len(written) == 1 + outcome.passes[1].chunks and outcome.passes[1].stopped == "deadline"
    np.testing.assert_allclose(written[0], probs[0, False], atol=ATOL)
    final = (probs[0, False] + probs[0, True]) / 2
    np.testing.assert_allclose(written[-1][refined], final[refined], atol=ATOL)
    np.testing.assert_allclose(written[-1][~refined], probs[0, False][~refined], atol=ATOL)
    # member 0's measured rate predicts its chunks exactly (swapped rows have the direct rows' tokens)
    assert outcome.passes[1].predicted_seconds == pytest.approx(outcome.passes[1].seconds, rel=1e-9)


def test_a_slower_second_member_is_measured_and_its_rows_chosen_from_the_current_ensemble(scored):
    records, scorer, probs, tokens = scored
    n = len(records)
    clock = TokenClock({0: 1e-3, 1: 3e-3})
    first = 1e-3 * tokens
    deadline = 2 * first + 0.5 * 3 * first  # member 0's swap pass in full, then half of member 1's direct pass
    outcome = predict_in_budget(TimedScorer(scorer, clock), records, [Pass(0, True), Pass(1, False), Pass(1, True)],
                                [1.0, 1.0], 3, "entropy", deadline, safety_margin=0.0, clock=clock)
    assert outcome.ensemble.done(0, True).all()
    second = outcome.ensemble.done(1, False)
    k = int(second.sum())
    assert 0 < k < n and not outcome.ensemble.done(1, True).any()
    assert [p.stopped for p in outcome.passes] == ["complete", "complete", "deadline", "not reached"]
    # every row had member 0's swap-TTA when member 1 started: its rows are the most uncertain of those
    tta = (probs[0, False] + probs[0, True]) / 2
    assert set(np.flatnonzero(second).tolist()) == top(uncertainty(tta, "entropy"), k)
    assert clock.now <= deadline and clock.now - 2 * first >= 0.9 * (deadline - 2 * first)
    # its first (probe) chunk was planned at member 0's speed and took 3x that; the rest at its measured speed
    chunks = [c for c in outcome.chunks if c.name == "m1_direct"]
    assert chunks[0].seconds == pytest.approx(3 * chunks[0].predicted_seconds, rel=1e-9)
    assert all(c.seconds == pytest.approx(c.predicted_seconds, rel=1e-9) for c in chunks[1:]) and len(chunks) > 1
    # the ensemble on a row: weights renormalised over the members that scored it
    combined = outcome.ensemble.combined()
    np.testing.assert_allclose(combined[~second], tta[~second], atol=ATOL)
    np.testing.assert_allclose(combined[second], (tta[second] + probs[1, False][second]) / 2, atol=ATOL)


def test_no_budget_runs_every_pass_on_its_fraction(scored):
    records, scorer, probs, _ = scored
    outcome = predict_in_budget(scorer, records, [Pass(0, True, 0.5), Pass(1, True, 0.2)], [1.0, 3.0], 3, "margin")
    n = len(records)
    assert outcome.ensemble.done(0, True).sum() == math.ceil(0.5 * n)
    assert outcome.ensemble.done(1, True).sum() == math.ceil(0.2 * n)
    assert [p.chunks for p in outcome.passes] == [1, 1, 1] and outcome.summary()["passed_deadline"] is False


# ------------------------------------------------------------------------------------------------ killed runs
def start_predict(files, out: Path, log: Path, errors: Path) -> subprocess.Popen:
    """predict in a child process, as a notebook runs it: two members, every pass one row per forward (slow enough
    that refinement is still running when the test stops it), a budget it does not exhaust."""
    models = f"[{{export_path: '{files['model3']}'}}, {{export_path: '{files['model3b']}'}}]"
    command = [sys.executable, "-m", "arena_dist.cli", "predict", "--set", f"test_file={files['lmsys']}",
               "--set", f"output_dir={out}", "--set", f"models={models}", "--set", "time_budget=600",
               "--set", "batching.max_rows=1", "--set", "threads=1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with log.open("w") as stdout, errors.open("w") as stderr:  # files, not pipes: a full pipe would block the child
        return subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=REPO)


def wait_for_writes(child: subprocess.Popen, log: Path, errors: Path, writes: int, timeout: float = 300) -> None:
    """Until the child has logged `writes` submission writes (then it is stopped at once, mid-refinement)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count("submission written") >= writes:
            child.send_signal(signal.SIGSTOP)  # frozen where it is: the test then checks it had not finished
            return
        assert child.poll() is None, f"predict exited early ({child.returncode}): {errors.read_text()[-2000:]}"
        time.sleep(0.005)
    child.kill()
    raise AssertionError(f"no {writes} submission writes within {timeout} s:\n{log.read_text()[-2000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("stop, writes", [(signal.SIGKILL, 1), (signal.SIGTERM, 2)],
                         ids=["SIGKILL-in-the-first-refinement-pass", "SIGTERM-in-the-second"])
def test_a_run_stopped_mid_refinement_leaves_a_valid_submission(files, tmp_path, stop, writes):
    from arena_dist.artefacts import read_artefact

    out, log, errors = tmp_path / "out", tmp_path / "predict.log", tmp_path / "predict.err"
    child = start_predict(files, out, log, errors)
    try:
        wait_for_writes(child, log, errors, writes)
        assert not (out / "predict_summary.json").exists()  # stopped before the end: refinement was running
        child.send_signal(stop)
        child.send_signal(signal.SIGCONT)
        code = child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    # valid the moment the process is gone: every id once, values in [0, 1], rows summing to 1
    ids, _, _ = read_test_file(files["lmsys"])
    check_submission(read_table(out / "submission.csv"), ids, "lmsys")
    assert not (out / "predict_summary.json").exists() and not (out / "probabilities.parquet").exists()
    if stop == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        err = errors.read_text()
        assert code == 2, err[-2000:]
        assert f"stopped by SIGTERM; {out / 'submission.csv'} is the last complete submission" in err
        assert "Traceback" not in err
        record = read_artefact(out)
        assert record.status == "failed" and "stopped by SIGTERM" in record.error
