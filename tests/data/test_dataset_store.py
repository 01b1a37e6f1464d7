"""The dataset store (arena_dist.data.store; named so it does not clash with tests/label/test_store.py): counts,
dedup, determinism, rank slices, verification, and readers of other libraries."""

from __future__ import annotations

import json
import os
import random

import pyarrow.parquet as pq
import pytest
from prepare_fixtures import good_lmsys_rows, lmsys_row, pool_rows, write_csv, write_jsonl, write_parquet

from arena_dist.data.normalize import SeenHashes, comparison_hash
from arena_dist.data.records import RECORD_SCHEMA
from arena_dist.data.sources import SourceConfig
from arena_dist.data.store import (
    build_dataset,
    count_records,
    iter_records,
    load_manifest,
    rank_bounds,
    read_records,
    read_shard,
    shard_of,
    shard_paths,
    verify_dataset,
)
from arena_dist.errors import InputError


@pytest.fixture
def sources(tmp_path):
    """A labelled csv (with one bad row), a pairwise set and a pool."""
    lm = write_csv(tmp_path / "train.csv", good_lmsys_rows(60) + [lmsys_row(999, "broken", ["a"], ["b"])])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": f"pair prompt {i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(25)
    ])
    pool = write_parquet(tmp_path / "pool.parquet", pool_rows(90))
    return [
        SourceConfig(name="lm", kind="lmsys_csv", path=lm),
        SourceConfig(name="dpo", kind="pairwise_jsonl", path=pairs),
        SourceConfig(name="pool", kind="pool", path=pool),
    ]


@pytest.fixture
def dataset(tmp_path, sources):
    build_dataset(sources, tmp_path / "ds", num_shards=4, num_folds=3, seed=1, batch_rows=7)
    return tmp_path / "ds"


def test_layout_manifest_and_count_conservation(dataset):
    manifest = load_manifest(dataset)
    assert manifest["schema_version"] == 1 and manifest["num_shards"] == 4 and manifest["num_folds"] == 3
    assert sorted(manifest["splits"]) == ["pool", "train"]
    for name, counts in manifest["sources"].items():
        assert counts["read"] == counts["kept"] + counts["duplicates"] + counts["quarantined"], name
    lm = manifest["sources"]["lm"]
    assert lm.pop("input_bytes") == os.path.getsize(lm["path"]) and len(lm.pop("input_sha256")) == 64
    assert lm == {
        "kind": "lmsys_csv", "path": lm["path"], "split": "train", "read": 61, "kept": 60,
        "duplicates": 0, "quarantined": 1, "reasons": {"bad_json": 1}, "repaired_surrogates": 0,
        "quarantine_file": "quarantine/lm.jsonl", "records": 60, "filtered": 0, "filters": {},
        "languages": {"unknown": 60},
    }
    train = manifest["splits"]["train"]
    assert train["rows"] == 85 == sum(s["rows"] for s in train["shards"]) == sum(train["fold_sizes"])
    assert [s["path"] for s in train["shards"]] == [f"train/shard-{i:05d}-of-00004.parquet" for i in range(4)]
    assert sum(train["label_counts"].values()) == 85 and train["label_counts"]["none"] == 0
    assert manifest["label_counts"]["pool"] == {"model_a": 0, "model_b": 0, "tie": 0, "none": 90}
    assert (dataset / "quarantine" / "dpo.jsonl").read_text() == ""
    assert verify_dataset(dataset) == {"pool": 90, "train": 85}
    for path in shard_paths(dataset, "train"):
        assert pq.read_schema(path).equals(RECORD_SCHEMA)
        assert all(shard_of(r["id"], 4) == int(path.name[6:11]) for r in read_shard(path))
    assert oct(dataset.stat().st_mode)[-3:] == "755"


def test_same_input_and_config_give_byte_identical_shards(tmp_path, sources):
    first = build_dataset(sources, tmp_path / "one", num_shards=4, num_folds=3, seed=1)
    second = build_dataset(sources, tmp_path / "two", num_shards=4, num_folds=3, seed=1)
    for split in first["splits"]:
        for a, b in zip(shard_paths(tmp_path / "one", split), shard_paths(tmp_path / "two", split)):
            assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "one" / "manifest.json").read_text() == (tmp_path / "two" / "manifest.json").read_text()


def test_dedup_by_normalised_content_and_swapped_order(tmp_path):
    lm = write_csv(tmp_path / "a.csv", [
        lmsys_row(1, ["What is  2+2?"], ["Four"], ["4"]),
        lmsys_row(2, ["what is 2+2?"], ["4"], ["four"], winner=(0, 1, 0)),  # same comparison, swapped, case/space
        lmsys_row(3, ["ｗｈａｔ is 2+2?"], ["four "], ["4"]),  # NFKC full-width letters
        lmsys_row(4, ["What is 2+3?"], ["Four"], ["4"]),  # another prompt: kept
    ])
    pool = write_jsonl(tmp_path / "pool.jsonl", [
        {"id": "x", "prompt": "what is 2+3?", "response_a": "4", "response_b": "four"},  # duplicate across sources
        {"id": "y", "prompt": "new", "response_a": "4", "response_b": "four"},
    ])
    manifest = build_dataset(
        [SourceConfig(name="lm", kind="lmsys_csv", path=lm), SourceConfig(name="p", kind="pool", path=pool)],
        tmp_path / "ds", num_shards=2,
    )
    assert manifest["sources"]["lm"]["duplicates"] == 2 and manifest["sources"]["lm"]["kept"] == 2
    assert manifest["sources"]["p"]["duplicates"] == 1 and manifest["sources"]["p"]["kept"] == 1
    assert sorted(r["id"] for r in iter_records(tmp_path / "ds", "train")) == ["lm/1", "lm/4"]  # first wins
    assert comparison_hash(["q"], ["a"], ["b"]) == comparison_hash(["Q "], ["B"], ["a"])
    assert comparison_hash(["q"], ["a", "b"], ["c"]) != comparison_hash(["q"], ["a"], ["b", "c"])


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_rank_slices_cover_every_record_exactly_once(dataset, world_size):
    for folds, exclude in [(None, None), ([0, 2], None), (None, [1]), ([0, 1], [1])]:
        everything = [r["id"] for r in read_records(dataset, "train", folds=folds, exclude_folds=exclude)]
        assert len(everything) == count_records(dataset, "train", folds=folds, exclude_folds=exclude)
        slices = [
            [r["id"] for r in read_records(dataset, "train", rank, world_size, folds=folds, exclude_folds=exclude)]
            for rank in range(world_size)
        ]
        assert [i for s in slices for i in s] == everything  # disjoint, contiguous, in order, complete
        assert max(map(len, slices)) - min(map(len, slices)) <= 1
    records = read_records(dataset, "train", folds=[0, 2])
    assert records and {r["fold"] for r in records} <= {0, 2}


def test_rank_bounds_partition_any_total_for_any_world_size():
    for total in range(0, 40):
        for world_size in range(1, 50):  # including more ranks than records (some slices are empty)
            bounds = [rank_bounds(total, rank, world_size) for rank in range(world_size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == total
            assert all(bounds[i][1] == bounds[i + 1][0] for i in range(world_size - 1))
            sizes = [end - start for start, end in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_read_records_order_matches_iter_records_and_rank_errors(dataset):
    assert read_records(dataset, "pool") == list(iter_records(dataset, "pool"))
    assert rank_bounds(10, 2, 3) == (6, 10)
    with pytest.raises(ValueError, match="rank 3 out of range"):
        read_records(dataset, rank=3, world_size=3)
    with pytest.raises(InputError, match="no split 'test'"):
        shard_paths(dataset, "test")


def test_verify_dataset_catches_tampering(dataset):
    path = shard_paths(dataset, "train")[0]
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(InputError, match="sha256"):
        verify_dataset(dataset)
    path.unlink()
    with pytest.raises(InputError, match="missing"):
        verify_dataset(dataset)


def test_missing_column_stops_the_run_and_leaves_no_output(tmp_path, sources):
    bad = write_parquet(tmp_path / "wsdm.parquet", [{"id": "1", "prompt": "q", "response_a": "a", "winner": "model_a"}])
    with pytest.raises(InputError) as err:
        build_dataset([*sources, SourceConfig(name="w", kind="wsdm_parquet", path=bad)], tmp_path / "out")
    assert str(err.value) == f"{bad}: missing required column 'response_b'"
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no temp dir left behind


def test_error_mid_run_leaves_no_partial_output(tmp_path, sources):
    """A pool whose second row group is corrupt fails after other sources wrote rows: nothing appears under `out`."""
    import pyarrow as pa

    path = tmp_path / "corrupt.parquet"
    pq.write_table(pa.Table.from_pylist(pool_rows(4000)), path, row_group_size=2000, compression="snappy")
    metadata = pq.ParquetFile(path).metadata.row_group(1).column(1)
    data = bytearray(path.read_bytes())
    start = metadata.data_page_offset + 64
    data[start : start + 256] = bytes(256)  # zero a stretch of row group 1's compressed prompt page
    path.write_bytes(bytes(data))
    corrupt = SourceConfig(name="corrupt", kind="pool", path=path)
    with pytest.raises(InputError, match=r"corrupt\.parquet: cannot read after row \d+ "):
        build_dataset([*sources, corrupt], tmp_path / "out", batch_rows=50)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_shards_read_with_hugging_face_datasets(dataset):
    import datasets

    files = [str(p) for p in shard_paths(dataset, "train")]
    loaded = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(dataset.parent / "hf"))
    assert len(loaded) == 85
    assert sorted(loaded["id"]) == sorted(r["id"] for r in iter_records(dataset, "train"))
    assert isinstance(loaded[0]["prompt"], list)


@pytest.mark.slow
def test_shards_read_with_ray_data(dataset, ray_cluster):
    import ray

    ds = ray.data.read_parquet([str(p) for p in shard_paths(dataset, "pool")])
    rows = ds.take_all()
    assert len(rows) == 90
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in iter_records(dataset, "pool"))
    assert list(rows[0]["prompt"]) and rows[0]["label"] is None


def test_seen_hashes_matches_a_python_set():
    rng = random.Random(0)
    values = [rng.getrandbits(64) for _ in range(5000)] * 2
    seen, reference = SeenHashes(buffer_size=97), set()
    for value in values:
        assert seen.add(value) == (value not in reference)
        reference.add(value)
    assert len(seen) == len(reference)
    assert all(v in seen for v in values) and (2**64 - 1 in seen) == (2**64 - 1 in reference)


def test_manifest_is_plain_json_without_timestamps(dataset):
    text = (dataset / "manifest.json").read_text()
    assert "time" not in text and json.loads(text)["config_hash"] is None  # no config given to build_dataset


# ------------------------------------------------------------------------------------------ per-source limits
def _build(tmp_path, *sources):
    return build_dataset(list(sources), tmp_path / "out", num_shards=1, num_folds=2)


def _stops(tmp_path, *sources) -> str:
    with pytest.raises(InputError) as err:
        build_dataset(list(sources), tmp_path / "failed", num_shards=1, num_folds=2)
    assert not (tmp_path / "failed").exists()
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_source_with_no_rows_or_none_kept_stops_unless_allowed(tmp_path):
    empty = write_csv(tmp_path / "empty.csv", [])  # a header and nothing else
    good = write_jsonl(tmp_path / "pool.jsonl", pool_rows(6))
    assert _stops(tmp_path, SourceConfig(name="lm", kind="lmsys_csv", path=empty)) == (
        f"source 'lm' ({empty}): no rows; set allow_empty: true for this source if that is expected"
    )
    manifest = _build(tmp_path, SourceConfig(name="lm", kind="lmsys_csv", path=empty, allow_empty=True),
                      SourceConfig(name="p", kind="pool", path=good))
    assert manifest["sources"]["lm"]["read"] == 0 and manifest["sources"]["p"]["kept"] == 6
    again = write_jsonl(tmp_path / "again.jsonl", [{**row, "id": f"x{i}"} for i, row in enumerate(pool_rows(6))])
    message = _stops(tmp_path, SourceConfig(name="p", kind="pool", path=good),
                     SourceConfig(name="copy", kind="pool", path=again))  # every row a duplicate of `p`
    assert message == (
        f"source 'copy' ({again}): no row kept (read=6 = kept 0 + duplicates 6 + quarantined 0); "
        "set allow_empty: true for this source if that is expected"
    )


def test_a_source_mostly_quarantined_stops_above_max_quarantine_share(tmp_path):
    rows = good_lmsys_rows(4) + [lmsys_row(10 + i, "broken", ["a"], ["b"]) for i in range(5)]
    path = write_csv(tmp_path / "train.csv", rows)  # 5 of 9 rows quarantined: 56 %
    message = _stops(tmp_path, SourceConfig(name="lm", kind="lmsys_csv", path=path))
    assert message == (
        f"source 'lm' ({path}): 5 of 9 rows quarantined (56%, bad_json=5), above max_quarantine_share 0.5; "
        "fix the file or its columns mapping, or raise max_quarantine_share for this source"
    )
    counts = _build(tmp_path, SourceConfig(name="lm", kind="lmsys_csv", path=path, max_quarantine_share=0.6))
    assert counts["sources"]["lm"]["kept"] == 4 and counts["sources"]["lm"]["quarantined"] == 5
    half = write_csv(tmp_path / "half.csv", good_lmsys_rows(5) + rows[4:])  # exactly 50 %: not above
    assert _build(tmp_path, SourceConfig(name="lm", kind="lmsys_csv", path=half))["sources"]["lm"]["kept"] == 5
    everything = write_csv(tmp_path / "bad.csv", rows[4:])
    strict = SourceConfig(name="lm", kind="lmsys_csv", path=everything, max_quarantine_share=1.0)
    assert "no row kept (read=5 = kept 0 + duplicates 0 + quarantined 5, bad_json=5)" in _stops(tmp_path, strict)
    lenient = strict.model_copy(update={"allow_empty": True})
    assert _build(tmp_path, lenient)["sources"]["lm"]["quarantined"] == 5
    with pytest.raises(ValueError, match="less than or equal to 1"):
        SourceConfig(name="lm", kind="lmsys_csv", path=path, max_quarantine_share=1.5)


def test_limit_errors_reach_the_cli_as_one_line(tmp_path, capsys):
    from arena_dist.cli import main

    path = write_jsonl(tmp_path / "pairs.jsonl", [{"chosen": "no", "rejected": "markers"}] * 3)
    config = tmp_path / "prepare.yaml"
    source = f"{{name: hh, kind: pairwise_jsonl, path: {path}}}"
    config.write_text(f"output_dir: {tmp_path / 'ds'}\nsources:\n  - {source}\n")
    assert main(["prepare", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err == (f"arena-dist prepare: source 'hh' ({path}): 3 of 3 rows quarantined (100%, bad_transcript=3), "
                   "above max_quarantine_share 0.5; fix the file or its columns mapping, or raise "
                   "max_quarantine_share for this source\n")


def test_many_shards_buffer_a_bounded_number_of_rows_and_write_the_same_rows(tmp_path, monkeypatch):
    """The writer's memory does not grow with the shard count (a big pool has hundreds of shards); the shards hold
    the same rows in the same order, in the same row groups, as with unbounded buffers."""
    import arena_dist.data.store as store_module

    source = tmp_path / "pool.parquet"
    write_parquet(source, pool_rows(3000))
    sources_ = [SourceConfig(name="pool", kind="pool", path=source)]
    build_dataset(sources_, tmp_path / "bounded", num_shards=64, num_folds=2, batch_rows=16)
    Writer = store_module.ShardedSplitWriter
    observed = []
    original_flush = Writer._flush

    def watching_flush(self, index):
        observed.append(self._buffered)
        original_flush(self, index)

    monkeypatch.setattr(Writer, "_flush", watching_flush)
    build_dataset(sources_, tmp_path / "watched", num_shards=64, num_folds=2, batch_rows=16)
    assert max(observed) <= 8 * 16 + 1  # the old per-shard bound allowed 64 shards x 16 rows = 1024
    # The old behaviour: a budget never reached.
    monkeypatch.setattr(Writer.__init__, "__defaults__", (2048, 10**9))
    build_dataset(sources_, tmp_path / "unbounded", num_shards=64, num_folds=2, batch_rows=16)
    for path in shard_paths(tmp_path / "bounded", "pool"):
        assert pq.read_table(path).equals(pq.read_table(tmp_path / "unbounded" / "pool" / path.name))
    metadata = pq.ParquetFile(shard_paths(tmp_path / "bounded", "pool")[0]).metadata
    # Row groups of batch_rows rows (the last one shorter), however the spills were cut; no spill files left.
    assert metadata.num_row_groups > 1
    assert all(metadata.row_group(i).num_rows == 16 for i in range(metadata.num_row_groups - 1))
    assert not [p.name for p in (tmp_path / "bounded").iterdir() if p.name.startswith(".spill")]
