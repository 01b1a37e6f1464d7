"""Folds grouped by normalised prompt: no prompt (nor a near-duplicate that normalises equal) in two folds."""

from __future__ import annotations

from collections import defaultdict

from prepare_fixtures import lmsys_row, write_csv, write_jsonl

from arena_dist.data.folds import fold_filter, fold_of
from arena_dist.data.normalize import normalize_text, prompt_key
from arena_dist.data.sources import SourceConfig
from arena_dist.data.store import build_dataset, iter_records, load_manifest


def test_fold_of_is_stable_in_range_and_seeded():
    prompts = [[f"prompt number {i}"] for i in range(2000)]
    folds = [fold_of(p, 5) for p in prompts]
    assert set(folds) == {0, 1, 2, 3, 4}
    assert all(300 < folds.count(k) < 500 for k in range(5))  # roughly even
    assert folds == [fold_of(p, 5) for p in prompts]  # stable (no Python hash())
    assert folds != [fold_of(p, 5, seed=1) for p in prompts]  # another seed, another split
    assert fold_of(["Hello   World"], 7) == fold_of(["hello world "], 7) == fold_of(["ＨＥＬＬＯ\tworld"], 7)
    assert prompt_key(["a", "b"]) != prompt_key(["a b"])  # turn boundaries are part of the prompt


def test_normalize_text():
    assert normalize_text("  Ｆｕｌｌ\u00a0WIDTH\n\ttext ") == "full width text"
    assert normalize_text("Straße") == "strasse"


def test_fold_filter():
    accept = fold_filter([0, 1, 2], [1])
    assert [accept(k) for k in range(4)] == [True, False, True, False]
    assert fold_filter(None, None)(9)


def test_no_prompt_in_two_folds_in_a_prepared_dataset(tmp_path):
    """Many rows share prompts (as in LMSYS: one prompt, several model pairs), some only after normalisation."""
    rows, pool = [], []
    for i in range(300):
        base = f"Shared prompt {i % 40}"
        variant = [base, base.upper(), f"  {base}  ", base.replace(" ", "\u3000")][i % 4]  # near-duplicates
        rows.append(lmsys_row(i, [variant], [f"a{i}"], [f"b{i}"]))
        pool.append({"id": i, "prompt": base.lower(), "response_a": f"pa{i}", "response_b": f"pb{i}"})
    build_dataset(
        [SourceConfig(name="lm", kind="lmsys_csv", path=write_csv(tmp_path / "t.csv", rows)),
         SourceConfig(name="pool", kind="pool", path=write_jsonl(tmp_path / "p.jsonl", pool))],
        tmp_path / "ds", num_shards=3, num_folds=4, seed=3,
    )
    folds_of_prompt = defaultdict(set)
    for split in ("train", "pool"):
        for record in iter_records(tmp_path / "ds", split):
            folds_of_prompt[prompt_key(record["prompt"])].add(record["fold"])
    assert len(folds_of_prompt) == 40
    assert all(len(folds) == 1 for folds in folds_of_prompt.values())  # train and pool share the grouping too
    manifest = load_manifest(tmp_path / "ds")
    assert sum(manifest["fold_sizes"]["train"]) == 300 and len(manifest["fold_sizes"]["train"]) == 4
    assert min(manifest["fold_sizes"]["train"]) > 0
