"""`arena-dist prepare --config X.yaml` end to end through the CLI, and its config errors."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from prepare_fixtures import (  # noqa: E402
    binarized_row, good_lmsys_rows, lmsys_row, pool_rows, ultrafeedback_row, write_csv, write_jsonl, write_parquet,
)

from arena_dist.cli import main  # noqa: E402
from arena_dist.config import config_hash, load_config  # noqa: E402
from arena_dist.data.store import load_manifest, read_records, verify_dataset  # noqa: E402
from arena_dist.stages import prepare  # noqa: E402


def write_config(tmp_path, **overrides) -> Path:
    csv_path = write_csv(tmp_path / "train.csv", good_lmsys_rows(30) + [lmsys_row(77, ["q"], ["same"], ["same"])])
    pool_path = write_parquet(tmp_path / "pool.parquet", pool_rows(20))
    config = {
        "output_dir": str(tmp_path / "dataset"),
        "num_shards": 2,
        "num_folds": 3,
        "sources": [
            {"name": "lmsys", "kind": "lmsys_csv", "path": str(csv_path)},
            {"name": "pool", "kind": "pool", "path": str(pool_path)},
        ],
        **overrides,
    }
    path = tmp_path / "prepare.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_cli_prepare_prints_counts_and_manifest(tmp_path, capsys):
    config_path = write_config(tmp_path)
    assert main(["prepare", "--config", str(config_path), "--set", "seed=7"]) == 0
    out = capsys.readouterr().out
    assert "lmsys: read=31 = kept 30 + duplicates 0 + quarantined 1 (identical_responses=1)" in out
    assert f"manifest: {tmp_path / 'dataset' / 'manifest.json'}" in out
    manifest = load_manifest(tmp_path / "dataset")
    config = load_config(prepare.Config, config_path, ["seed=7"])
    assert manifest["config_hash"] == config_hash(config) and manifest["seed"] == 7
    assert yaml.safe_load((tmp_path / "dataset" / "resolved_config.yaml").read_text())["seed"] == 7
    assert verify_dataset(tmp_path / "dataset") == {"pool": 20, "train": 30}
    assert len(read_records(tmp_path / "dataset", "train", rank=1, world_size=2)) == 15


def test_run_returns_a_summary(tmp_path):
    config = load_config(prepare.Config, write_config(tmp_path))
    summary = prepare.run(config)
    assert summary["rows"] == {"pool": 20, "train": 30}
    assert summary["sources"]["pool"]["kept"] == 20


def test_config_errors_are_one_line_naming_the_key(tmp_path, capsys):
    config_path = write_config(tmp_path)
    assert main(["prepare", "--config", str(config_path), "--set", "num_shards=0"]) == 2
    assert "num_shards" in capsys.readouterr().err
    assert main(["prepare", "--config", str(config_path), "--set", "sources.0=x"]) == 2  # not a section
    capsys.readouterr()
    bad = write_config(tmp_path, shards=3)
    assert main(["prepare", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "shards: unknown key" in err and str(bad) in err and err.count("\n") == 1
    dup = write_config(tmp_path, sources=[{"name": "a", "kind": "pool", "path": "x.parquet"}] * 2)
    assert main(["prepare", "--config", str(dup)]) == 2
    assert "source name 'a' is used twice" in capsys.readouterr().err


def test_missing_input_file_is_one_error_and_no_output(tmp_path, capsys):
    config_path = write_config(tmp_path)
    (tmp_path / "pool.parquet").unlink()
    assert main(["prepare", "--config", str(config_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"arena-dist prepare: {tmp_path / 'pool.parquet'}: cannot read (no such file)"
    assert not (tmp_path / "dataset").exists()


def test_example_configs_validate():
    configs = sorted((Path(__file__).resolve().parents[2] / "launch" / "configs").glob("prepare_*.yaml"))
    assert len(configs) >= 2
    for path in configs:
        config = load_config(prepare.Config, path)
        assert config.sources and len({s.name for s in config.sources}) == len(config.sources)


def test_rerun_with_same_config_and_inputs_is_up_to_date(tmp_path, capsys):
    config = load_config(prepare.Config, write_config(tmp_path))
    assert prepare.run(config)["rebuilt"] is True
    shard = tmp_path / "dataset" / "train" / "shard-00000-of-00002.parquet"
    before = shard.stat().st_mtime_ns
    again = prepare.run(config)
    assert again["rebuilt"] is False and again["rows"] == {"pool": 20, "train": 30}
    assert "up to date" in capsys.readouterr().out and shard.stat().st_mtime_ns == before
    assert prepare.run(config.model_copy(update={"force": True}))["rebuilt"] is True
    with open(tmp_path / "train.csv", "a", newline="") as handle:  # the input changed: rebuild
        handle.write('500,m,m,"[""new""]","[""x""]","[""y""]",1,0,0\n')
    summary = prepare.run(config)
    assert summary["rebuilt"] is True and summary["rows"]["train"] == 31
    assert prepare.run(config.model_copy(update={"num_folds": 4}))["rebuilt"] is True  # another config: rebuild


def test_cli_prepare_rated_scored_and_conversation_sources_with_routing_and_filters(tmp_path, capsys):
    rated = write_jsonl(tmp_path / "uf.jsonl", [
        ultrafeedback_row(f"instruction {i}", [("m1", f"best answer {i}", 9.0), ("m2", f"middle answer {i}", 6.0),
                                                ("m3", f"bad {i}", 2.0)]) for i in range(4)])
    scored = write_parquet(tmp_path / "bin.parquet", [
        binarized_row(f"binarized {i}", f"chosen answer {i}", f"rejected answer {i}", 8.0, 3.0, f"id{i}")
        for i in range(4)])
    conversations = write_jsonl(tmp_path / "chat.jsonl", [
        {"conversation_id": f"c{i}", "conversation": [{"role": "user", "content": f"chat prompt {i}"}]}
        for i in range(3)])
    config_path = write_config(tmp_path, sources=[
        {"name": "uf", "kind": "rated_completions", "path": str(rated), "filters": {"min_response_chars": 8},
         "pairing": {"rule": "all_pairs_above_gap", "min_gap": 3.0}},
        {"name": "bin", "kind": "scored_pairs", "path": str(scored), "use_as": "pool"},
        {"name": "chat", "kind": "conversations", "path": str(conversations),
         "columns": {"messages": "conversation", "id": "conversation_id"}},
    ])
    assert main(["prepare", "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    # 4 rows, 3 pairs each (gaps 3, 7, 4); the pairs with "bad i" (5 characters) are filtered.
    assert "uf: read=4 rows = 4 giving 12 records (kept 4 + duplicates 0 + filtered 8) + quarantined 0" in out
    assert verify_dataset(tmp_path / "dataset") == {"pool": 4, "prompts": 3, "train": 4}
    assert {r["source_label"] for r in read_records(tmp_path / "dataset", "pool")} <= {0, 1}
    assert sorted(r["prompt"][0] for r in read_records(tmp_path / "dataset", "prompts")) == [
        f"chat prompt {i}" for i in range(3)]
    # The resolved config reads back to the same config: a rerun from it is a no-op.
    resolved = load_config(prepare.Config, tmp_path / "dataset" / "resolved_config.yaml")
    assert prepare.run(resolved)["rebuilt"] is False
