"""Every source format -> canonical records, and every quarantine reason written explicitly."""

from __future__ import annotations

import json

import pytest
from prepare_fixtures import (
    PAIRWISE_STYLES,
    good_lmsys_rows,
    lmsys_row,
    pairwise_row,
    quarantine_entries,
    write_csv,
    write_jsonl,
    write_parquet,
)

from arena_dist.data.records import LABEL_A, LABEL_B, LABEL_TIE
from arena_dist.data.sources import BalancedAssigner, SourceConfig, open_source, parse_messages
from arena_dist.data.store import build_dataset, read_records
from arena_dist.errors import InputError


def outcomes(kind, path, **extra):
    reader = open_source(SourceConfig(name="src", kind=kind, path=path, **extra))
    return reader, list(reader)


# ----------------------------------------------------------------------------------------------------------- LMSYS
def test_lmsys_multi_turn_null_turns_and_labels(tmp_path):
    path = write_csv(tmp_path / "train.csv", [
        lmsys_row(7, ["hi", "and then?"], ["hello", None], ["hey", "more"], winner=(0, 1, 0)),
        lmsys_row(8, ["q"], ["a"], ["b"], winner=(0, 0, 1)),
        lmsys_row(9, ["q2"], ["a"], ["b"], winner=("1", "0", "0")),
    ])
    reader, rows = outcomes("lmsys_csv", path)
    records = [o.record for o in rows]
    assert [r["id"] for r in records] == ["src/7", "src/8", "src/9"]
    first = records[0]
    assert first["prompt"] == ["hi", "and then?"]
    assert first["response_a"] == ["hello", ""]  # JSON null turn -> ""
    assert first["model_a"] == "gpt-4" and first["source"] == "src"
    assert [r["label"] for r in records] == [LABEL_B, LABEL_TIE, LABEL_A]


def test_lmsys_lone_surrogates_are_repaired_and_counted(tmp_path):
    # json.dumps writes the lone high surrogate as the escape "\ud83d", exactly as in the competition file.
    path = write_csv(tmp_path / "train.csv", [
        lmsys_row(1, ["emoji \ud83d broken"], ["fine"], ["also \udc00 broken", "x"][:1]),
        lmsys_row(2, ["pair \ud83d\ude00 ok"], ["a"], ["b"]),
    ])
    assert "\\ud83d" in path.read_text()
    reader, rows = outcomes("lmsys_csv", path)
    first, second = (o.record for o in rows)
    assert first["prompt"] == ["emoji \ufffd broken"]
    assert first["response_b"] == ["also \ufffd broken"]
    assert second["prompt"] == ["pair \U0001F600 ok"]  # a valid escaped pair is one character, not a repair
    assert reader.repaired_surrogates == 2
    for text in first["prompt"] + first["response_b"]:
        text.encode("utf-8")  # would raise on a lone surrogate


def test_lmsys_every_quarantine_reason(tmp_path):
    rows = [
        lmsys_row(1, ["ok"], ["a"], ["b"]),
        lmsys_row(2, "not json", ["a"], ["b"]),  # bad_json
        lmsys_row(3, {"turn": 1}, ["a"], ["b"]),  # bad_json: not a list
        lmsys_row(4, ["q"], [3], ["b"]),  # bad_json: number in the list
        lmsys_row(5, ["q1", "q2"], ["a"], ["b", "c"]),  # turn_count_mismatch
        lmsys_row(6, [None], ["a"], ["b"]),  # missing_prompt
        lmsys_row(7, ["q"], [None], ["b"]),  # empty_response
        lmsys_row(8, ["q"], ["  "], ["b"]),  # empty_response (whitespace only)
        lmsys_row(9, ["q"], ["same"], ["same"]),  # identical_responses
        lmsys_row(10, ["q"], ["a"], ["b"], winner=(1, 1, 0)),  # invalid_label: not one-hot
        lmsys_row(11, ["q"], ["a"], ["b"], winner=("yes", 0, 0)),  # invalid_label: not a number
        lmsys_row(1, ["other"], ["x"], ["y"]),  # duplicate_id
        lmsys_row("", ["q3"], ["a"], ["b"]),  # missing_id
        ["12", "m", "m", "[]"],  # bad_row: wrong field count
        lmsys_row(13, [], [], []),  # missing_prompt: zero turns
    ]
    path = write_csv(tmp_path / "train.csv", rows)
    lm = SourceConfig(name="lm", kind="lmsys_csv", path=path, max_quarantine_share=1.0)  # 14 of 15 on purpose
    manifest = build_dataset([lm], tmp_path / "ds", num_shards=2, num_folds=2)
    counts = manifest["sources"]["lm"]
    assert counts["read"] == len(rows) == counts["kept"] + counts["duplicates"] + counts["quarantined"]
    assert counts["kept"] == 1
    assert counts["reasons"] == {
        "bad_json": 3, "turn_count_mismatch": 1, "missing_prompt": 2, "empty_response": 2, "identical_responses": 1,
        "invalid_label": 2, "duplicate_id": 1, "missing_id": 1, "bad_row": 1,
    }
    entries = quarantine_entries(tmp_path / "ds", "lm")
    assert [e["row"] for e in entries] == list(range(2, len(rows) + 1))  # row numbers, 1 = first data row
    assert entries[0]["reason"] == "bad_json" and entries[0]["raw"]["prompt"] == "not json"
    assert all(isinstance(v, str) for v in entries[0]["raw"].values())
    assert entries[10]["reason"] == "duplicate_id" and entries[10]["raw"]["id"] == "1"


def test_lmsys_test_csv_without_winners_is_an_unlabelled_pool(tmp_path):
    header = ["id", "prompt", "response_a", "response_b"]
    path = write_csv(tmp_path / "test.csv", [[5, '["q"]', '["a"]', '["b"]']], header=header)
    reader, rows = outcomes("lmsys_csv", path, use_as="pool")
    assert rows[0].record["label"] is None and rows[0].record["model_a"] is None
    with pytest.raises(InputError, match=r"test\.csv: missing required column 'winner_model_a' \(no winner columns: "
                       r"to read the file as unlabelled, e\.g\. a test\.csv, set use_as: pool for this source\)$"):
        open_source(SourceConfig(name="t", kind="lmsys_csv", path=path))  # split train needs the label columns


def test_missing_file_and_missing_column_name_file_and_column(tmp_path):
    with pytest.raises(InputError, match=r"nope\.csv: cannot read"):
        open_source(SourceConfig(name="x", kind="lmsys_csv", path=tmp_path / "nope.csv"))
    header = ["id", "prompt", "response_a", "winner_model_a", "winner_model_b", "winner_tie"]
    path = write_csv(tmp_path / "train.csv", [], header=header)
    with pytest.raises(InputError, match=r"train\.csv: missing required column 'response_b'"):
        open_source(SourceConfig(name="x", kind="lmsys_csv", path=path))


def test_column_renames(tmp_path):
    header = ["id", "question", "response_a", "response_b", "winner_model_a", "winner_model_b", "winner_tie"]
    path = write_csv(tmp_path / "t.csv", [[1, '["q"]', '["a"]', '["b"]', 0, 1, 0]], header=header)
    _, rows = outcomes("lmsys_csv", path, columns={"prompt": "question"}, language="de")
    assert rows[0].record["prompt"] == ["q"] and rows[0].record["language"] == "de"
    with pytest.raises(InputError, match=r"missing required column 'query' \(mapped from 'prompt'\)"):
        open_source(SourceConfig(name="x", kind="lmsys_csv", path=path, columns={"prompt": "query"}))


# ------------------------------------------------------------------------------------------------------------ WSDM
def test_wsdm_parquet_labels_language_and_bad_rows(tmp_path):
    base = {"model_a": "m1", "model_b": "m2", "language": "French"}
    path = write_parquet(tmp_path / "train.parquet", [
        {"id": "a1", "prompt": "bonjour", "response_a": "salut", "response_b": "coucou", "winner": "model_b", **base},
        {"id": "a2", "prompt": "q", "response_a": "x", "response_b": "y", "winner": "tie", **base},  # invalid_label
        {"id": "a3", "prompt": None, "response_a": "x", "response_b": "y", "winner": "model_a", **base},
        {"id": "a4", "prompt": "q", "response_a": "x", "response_b": None, "winner": "model_a", **base},
    ])
    _, rows = outcomes("wsdm_parquet", path)
    assert rows[0].record["label"] == LABEL_B and rows[0].record["language"] == "French"
    assert rows[0].record["prompt"] == ["bonjour"] and rows[0].row == 1
    assert [o.reason for o in rows[1:]] == ["invalid_label", "missing_prompt", "empty_response"]
    write_parquet(tmp_path / "bad.parquet", [{"id": "1", "prompt": "q", "response_a": "a", "response_b": "b"}])
    with pytest.raises(InputError, match=r"bad\.parquet: missing required column 'winner'"):
        open_source(SourceConfig(name="w", kind="wsdm_parquet", path=tmp_path / "bad.parquet"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"junk\.parquet: not a parquet file \(no PAR1 magic; it looks like text"):
        open_source(SourceConfig(name="w", kind="wsdm_parquet", path=tmp_path / "junk.parquet"))


# -------------------------------------------------------------------------------------------------------- pairwise
def test_pairwise_transcripts_multi_turn(tmp_path):
    prefix = "\n\nHuman: first question\n\nAssistant: first answer\n\nHuman: second question\n\nAssistant:"
    path = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": prefix + " good answer", "rejected": prefix + " bad answer"},
    ])
    _, rows = outcomes("pairwise_jsonl", path)
    record = rows[0].record
    assert record["id"] == "src/1"  # no id field: the row number
    assert record["prompt"] == ["first question", "second question"]
    assert record["response_a"] == ["first answer", "good answer"]  # earlier assistant turns equal in A and B
    assert record["response_b"] == ["first answer", "bad answer"]
    assert record["label"] == LABEL_A  # chosen in A before balancing


def test_pairwise_explicit_prompt_styles(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "x1", "prompt": "plain prompt", "chosen": "yes", "rejected": "no"},
        {"id": "x2", "prompt": "\n\nHuman: hh prompt\n\nAssistant:", "chosen": "good", "rejected": "bad"},
        {"id": "x3", "prompt": "p3",
         "chosen": [{"role": "user", "content": "p3"}, {"role": "assistant", "content": "c"}],
         "rejected": [{"role": "user", "content": "p3"}, {"role": "assistant", "content": "r"}]},
    ])
    _, rows = outcomes("pairwise_jsonl", path)
    assert [o.reason for o in rows] == [None, None, None]
    assert [(o.record["id"], o.record["prompt"], o.record["response_a"], o.record["response_b"]) for o in rows] == [
        ("src/x1", ["plain prompt"], ["yes"], ["no"]),
        ("src/x2", ["hh prompt"], ["good"], ["bad"]),
        ("src/x3", ["p3"], ["c"], ["r"]),
    ]


def test_pairwise_malformed_rows(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        "{not json",  # bad_row
        "[1, 2]",  # bad_row: not an object
        {"chosen": "\n\nHuman: a\n\nAssistant: x"},  # bad_row: missing key rejected
        {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"},  # bad_transcript
        {"chosen": "no markers", "rejected": "none here"},  # bad_transcript: no turns, no prompt
        {"chosen": "\n\nHuman: a\n\nAssistant: same", "rejected": "\n\nHuman: a\n\nAssistant: same"},  # identical
        {"chosen": "\n\nHuman: a\n\nAssistant:", "rejected": "\n\nHuman: a\n\nAssistant: y"},  # empty_response
        {"chosen": 5, "rejected": "r", "prompt": "p"},  # bad_value
    ])
    _, rows = outcomes("pairwise_jsonl", path)
    assert [o.reason for o in rows] == [
        "bad_row", "bad_row", "bad_row", "bad_transcript", "bad_transcript", "identical_responses", "empty_response",
        "bad_value",
    ]
    assert [o.row for o in rows] == list(range(1, 9))


def test_pairwise_styles_give_identical_records_with_same_speaker_turns_merged(tmp_path):
    """One multi-turn comparison, with two Assistant turns and two Human turns in a row and untidy whitespace, in
    every pairwise style: the records are identical apart from their ids."""
    history = [("Human", "  first question "), ("Assistant", "first answer"), ("Assistant", " and more\n"),
               ("Human", "second question"), ("Human", "one detail  ")]
    rows = [pairwise_row(style, history, " good answer ", "bad answer", id=style, language="en")
            for style in PAIRWISE_STYLES]
    _, outcomes_ = outcomes("pairwise_jsonl", write_jsonl(tmp_path / "styles.jsonl", rows))
    assert [o.reason for o in outcomes_] == [None] * len(PAIRWISE_STYLES)
    records = [{**o.record, "id": None} for o in outcomes_]
    assert records[0] == {
        "id": None, "source": "src", "prompt": ["first question", "second question\n\none detail"],
        "response_a": ["first answer\n\nand more", "good answer"],
        "response_b": ["first answer\n\nand more", "bad answer"],
        "model_a": None, "model_b": None, "language": "en", "label": LABEL_A, "fold": 0, "source_label": None,
    }
    assert all(json.dumps(r, sort_keys=True) == json.dumps(records[0], sort_keys=True) for r in records)


def test_pairwise_merge_keeps_rows_that_used_to_be_bad_transcripts(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": "\n\nHuman: q\n\nAssistant: part one\n\nAssistant: part two",
         "rejected": "\n\nHuman: q\n\nAssistant: other"},
        {"chosen": "\n\nAssistant: no human turn", "rejected": "\n\nAssistant: at all"},  # still bad_transcript
    ])
    _, rows = outcomes("pairwise_jsonl", path)
    assert rows[0].record["response_a"] == ["part one\n\npart two"] and rows[0].record["response_b"] == ["other"]
    assert rows[1].reason == "bad_transcript"


def test_parse_messages_roles():
    assert parse_messages("\n\nHuman: hi\n\nAssistant: yo", "c") == [("user", "hi"), ("assistant", "yo")]
    assert parse_messages("Human: hi\n\nAssistant: yo", "c") == [("user", "hi"), ("assistant", "yo")]
    assert parse_messages("plain", "c") == [("text", "plain")]
    assert parse_messages([{"role": "user", "content": " hi "}], "c") == [("user", "hi")]  # every style strips


def test_balanced_assignment_is_exact_and_labels_follow_chosen(tmp_path):
    n = 101
    rows = [{"id": i, "prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(n)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    build_dataset([SourceConfig(name="dpo", kind="pairwise_jsonl", path=path)], tmp_path / "ds", num_shards=3, seed=4)
    records = read_records(tmp_path / "ds")
    labels = [r["label"] for r in records]
    assert len(records) == n and abs(labels.count(LABEL_A) - labels.count(LABEL_B)) <= 1
    for record in records:
        chosen_side = record["response_a"] if record["label"] == LABEL_A else record["response_b"]
        assert chosen_side[0].startswith("good")
    assigner = BalancedAssigner(seed=4, source_name="dpo")
    sides = [assigner.chosen_to_b(i) for i in range(1000)]
    assert all(sides[i] != sides[i + 1] for i in range(0, 1000, 2))  # each pair splits
    assert 200 < sum(sides[::2]) < 300  # of 500 pairs, the first of each is a fair coin, not always the same side
    assert sides != [BalancedAssigner(seed=5, source_name="dpo").chosen_to_b(i) for i in range(1000)]


# ------------------------------------------------------------------------------------------------------------ pool
def test_pool_parquet_lists_and_jsonl_without_ids(tmp_path):
    parquet = write_parquet(tmp_path / "pool.parquet", [
        {"id": "a", "prompt": ["t1", "t2"], "response_a": ["x1", "x2"], "response_b": ["y1", "y2"]},
        {"id": "b", "prompt": ["t1"], "response_a": ["x1", "x2"], "response_b": ["y1"]},  # turn_count_mismatch
    ])
    _, rows = outcomes("pool", parquet)
    assert rows[0].record["prompt"] == ["t1", "t2"] and rows[0].record["label"] is None
    assert rows[1].reason == "turn_count_mismatch"
    jsonl = write_jsonl(tmp_path / "pool.jsonl", [
        {"prompt": "p", "response_a": "a", "response_b": "b"}, "", {"prompt": "p2", "response_a": "a", "response_b": 7},
    ])
    reader, rows = outcomes("pool", jsonl)
    assert reader.config.split == "pool"
    assert rows[0].record["id"] == "src/1" and rows[1].row == 3 and rows[1].reason == "bad_value"
    (tmp_path / "pool.txt").write_text("x")
    with pytest.raises(InputError, match=r"pool\.txt: a pool must be \.parquet or \.jsonl"):
        open_source(SourceConfig(name="p", kind="pool", path=tmp_path / "pool.txt"))


def test_source_config_validation(tmp_path):
    with pytest.raises(ValueError, match="unknown canonical column"):
        SourceConfig(name="x", kind="pool", path=tmp_path, columns={"promt": "q"})
    with pytest.raises(ValueError):
        SourceConfig(name="bad/name", kind="pool", path=tmp_path)
    assert SourceConfig(name="x", kind="wsdm_parquet", path=tmp_path).split == "train"


def test_quarantined_raw_rows_are_json_safe_with_surrogates(tmp_path):
    path = write_csv(tmp_path / "train.csv", [lmsys_row(1, r'["q\ud83d', ["a"], ["b"])])  # unterminated JSON
    lm = SourceConfig(name="lm", kind="lmsys_csv", path=path, max_quarantine_share=1.0, allow_empty=True)
    build_dataset([lm], tmp_path / "ds", num_shards=1)
    (entry,) = quarantine_entries(tmp_path / "ds", "lm")
    assert entry["reason"] == "bad_json" and entry["raw"]["prompt"] == r'["q\ud83d'
    json.dumps(entry).encode("utf-8")
