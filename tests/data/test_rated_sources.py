"""Rated completion sets, scored pairs and conversation files -> records; use_as routing; filters; languages."""

from __future__ import annotations

import gzip

import pytest
from prepare_fixtures import (
    binarized_row,
    good_lmsys_rows,
    pairwise_row,
    quarantine_entries,
    ultrafeedback_row,
    write_csv,
    write_jsonl,
    write_parquet,
)
from pydantic import ValidationError

from arena_dist.data.filters import FilterConfig, detect_language
from arena_dist.data.records import LABEL_A, LABEL_B, LABEL_TIE
from arena_dist.data.sources import SourceConfig, open_source
from arena_dist.data.store import build_dataset, load_manifest, read_records
from arena_dist.errors import InputError

# Scores as in a real UltraFeedback row: two equal best, one middle, one worst.
SCORED = [("gpt-4", "answer one", 8.5), ("llama-2-7b-chat", "answer two", 6.0), ("wizardlm-70b", "answer three", 8.5),
          ("falcon-40b-instruct", "answer four", 3.0)]


def outcomes(kind, path, **extra):
    return list(open_source(SourceConfig(name="src", kind=kind, path=path, **extra)))


def comparison(record) -> tuple:
    """What a record says, without its id and models (which differ between file shapes)."""
    return (tuple(record["prompt"]), tuple(record["response_a"]), tuple(record["response_b"]), record["label"],
            record["source_label"])


def build(tmp_path, *sources, **extra):
    return build_dataset(list(sources), tmp_path / "ds", num_shards=2, num_folds=2, seed=3, **extra)


# ----------------------------------------------------------------------------------------------- rated completions
@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".parquet"])
def test_ultrafeedback_best_vs_worst_gives_one_pair_per_prompt(tmp_path, suffix):
    rows = [ultrafeedback_row("Write a haiku.", SCORED)]
    if suffix == ".parquet":
        path = write_parquet(tmp_path / "uf.parquet", rows)
    else:
        path = write_jsonl(tmp_path / "uf.jsonl", rows)
        if suffix == ".jsonl.gz":
            path = path.with_suffix(".jsonl.gz")
            path.write_bytes(gzip.compress((tmp_path / "uf.jsonl").read_bytes()))
    [outcome] = outcomes("rated_completions", path)
    [record] = outcome.records
    assert record["id"] == "src/1/0-3" and record["prompt"] == ["Write a haiku."]
    assert record["response_a"] == ["answer one"] and record["response_b"] == ["answer four"]  # first best vs worst
    assert (record["model_a"], record["model_b"], record["label"]) == ("gpt-4", "falcon-40b-instruct", LABEL_A)


@pytest.mark.parametrize("min_gap, ties, expected", [
    (2.0, True, {("answer one", "answer two", LABEL_A), ("answer one", "answer four", LABEL_A),
                 ("answer three", "answer two", LABEL_A), ("answer two", "answer four", LABEL_A),
                 ("answer three", "answer four", LABEL_A)}),
    (3.0, True, {("answer one", "answer four", LABEL_A), ("answer two", "answer four", LABEL_A),
                 ("answer three", "answer four", LABEL_A)}),
    (0.0, True, {("answer one", "answer two", LABEL_A), ("answer one", "answer three", LABEL_TIE),
                 ("answer one", "answer four", LABEL_A), ("answer three", "answer two", LABEL_A),
                 ("answer two", "answer four", LABEL_A), ("answer three", "answer four", LABEL_A)}),
    (0.0, False, {("answer one", "answer two", LABEL_A), ("answer one", "answer four", LABEL_A),
                  ("answer three", "answer two", LABEL_A), ("answer two", "answer four", LABEL_A),
                  ("answer three", "answer four", LABEL_A)}),
])
def test_all_pairs_above_gap_with_and_without_ties(tmp_path, min_gap, ties, expected):
    path = write_jsonl(tmp_path / "uf.jsonl", [ultrafeedback_row("Write a haiku.", SCORED)])
    pairing = {"rule": "all_pairs_above_gap", "min_gap": min_gap, "ties": ties}
    [outcome] = outcomes("rated_completions", path, pairing=pairing)
    got = {(r["response_a"][0], r["response_b"][0], r["label"]) for r in outcome.records}
    assert got == expected
    assert len({r["id"] for r in outcome.records}) == len(expected)


def test_best_vs_worst_equal_scores_are_a_tie_in_3class_and_no_pair_in_2class(tmp_path):
    row = ultrafeedback_row("q", [("m1", "x", 7.0), ("m2", "y", 7.0)])
    path = write_jsonl(tmp_path / "uf.jsonl", [row])
    [tie] = outcomes("rated_completions", path)
    assert tie.record["label"] == LABEL_TIE
    [none] = outcomes("rated_completions", path, pairing={"ties": False})
    assert none.record is None and none.reason == "no_pair"


def test_rated_quarantine_reasons_and_row_conservation(tmp_path):
    rows = [
        ultrafeedback_row("good one", SCORED),
        ultrafeedback_row("missing score", [("a", "x", 5.0), ("b", "y", None)]),
        ultrafeedback_row("one completion", [("a", "x", 5.0)]),
        ultrafeedback_row("empty response", [("a", "x", 5.0), ("b", "  ", 2.0)]),
        ultrafeedback_row("good two", [("a", "long enough", 9.0), ("b", "short", 1.0)]),
        "{not json",
        {"instruction": "no completions key"},
    ]
    path = write_jsonl(tmp_path / "uf.jsonl", rows)
    source = SourceConfig(name="uf", kind="rated_completions", path=path, max_quarantine_share=1.0,
                          pairing={"rule": "all_pairs_above_gap", "min_gap": 1.0})
    counts = build(tmp_path, source)["sources"]["uf"]
    assert counts["reasons"] == {"bad_row": 2, "empty_response": 1, "missing_score": 1, "too_few_completions": 1}
    assert counts["read"] == 7 and counts["quarantined"] == 5
    assert counts["records"] == 5 + 1 == counts["kept"] + counts["duplicates"] + counts["filtered"]
    entries = quarantine_entries(tmp_path / "ds", "uf")
    assert [(e["row"], e["reason"]) for e in entries] == [
        (2, "missing_score"), (3, "too_few_completions"), (4, "empty_response"), (6, "bad_row"), (7, "bad_row")]
    assert "completions[1].overall_score" in entries[0]["detail"]
    assert len(read_records(tmp_path / "ds", "train")) == 6


def test_rated_kinds_need_parquet_or_jsonl(tmp_path):
    path = tmp_path / "uf.csv"
    path.write_text("instruction,completions\n")
    with pytest.raises(InputError, match=r"uf\.csv: a rated_completions source must be \.parquet or \.jsonl"):
        open_source(SourceConfig(name="uf", kind="rated_completions", path=path))


def test_a_rated_source_that_yields_no_pair_stops_the_run(tmp_path):
    path = write_jsonl(tmp_path / "uf.jsonl", [ultrafeedback_row("q", [("a", "x", 5.0), ("b", "y", 5.0)])])
    source = SourceConfig(name="uf", kind="rated_completions", path=path, max_quarantine_share=1.0,
                          pairing={"min_gap": 1.0})
    with pytest.raises(InputError, match=r"source 'uf' .*no row kept .*no_pair=1"):
        build(tmp_path, source)


# ------------------------------------------------------------------------------------------------------ scored pairs
def test_same_comparison_gives_the_same_record_in_every_file_shape(tmp_path):
    """UltraFeedback (best vs worst of two), binarized message lists (JSONL and parquet) and a pairwise message
    list: one comparison, one record content."""
    prompt, good, bad = "Explain recursion.", "A function calling itself.", "No idea."
    rated = write_jsonl(tmp_path / "uf.jsonl", [ultrafeedback_row(prompt, [("m1", bad, 4.0), ("m2", good, 9.0)])])
    binarized = [binarized_row(prompt, good, bad, 9.0, 4.0, prompt_id="abc123")]
    pairwise = write_jsonl(tmp_path / "pw.jsonl", [pairwise_row("messages", [("Human", prompt)], good, bad)])
    records = [
        outcomes("rated_completions", rated)[0].record,
        outcomes("scored_pairs", write_jsonl(tmp_path / "bin.jsonl", binarized))[0].record,
        outcomes("scored_pairs", write_parquet(tmp_path / "bin.parquet", binarized))[0].record,
        outcomes("pairwise_jsonl", pairwise)[0].record,
    ]
    assert {comparison(r) for r in records} == {((prompt,), (good,), (bad,), LABEL_A, None)}
    assert records[1]["id"] == records[2]["id"] == "src/abc123"  # prompt_id is the binarized layout's id
    # Across sources in one dataset, the later shapes are content duplicates of the first.
    sources = [SourceConfig(name="uf", kind="rated_completions", path=rated),
               SourceConfig(name="bin", kind="scored_pairs", path=tmp_path / "bin.parquet", allow_empty=True)]
    manifest = build(tmp_path, *sources)
    assert (manifest["sources"]["bin"]["duplicates"], manifest["sources"]["uf"]["kept"]) == (1, 1)


def test_binarized_winner_by_score_ties_and_quarantines(tmp_path):
    rows = [
        binarized_row("p1", "c1", "r1", 8.0, 3.0, "a"),
        binarized_row("p2", "c2", "r2", 2.0, 7.5, "b"),  # the file's "rejected" scored higher
        binarized_row("p3", "c3", "r3", 5.0, 5.0, "c"),  # tie
        binarized_row("p4", "c4", "r4", None, 5.0, "d"),  # missing score
        binarized_row("p5", "c5", "c5", 9.0, 1.0, "e"),  # identical responses
    ]
    path = write_jsonl(tmp_path / "bin.jsonl", rows)
    got = outcomes("scored_pairs", path)
    assert [o.reason for o in got] == [None, None, None, "missing_score", "identical_responses"]
    first, second, third = (o.record for o in got[:3])
    assert comparison(first) == (("p1",), ("c1",), ("r1",), LABEL_A, None)
    assert comparison(second) == (("p2",), ("r2",), ("c2",), LABEL_A, None)  # winner by score, in A
    assert third["label"] == LABEL_TIE
    two_class = outcomes("scored_pairs", path, pairing={"ties": False})
    assert two_class[2].reason == "no_pair"


def test_pairing_only_for_rated_kinds():
    with pytest.raises(ValidationError, match="pairing applies to rated_completions and scored_pairs"):
        SourceConfig(name="x", kind="lmsys_csv", path="x.csv", pairing={"min_gap": 1.0})


# ----------------------------------------------------------------------------------------------------- conversations
def test_conversations_file_gives_first_user_turns_as_prompts(tmp_path):
    rows = [
        {"id": "c1", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                                  {"role": "user", "content": "and more"},
                                  {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "later"}]},
        {"id": "c2", "messages": [{"from": "human", "value": "ShareGPT style"}, {"from": "gpt", "value": "ok"}]},
        {"id": "c3", "messages": [{"role": "assistant", "content": "only the assistant"}]},
        {"id": "c4", "messages": "not a list"},
        {"id": "c5", "messages": [{"role": "user", "content": "Hi there\n\nand more"}]},  # same prompt as c1
    ]
    path = write_jsonl(tmp_path / "conv.jsonl", rows)
    source = SourceConfig(name="conv", kind="conversations", path=path, max_quarantine_share=1.0)
    assert source.use_as == "pool"
    manifest = build(tmp_path, source)
    counts = manifest["sources"]["conv"]
    assert counts["split"] == "prompts" and counts["reasons"] == {"bad_conversation": 2}
    assert (counts["kept"], counts["duplicates"]) == (2, 1)
    prompts = sorted(read_records(tmp_path / "ds", "prompts"), key=lambda r: r["id"])
    assert [(r["id"], r["prompt"], r["response_a"], r["label"]) for r in prompts] == [
        ("conv/c1", ["Hi there\n\nand more"], [], None), ("conv/c2", ["ShareGPT style"], [], None)]
    with pytest.raises(ValidationError, match="use_as must be pool"):
        SourceConfig(name="conv", kind="conversations", path=path, use_as="train")


# ----------------------------------------------------------------------------------------------------------- routing
def test_use_as_routes_rows_and_pool_rows_keep_their_source_label(tmp_path):
    lmsys = write_csv(tmp_path / "train.csv", good_lmsys_rows(6))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": f"pair prompt {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)])
    heldout = write_csv(tmp_path / "heldout.csv", good_lmsys_rows(3, start=100))
    sources = [SourceConfig(name="lm", kind="lmsys_csv", path=lmsys, use_as="pool"),
               SourceConfig(name="pw", kind="pairwise_jsonl", path=pairs, use_as="pool"),
               SourceConfig(name="ev", kind="lmsys_csv", path=heldout, use_as="eval")]
    manifest = build(tmp_path, *sources)
    assert sorted(manifest["splits"]) == ["eval", "pool"]
    pool = {r["id"]: r for r in read_records(tmp_path / "ds", "pool")}
    assert all(r["label"] is None for r in pool.values())
    # LMSYS rows cycle A, B, tie: the source's label is kept aside.
    assert [pool[f"lm/{i}"]["source_label"] for i in range(6)] == [LABEL_A, LABEL_B, LABEL_TIE] * 2
    # Pairwise rows are balanced A/B, and the source label follows the chosen response.
    sides = [pool[f"pw/{i + 1}"] for i in range(6)]
    assert all(r["response_a" if r["source_label"] == LABEL_A else "response_b"][0].startswith("good") for r in sides)
    assert sorted(r["source_label"] for r in sides) == [LABEL_A] * 3 + [LABEL_B] * 3
    evaluation = read_records(tmp_path / "ds", "eval")
    assert sorted(r["label"] for r in evaluation) == [LABEL_A, LABEL_B, LABEL_TIE]
    assert all(r["source_label"] is None for r in evaluation)
    assert manifest["label_counts"]["eval"] == {"model_a": 1, "model_b": 1, "tie": 1, "none": 0}


def test_use_as_defaults_by_kind_and_is_the_only_spelling():
    assert SourceConfig(name="x", kind="lmsys_csv", path="x.csv").split == "train"
    assert SourceConfig(name="x", kind="pool", path="x.parquet").split == "pool"
    with pytest.raises(ValidationError, match="split"):  # one spelling per setting: the old name is refused
        SourceConfig(name="x", kind="lmsys_csv", path="x.csv", split="pool")


# ----------------------------------------------------------------------------------------------------------- filters
def test_each_filter_is_counted_and_the_rows_still_add_up(tmp_path, capsys):
    rows = [
        {"id": "ok", "prompt": "a question", "response_a": "long enough", "response_b": "also long", "language": "en"},
        {"id": "short", "prompt": "q", "response_a": "tiny", "response_b": "long enough", "language": "en"},
        {"id": "turns", "prompt": ["t1", "t2", "t3"], "response_a": ["long enough"] * 3,
         "response_b": ["also long!"] * 3, "language": "en"},
        {"id": "tokens", "prompt": "word " * 50, "response_a": "long enough", "response_b": "also long",
         "language": "en"},
        {"id": "lang", "prompt": "eine Frage", "response_a": "lang genug", "response_b": "auch lang", "language": "de"},
    ]
    path = write_jsonl(tmp_path / "pool.jsonl", rows)
    filters = FilterConfig(min_response_chars=8, max_turns=2, max_tokens=30, languages=["en"])
    counts = build(tmp_path, SourceConfig(name="p", kind="pool", path=path, filters=filters))["sources"]["p"]
    assert counts["filters"] == {"language": 1, "max_tokens": 1, "max_turns": 1, "min_response_chars": 1}
    assert (counts["read"], counts["kept"], counts["filtered"], counts["quarantined"]) == (5, 1, 4, 0)
    assert [r["id"] for r in read_records(tmp_path / "ds", "pool")] == ["p/ok"]
    assert ("p: read=5 = kept 1 + duplicates 0 + filtered 4 + quarantined 0; filtered: language=1, max_tokens=1, "
            "max_turns=1, min_response_chars=1") in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------- language
def test_language_identification_of_three_languages():
    texts = {"en": "The weather is lovely today, shall we go for a walk in the park?",
             "fr": "Il fait très beau aujourd'hui, voulez-vous aller vous promener dans le parc ?",
             "zh": "今天天气很好，我们去公园散步吧。"}
    for expected, text in texts.items():
        record = {"prompt": [text], "response_a": [], "response_b": []}
        assert detect_language(record) == expected
    assert detect_language({"prompt": ["1234 ?!"], "response_a": [], "response_b": []}) == "unknown"


def test_rows_without_a_language_get_one_and_the_manifest_counts_them(tmp_path):
    rows = [
        {"id": "1", "prompt": "How do I bake bread at home?", "response_a": "Use flour.", "response_b": "Buy it."},
        {"id": "2", "prompt": "Comment faire du pain à la maison ?", "response_a": "Avec de la farine.",
         "response_b": "Achetez-le."},
        {"id": "3", "prompt": "如何在家里做面包？", "response_a": "用面粉。", "response_b": "去买。"},
        {"id": "4", "prompt": "Wie backe ich Brot?", "response_a": "Mit Mehl.", "response_b": "Kaufen.",
         "language": "de"},  # a given language is kept
    ]
    path = write_jsonl(tmp_path / "pool.jsonl", rows)
    manifest = build(tmp_path, SourceConfig(name="p", kind="pool", path=path,
                                            filters=FilterConfig(detect_language=True)))
    assert manifest["sources"]["p"]["languages"] == {"de": 1, "en": 1, "fr": 1, "zh": 1}
    assert manifest["language_counts"]["pool"] == {"de": 1, "en": 1, "fr": 1, "zh": 1}
    by_id = {r["id"]: r["language"] for r in read_records(tmp_path / "ds", "pool")}
    assert by_id == {"p/1": "en", "p/2": "fr", "p/3": "zh", "p/4": "de"}
