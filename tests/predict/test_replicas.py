"""One replica per device (`ReplicaPool`): the same probabilities as in-process scoring, shares of equal tokens, no
row lost or doubled when a replica is SIGKILLed mid-score, and no worker process left behind."""

import multiprocessing
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replica_fixtures import build_dying_scorer, members  # noqa: E402

from arena_dist.errors import ConfigError, InputError  # noqa: E402
from arena_dist.predict.infer import LocalScorer, build_local_scorer  # noqa: E402
from arena_dist.predict.replicas import ReplicaPool, ReplicasLost, replica_environment, split_by_tokens  # noqa: E402

MAX_TOKENS = 1024


def long_tailed_records(n: int, seed: int = 0) -> list[dict]:
    """Comparisons whose lengths follow a long tail (most short, a few ~10x longer), as real test files do."""
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "model", "answer", "code", "why", "because", "tie"]

    def text(mean: float) -> str:
        return " ".join(rng.choice(words, size=max(1, int(rng.lognormal(np.log(mean), 1.3)))))

    return [{"id": f"t/{i}", "source": "t", "prompt": [text(8)], "response_a": [text(15)], "response_b": [text(15)],
             "model_a": None, "model_b": None, "language": "en", "label": None, "fold": 0} for i in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tiny_fixtures import make_teacher_export

    export = make_teacher_export(tmp_path_factory.mktemp("replicas") / "m", seed=1, head_std=0.1, max_length=512)
    records = long_tailed_records(40)
    reference = LocalScorer(members(export), MAX_TOKENS)
    sequences = reference.encode(0, records, False) + reference.encode(0, records, True)
    probs, stats = reference.score(0, sequences)
    return {"export": export, "records": records, "sequences": sequences, "probs": probs, "stats": stats,
            "reference": reference}


def assert_gone(pids):
    for pid in pids:
        with pytest.raises(ProcessLookupError):  # not even a zombie: reaped
            os.kill(pid, 0)


def test_token_split_is_balanced_on_a_long_tail_and_covers_every_row_once():
    lengths = np.random.default_rng(3).lognormal(np.log(300), 1.0, size=1000).astype(int) + 1
    assert lengths.max() > 10 * np.median(lengths)  # a real tail
    for parts in (2, 3, 4):
        shares = split_by_tokens(lengths.tolist(), parts)
        assert sorted(i for share in shares for i in share) == list(range(1000))
        tokens = [int(lengths[share].sum()) for share in shares]
        assert max(tokens) / np.mean(tokens) < 1.01
        assert max(tokens) - min(tokens) <= lengths.max()  # at most one row apart
        # Equal tokens, not equal rows: a split of the length-sorted rows into equal row counts is far off.
        by_rows = np.array_split(np.argsort(lengths), parts)
        assert max(lengths[s].sum() for s in by_rows) / np.mean(tokens) > 1.5
    assert split_by_tokens([5], 3) == [[0], [], []]
    assert split_by_tokens([], 2) == [[], []]


def test_replica_environment_pins_one_device_and_its_threads():
    assert replica_environment(1, ["3", "5"], 4) == {"CUDA_VISIBLE_DEVICES": "5", "OMP_NUM_THREADS": "4",
                                                     "MKL_NUM_THREADS": "4"}
    assert "CUDA_VISIBLE_DEVICES" not in replica_environment(0, [], 2)  # CPU: left as it is
    with pytest.raises(ConfigError, match="3 replicas but 2 GPU"):
        ReplicaPool(build_local_scorer, (), 3, devices=["0", "1"])


@pytest.mark.slow
def test_two_replicas_score_like_one_process_with_equal_token_shares(setup):
    sequences = setup["sequences"]
    with ReplicaPool(build_local_scorer, (members(setup["export"]), MAX_TOKENS), 2, 1, devices=["5", "7"]) as pool:
        assert (pool.num_members(), pool.num_labels(0)) == (1, 3)
        # Each replica saw only its device (set before it imported torch) and kept to its thread count.
        assert [(info["device"], info["threads"]) for info in pool.replica_info] == [("5", 1), ("7", 1)]
        assert pool.encode(0, setup["records"], True) == setup["reference"].encode(0, setup["records"], True)

        probs, stats = pool.score(0, sequences)
        np.testing.assert_allclose(probs, setup["probs"], atol=1e-5, rtol=0)
        assert probs.std(axis=0).min() > 0.01  # rows differ: a row in the wrong place would show
        assert stats.rows == len(sequences) == 80 and stats.real_tokens == sum(map(len, sequences))
        shares = pool.last_shares
        assert len({s["pid"] for s in shares}) == 2 and sum(s["rows"] for s in shares) == 80
        tokens = [s["tokens"] for s in shares]
        assert max(tokens) / np.mean(tokens) < 1.05
        lengths = sorted(map(len, sequences))
        assert lengths[-1] > 3 * lengths[len(lengths) // 2]  # long-tailed: equal rows would not be equal tokens

        empty, _ = pool.score(0, [])
        assert empty.shape == (0, 3)
        # An error inside a replica is raised here as it was there; the pool stays usable.
        # Its row numbers count within that replica's share; the cause says which rows of the call those are.
        with pytest.raises(ValueError, match="row 0 is empty") as raised:
            pool.score(0, [sequences[0], []])
        assert "on a share of 1 rows: its row k is row [1][k] of this call" in str(raised.value.__cause__)
        again, _ = pool.score(0, sequences[:7])
        np.testing.assert_allclose(again, setup["probs"][:7], atol=1e-5, rtol=0)
        pids = pool.pids
    assert_gone(pids)


@pytest.mark.slow
def test_a_replica_killed_mid_score_loses_no_row_and_all_dead_is_a_clear_error(setup, tmp_path):
    sequences = setup["sequences"]
    flag = tmp_path / "died"
    pool = ReplicaPool(build_dying_scorer, (members(setup["export"]), MAX_TOKENS, str(flag)), 2, 1)
    with pytest.raises(ReplicasLost, match="every replica died; 80 of 80 rows"):
        with pool:
            started = pool.pids
            probs, stats = pool.score(0, sequences)  # one replica SIGKILLs itself after its first batch
            assert flag.exists()
            survivor = pool.pids
            assert len(survivor) == 1 and survivor[0] in started
            assert_gone(set(started) - set(survivor))
            np.testing.assert_allclose(probs, setup["probs"], atol=1e-5, rtol=0)
            assert stats.rows == 80 and stats.real_tokens == sum(map(len, sequences))  # each row scored once
            assert {s["pid"] for s in pool.last_shares} == set(survivor)
            # Killed from outside between calls: the last replica gone, no row can be scored.
            os.kill(survivor[0], signal.SIGKILL)
            pool.score(0, sequences)
    assert_gone(started)


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_no_worker_is_left_after_a_factory_error_or_an_exception(setup, tmp_path):
    missing = tmp_path / "no-export"
    with pytest.raises(InputError, match=str(missing)):  # the loader's own error, raised here
        ReplicaPool(build_local_scorer, (members(missing), MAX_TOKENS), 2, 1)
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("replica-")]
    # Leaving the pool on an exception ends its (idle, alive) workers at once.
    with pytest.raises(Interrupted):
        with ReplicaPool(build_local_scorer, (members(setup["export"]), MAX_TOKENS), 1, 1) as pool:
            pids = pool.pids
            raise Interrupted
    assert_gone(pids)
