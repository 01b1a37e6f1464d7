"""The ensemble's arithmetic: a row's probability is the weighted mean over the passes done on it (orders averaged
within a member, member weights renormalised over the members that scored the row), checked against each member
scored on its own; and the uncertainty measures."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from arena_dist.cli import main
from arena_dist.predict.budget import Pass, predict_in_budget
from arena_dist.predict.ensemble import Ensemble, most_uncertain_first, uncertainty
from arena_dist.predict.infer import LocalScorer, load_model, score
from arena_dist.predict.testfile import read_test_file

COLUMNS = ["winner_model_a", "winner_model_b", "winner_tie"]
MEMBERS = ("model3c", "model3b", "model3")
WEIGHTS = (1.0, 2.0, 5.0)


@pytest.fixture(scope="module")
def alone(files):
    """Each member scored on its own (the predict stage's single-export loader): {(member, swap): probabilities}."""
    _, records, _ = read_test_file(files["lmsys"])
    out = {}
    for index, name in enumerate(MEMBERS):
        loaded = load_model(str(files[name]))
        for swap in (False, True):
            out[index, swap] = score(loaded, records, swap, 4096, None)[0]
    return records, out


@pytest.mark.slow
def test_three_weighted_members_give_the_weighted_mean_of_their_swap_tta(files, alone, tmp_path):
    records, probs = alone
    models = [{"export_path": str(files[name]), "weight": w} for name, w in zip(MEMBERS, WEIGHTS)]
    assert main(["predict", "--set", f"test_file={files['lmsys']}", "--set", f"output_dir={tmp_path}",
                 "--set", f"models={json.dumps(models)}"]) == 0
    frame = pd.read_parquet(tmp_path / "probabilities.parquet")
    # the default refinement: every member in both orders, on every row
    assert all(frame[f"pass_m{m}_{order}"].all() for m in range(3) for order in ("direct", "swap"))
    w = np.array(WEIGHTS) / sum(WEIGHTS)
    expected = sum(w[m] * (probs[m, False] + probs[m, True]) / 2 for m in range(3))
    np.testing.assert_allclose(frame[COLUMNS].to_numpy(), expected, atol=1e-6)
    summary = json.loads((tmp_path / "predict_summary.json").read_text())
    assert summary["weights"] == pytest.approx(w.tolist())
    assert [p["name"] for p in summary["passes"]] == ["m0_direct", "m0_swap", "m1_direct", "m1_swap", "m2_direct",
                                                      "m2_swap"]


def test_partial_passes_renormalise_the_weights_over_the_members_that_scored_a_row(files, alone):
    records, probs = alone
    scorer = LocalScorer([{"export_path": str(files[name]), "dtype": "float32", "quantization": "auto",
                           "trust_remote_code": False} for name in MEMBERS], max_tokens=4096)
    passes = [Pass(0, True, 0.6), Pass(1, False, 0.5), Pass(2, True, 0.3)]  # member 2: its swapped order only
    outcome = predict_in_budget(scorer, records, passes, WEIGHTS, 3, "margin")
    n = len(records)
    done = {(m, s): outcome.ensemble.done(m, s) for m in range(3) for s in (False, True)}
    assert [int(done[p.member, p.swap].sum()) for p in passes] == [math.ceil(f * n) for f in (0.6, 0.5, 0.3)]
    assert done[0, False].all() and not done[2, False].any()
    got = outcome.ensemble.combined()
    mixes = set()
    for row in range(n):  # the docstring's formula, row by row
        members = [m for m in range(3) if done[m, False][row] or done[m, True][row]]
        mixes.add(tuple(members))
        mean = {m: np.mean([probs[m, s][row] for s in (False, True) if done[m, s][row]], axis=0) for m in members}
        total = sum(WEIGHTS[m] for m in members)
        np.testing.assert_allclose(got[row], sum(WEIGHTS[m] * mean[m] for m in members) / total, atol=1e-6)
    assert len(mixes) >= 3  # rows with one, two and three members: the renormalisation was exercised


def test_ensemble_formula_on_known_numbers():
    ensemble = Ensemble(3, [1.0, 3.0], 3)
    a, b = np.array([[0.6, 0.2, 0.2]] * 3), np.array([[0.2, 0.6, 0.2]] * 3)
    ensemble.record(0, False, np.arange(3), a)
    ensemble.record(0, True, np.array([1, 2]), b[:2])
    ensemble.record(1, True, np.array([2]), np.array([[0.0, 0.0, 1.0]]))
    got = ensemble.combined()
    np.testing.assert_allclose(got[0], [0.6, 0.2, 0.2])
    np.testing.assert_allclose(got[1], [0.4, 0.4, 0.2])  # member 0's two orders averaged
    np.testing.assert_allclose(got[2], 0.25 * np.array([0.4, 0.4, 0.2]) + 0.75 * np.array([0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="row 0 has not been scored"):
        Ensemble(2, [1.0], 3).combined()
    with pytest.raises(ValueError, match="weights must be positive"):
        Ensemble(2, [1.0, 0.0], 3)


def test_uncertainty_measures_and_their_order():
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.45, 0.45, 0.1], [0.5, 0.3, 0.2]])
    np.testing.assert_allclose(uncertainty(probs, "margin"), [0.15, 1.0, 1.0, 0.8])
    np.testing.assert_allclose(uncertainty(probs, "entropy"), -(probs * np.log(probs)).sum(axis=1))
    # a tie-heavy row is the most uncertain by margin; ties broken by row index
    assert most_uncertain_first(probs, np.arange(4), "margin").tolist() == [1, 2, 3, 0]
    assert most_uncertain_first(probs, np.array([3, 0, 2]), "entropy").tolist() == [3, 2, 0]
    with pytest.raises(ValueError, match="entropy"):
        uncertainty(probs, "variance")
