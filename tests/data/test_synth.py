"""The synthetic arena benchmark: exact Bayes numbers, competition formats, quirks, determinism, CLI."""

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from arena_dist.cli import main
from arena_dist.config import load_config
from arena_dist.data import synth
from arena_dist.errors import ConfigError
from arena_dist.stages import synth as synth_stage

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "launch" / "configs" / "synth_tiny.yaml"

csv.field_size_limit(1 << 30)


def _run(out: Path, **overrides) -> dict:
    config = synth_stage.Config(output_dir=str(out), progress=False, **overrides)
    return synth_stage.run(config)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> Path:
    """One run at the default difficulty and default sizes (a few thousand rows; about a second)."""
    out = tmp_path_factory.mktemp("synth_default")
    _run(out)
    return out


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def _tree_hashes(root: Path) -> dict[str, str]:
    """Every file but the stage record (stage.json), which holds this run's times."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "stage.json"}


# --- the preference model -------------------------------------------------------------------------------------------


def test_default_difficulty_is_realistic(default_run):
    bayes = json.loads((default_run / "bayes.json").read_text())
    test = bayes["files"]["lmsys/test.csv"]
    train = bayes["files"]["lmsys/train.csv"]
    for summary in (train, test):
        assert 0.75 <= summary["expected_log_loss"] <= 0.95
        assert 0.75 <= summary["log_loss"] <= 0.95
        assert 0.25 <= summary["tie_rate"] <= 0.35
        assert 0.25 <= summary["expected_tie_rate"] <= 0.35
        assert 0.5 < summary["accuracy"] < 0.7
    assert bayes["ln3"] == pytest.approx(math.log(3))
    assert bayes["achievable_gain"] == pytest.approx(bayes["ln3"] - test["log_loss"])
    assert 0.15 < bayes["achievable_gain"] < 0.35
    wsdm = bayes["files"]["wsdm/test.parquet"]
    assert 0.6 < wsdm["accuracy"] <= 1 and 0.6 < wsdm["expected_accuracy"] < 0.9
    assert set(test["by_language"]) == {"en", "ru", "zh", "es"}
    assert sum(v["rows"] for v in test["by_language"].values()) == test["rows"] == 1000


def test_realised_bayes_numbers_match_the_written_answers(default_run):
    header, rows = _read_csv(default_run / "lmsys" / "test_answers.csv")
    p = np.array([[float(r[header.index(k)]) for k in ("p_a", "p_b", "p_tie")] for r in rows])
    onehot = np.array([[int(r[header.index(k)]) for k in ("winner_model_a", "winner_model_b", "winner_tie")]
                       for r in rows])
    label = onehot.argmax(axis=1)
    bayes = json.loads((default_run / "bayes.json").read_text())
    assert bayes["bayes_log_loss"] == pytest.approx(float(-np.log(p[np.arange(len(p)), label]).mean()), rel=1e-9)
    assert bayes["bayes_accuracy"] == pytest.approx(float((p.argmax(axis=1) == label).mean()))
    assert bayes["files"]["lmsys/test.csv"]["expected_log_loss"] == pytest.approx(
        float(-(p * np.log(p)).sum(axis=1).mean()), rel=1e-9)


def test_davidson_probabilities_sum_to_one_and_swap_symmetrically():
    world = synth.build_world(synth.PreferenceParams(position_bias=0.0))
    rng = np.random.default_rng(0)
    s_a, s_b = rng.normal(size=200), rng.normal(size=200)
    p = world.three_class(s_a, s_b)
    swapped = world.three_class(s_b, s_a)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[:, [1, 0, 2]], swapped)
    np.testing.assert_allclose(world.two_class(s_a, s_b), p[:, 0] / (p[:, 0] + p[:, 1]))
    assert (p[np.abs(s_a - s_b) < 0.05, 2] > p[np.abs(s_a - s_b) > 3, 2].max()).all()  # ties when close


def test_probabilities_are_a_function_of_the_text(default_run):
    """Recomputing from the written text gives the written probabilities (so the Bayes risk is exact)."""
    _, tests = _read_csv(default_run / "lmsys" / "test.csv")
    header, answers = _read_csv(default_run / "lmsys" / "test_answers.csv")
    spec = synth.SynthSpec()
    for row, answer in zip(tests[:300], answers[:300]):
        p = synth.true_probabilities(json.loads(row[2]), json.loads(row[3]), spec)
        assert [p["p_a"], p["p_b"], p["p_tie"]] == pytest.approx([float(x) for x in answer[4:7]], abs=1e-12)
    pool = pq.read_table(default_run / "pool" / "pool.parquet").slice(0, 200).to_pylist()
    pool_answers = pq.read_table(default_run / "pool" / "pool_answers.parquet").slice(0, 200).to_pylist()
    for row, answer in zip(pool, pool_answers):
        p = synth.true_probabilities(row["response_a"], row["response_b"], spec)
        assert p["p_a"] == pytest.approx(answer["p_a"], abs=1e-12)
        assert p["p_a_2class"] == pytest.approx(answer["p_a_2class"], abs=1e-12)


def test_repairing_a_lone_surrogate_does_not_change_the_probabilities():
    turns = ["clear and detailed answer. \ud83d", None, "wrong"]
    repaired = [t.replace("\ud83d", "\ufffd") if t else "" for t in turns]
    assert synth.response_stats(turns) == synth.response_stats(repaired)
    qsum, qcount, nwords = synth.response_stats(turns)
    scores = synth.build_world().score_of
    assert qcount == 3 and nwords == 6
    assert qsum == pytest.approx(scores["clear"] + scores["detailed"] + scores["wrong"])


def test_quality_word_position_moves_words_but_not_labels():
    near = synth.SynthSpec(text=synth.TextParams(quality_position_spread=2.0))
    anywhere = synth.SynthSpec()
    a = synth.generate_batch(np.random.default_rng(5), 300, near)
    b = synth.generate_batch(np.random.default_rng(5), 300, anywhere)
    np.testing.assert_allclose(a.probs, b.probs)

    def mean_position(batch):
        quality = set(synth.QUALITY_WORDS)
        spots = [i / max(len(t.split()) - 1, 1) for r in batch.response_a for t in r
                 for i, w in enumerate(t.split()) if w.strip(".。") in quality]
        return float(np.mean(spots))

    assert mean_position(a) < 0.2 < 0.35 < mean_position(b)


def test_quality_words_are_scored_and_disjoint_from_filler():
    world = synth.build_world()
    assert len(synth.QUALITY_WORDS) == len(set(synth.QUALITY_WORDS)) >= 30
    assert (np.abs(world.scores) <= 1.0).all() and (np.abs(world.scores) >= 0.3).all()
    assert (world.scores[: len(synth.QUALITY_POSITIVE)] > 0).all()
    fillers = {w for words in synth.FILLER.values() for w in words} | {w for ws in synth.TOPICS.values() for w in ws}
    assert not fillers & set(synth.QUALITY_WORDS)


# --- formats --------------------------------------------------------------------------------------------------------


def test_lmsys_files_have_the_competition_columns(default_run):
    header, train = _read_csv(default_run / "lmsys" / "train.csv")
    assert header == ["id", "model_a", "model_b", "prompt", "response_a", "response_b", "winner_model_a",
                      "winner_model_b", "winner_tie"]
    assert len(train) == 4000
    for row in train:
        assert sorted(int(x) for x in row[6:9]) == [0, 0, 1]  # one-hot
        assert row[1] != row[2] and row[1] in synth.MODEL_NAMES
    test_header, tests = _read_csv(default_run / "lmsys" / "test.csv")
    assert test_header == ["id", "prompt", "response_a", "response_b"]  # no labels, no model names
    answer_header, answers = _read_csv(default_run / "lmsys" / "test_answers.csv")
    assert answer_header == ["id", "winner_model_a", "winner_model_b", "winner_tie", "p_a", "p_b", "p_tie",
                             "language"]
    assert [r[0] for r in answers] == [r[0] for r in tests] and len(set(r[0] for r in tests)) == 1000
    assert not {r[0] for r in tests} & {r[0] for r in train}
    turn_counts = []
    for row, answer in zip(tests, answers):
        cells = [json.loads(cell) for cell in row[1:4]]
        assert all(isinstance(c, list) and all(isinstance(t, str) and t for t in c) for c in cells)
        assert len(cells[0]) == len(cells[1]) == len(cells[2])
        turn_counts.append(len(cells[0]))
        assert sum(int(x) for x in answer[1:4]) == 1
        assert sum(float(x) for x in answer[4:7]) == pytest.approx(1.0)
        assert answer[7] in synth.LANGUAGE_CODES
    multi = np.mean(np.array(turn_counts) > 1)
    assert 0.08 < multi < 0.25 and max(turn_counts) == 3


def test_lmsys_train_carries_the_injected_quirks(default_run):
    bayes = json.loads((default_run / "bayes.json").read_text())
    injected = bayes["injected"]
    assert all(injected[kind] > 0 for kind in synth.QUIRK_KINDS)
    raw = (default_run / "lmsys" / "train.csv").read_bytes()
    raw.decode("utf-8")  # the file itself is valid UTF-8: surrogates are JSON escapes inside the cells
    _, rows = _read_csv(default_run / "lmsys" / "train.csv")
    found = dict.fromkeys(synth.QUIRK_KINDS, 0)
    seen = set()
    for row in rows:
        try:
            prompt, a, b = (json.loads(cell) for cell in row[3:6])
        except json.JSONDecodeError:
            found["bad_json"] += 1
            continue
        texts = [t for t in a + b if t is not None]
        found["null_turn"] += (None in a) or (None in b)
        found["lone_surrogate"] += any(0xD800 <= ord(ch) <= 0xDFFF for t in texts for ch in t)
        found["turn_count_mismatch"] += not (len(prompt) == len(a) == len(b))
        found["identical_responses"] += a == b
        key = (json.dumps(prompt), frozenset([json.dumps(a), json.dumps(b)]))
        found["duplicate"] += key in seen
        seen.add(key)
    assert found == injected
    assert rb"\ud83" in raw or rb"\ude00" in raw


def test_wsdm_parquet_files(default_run):
    train = pq.read_table(default_run / "wsdm" / "train.parquet")
    assert train.column_names == ["id", "prompt", "response_a", "response_b", "winner", "model_a", "model_b",
                                  "language"]
    assert all(str(t) == "string" for t in train.schema.types)
    assert set(train.column("winner").to_pylist()) == {"model_a", "model_b"} and train.num_rows == 2000
    test = pq.read_table(default_run / "wsdm" / "test.parquet")
    assert test.column_names == ["id", "prompt", "response_a", "response_b", "language"]
    answers = pq.read_table(default_run / "wsdm" / "test_answers.parquet")
    assert answers.column_names == ["id", "winner", "p_a", "language"]
    assert answers.column("id").to_pylist() == test.column("id").to_pylist()
    assert len(set(test.column("id").to_pylist()) | set(train.column("id").to_pylist())) == 2500
    p_a = np.array(answers.column("p_a").to_pylist())
    assert ((p_a > 0) & (p_a < 1)).all()


def test_pool_streams_in_row_groups_with_aligned_answers(tmp_path):
    n = synth.CHUNK_ROWS + 10
    summary = synth.generate_pool(n, seed=3, out_path=tmp_path / "pool.parquet", progress=False)
    pool = pq.ParquetFile(tmp_path / "pool.parquet")
    assert pool.metadata.num_rows == n and pool.metadata.num_row_groups == 2
    assert pool.schema_arrow.names == ["id", "prompt", "response_a", "response_b", "language"]
    assert str(pool.schema_arrow.field("prompt").type) == "list<element: string>"
    answers = pq.read_table(tmp_path / "pool_answers.parquet")
    ids = pool.read(columns=["id"]).column("id").to_pylist()
    assert answers.column("id").to_pylist() == ids and len(set(ids)) == n
    p = np.array([answers.column(k).to_pylist() for k in ("p_a", "p_b", "p_tie")])
    np.testing.assert_allclose(p.sum(axis=0), 1.0)
    assert summary["three_class"]["rows"] == n and 0.75 < summary["three_class"]["expected_log_loss"] < 0.95


def test_pairwise_files(default_run):
    pairs = [json.loads(line) for line in (default_run / "pairwise" / "pairs.jsonl").read_text().splitlines()]
    hh = [json.loads(line) for line in (default_run / "pairwise" / "hh.jsonl").read_text().splitlines()]
    assert len(pairs) + len(hh) == 400
    for row in pairs:
        assert {"id", "prompt", "chosen", "rejected"} <= set(row) and row["chosen"] != row["rejected"]
    multi = 0
    for row in hh:
        chosen, rejected = row["chosen"], row["rejected"]
        assert chosen.startswith("\n\nHuman: ") and rejected.startswith("\n\nHuman: ")
        cut = chosen.rindex("\n\nAssistant: ")
        assert rejected[:cut] == chosen[:cut] and chosen != rejected  # shared conversation, last turn differs
        multi += chosen.count("\n\nHuman: ") > 1
    assert multi > 0


# --- stage, determinism, prepare integration, CLI ---------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(tmp_path):
    small = dict(n_train=300, n_test=50, n_pool=100, n_wsdm_train=50, n_wsdm_test=20, n_pairwise=20)
    _run(tmp_path / "a", **small)
    first = _tree_hashes(tmp_path / "a")
    _run(tmp_path / "a", **small)  # rerun in place: every file, bayes.json included, is the same
    assert _tree_hashes(tmp_path / "a") == first
    _run(tmp_path / "b", **small)  # another directory: the data files are the same
    second = _tree_hashes(tmp_path / "b")
    data_files = [name for name in first if name.endswith((".csv", ".parquet", ".jsonl"))]
    assert len(data_files) == 10 and all(first[name] == second[name] for name in data_files)
    _run(tmp_path / "c", seed=1, **small)
    assert _tree_hashes(tmp_path / "c")["lmsys/train.csv"] != first["lmsys/train.csv"]


def test_prepare_quarantines_exactly_the_malformed_rows(default_run, tmp_path):
    from arena_dist.stages import prepare

    spec = yaml.safe_load((default_run / "prepare.yaml").read_text())
    assert [s["kind"] for s in spec["sources"]] == ["lmsys_csv", "wsdm_parquet", "pairwise_jsonl", "pairwise_jsonl",
                                                    "pool"]
    config = load_config(prepare.Config, default_run / "prepare.yaml", [f"output_dir={tmp_path / 'dataset'}"])
    summary = prepare.run(config)
    injected = json.loads((default_run / "bayes.json").read_text())["injected"]
    lmsys = summary["sources"]["lmsys"]
    assert lmsys["reasons"] == {kind: injected[kind] for kind in synth.MALFORMED_KINDS}
    assert lmsys["duplicates"] == injected["duplicate"]
    assert lmsys["repaired_surrogates"] == injected["lone_surrogate"]
    assert lmsys["read"] == 4000 == lmsys["kept"] + lmsys["duplicates"] + lmsys["quarantined"]
    assert summary["rows"] == {"train": lmsys["kept"] + 2000 + 400, "pool": 4000}


def test_cli_with_overrides(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["synth", "--config", str(TINY), "--set", "n_train=200", "--set", f"output_dir={out}"]) == 0
    _, rows = _read_csv(out / "lmsys" / "train.csv")
    assert len(rows) == 200
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    assert resolved["n_train"] == 200 and resolved["n_pool"] == 200
    assert "Bayes log loss" in capsys.readouterr().out
    assert main(["synth", "--config", str(TINY), "--set", "n_train=-1", "--set", f"output_dir={out}"]) == 2
    assert "n_train" in capsys.readouterr().err


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="languages"):
        load_config(synth_stage.Config, None, ["languages={fr: 1.0}"])
    with pytest.raises(ConfigError, match="preference.tie_strength"):
        load_config(synth_stage.Config, None, ["preference.tie_strength=0"])
    with pytest.raises(ConfigError, match="quirks.bogus"):
        load_config(synth_stage.Config, None, ["quirks.bogus=1"])
