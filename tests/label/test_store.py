import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from arena_dist.io import sha256_file
from arena_dist.label.probs import logit_mean, prob_mean, swap_average, swap_back
from arena_dist.label.store import InputShard, LabelIntegrityError, LabelStore, read_labels, soft_labels


def write_input(tmp_path, index, ids):
    path = tmp_path / "data" / f"shard-{index:05d}-of-00002.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids}), path)
    return InputShard(index=index, path=path, sha256=sha256_file(path), rows=len(ids))


def probs(n, k=3, seed=0):
    p = np.random.default_rng(seed).random((n, k)) + 0.1
    return p / p.sum(axis=1, keepdims=True)


def commit_all(store, shards):
    for shard in shards:
        ids = pq.read_table(shard.path).column("id").to_pylist()
        p_ab, p_ba = probs(len(ids), seed=shard.index), probs(len(ids), seed=10 + shard.index)
        store.commit(shard, ids, p_ab, p_ba, swap_average(p_ab, p_ba))


@pytest.fixture
def shards(tmp_path):
    return [write_input(tmp_path, 0, ["s/1", "s/2", "s/3"]), write_input(tmp_path, 1, ["s/4", "s/5"])]


def test_commit_then_finalize(tmp_path, shards):
    store = LabelStore(tmp_path / "labels" / "t1", "t1", "abc")
    assert store.check_committed(shards[0]) == (False, "no commit record")
    commit_all(store, shards)
    assert all(store.check_committed(s)[0] for s in shards)
    manifest = store.finalize(shards, {"split": "pool"})
    assert manifest["rows"] == 5 and manifest["split"] == "pool" and manifest["num_shards"] == 2
    table = read_labels(store.directory)
    assert table.column("id").to_pylist() == ["s/1", "s/2", "s/3", "s/4", "s/5"]
    assert set(table.column("teacher_id").to_pylist()) == {"t1"}
    labels = soft_labels(store.directory)
    assert np.allclose([sum(v) for v in labels.values()], 1.0)


def test_partial_output_never_counts(tmp_path, shards):
    store = LabelStore(tmp_path / "t1", "t1", "abc")
    commit_all(store, shards)
    store.done_path(1).unlink()  # crash after the parquet rename, before the commit record
    done, reason = store.check_committed(shards[1])
    assert not done and "partial output ignored" in reason
    with pytest.raises(LabelIntegrityError, match="shard-00001.*not committed"):
        store.finalize(shards)


def test_tampered_or_stale_outputs_are_redone(tmp_path, shards):
    store = LabelStore(tmp_path / "t1", "t1", "abc")
    commit_all(store, shards)
    pq.write_table(pq.read_table(store.parquet_path(0)).slice(0, 2), store.parquet_path(0))
    assert store.check_committed(shards[0]) == (False, "output checksum differs from the commit record")
    other_config = LabelStore(store.directory, "t1", "different")
    assert not other_config.check_committed(shards[1])[0]
    changed_input = InputShard(1, shards[1].path, "0" * 64, shards[1].rows)
    assert "input_sha256" in store.check_committed(changed_input)[1]
    record = json.loads(store.done_path(1).read_text())
    assert record["rows"] == 2 and record["output_sha256"] == sha256_file(store.parquet_path(1))


def test_finalize_fails_loudly_on_missing_and_duplicate_ids(tmp_path, shards):
    store = LabelStore(tmp_path / "t1", "t1", "abc")
    p = probs(3)
    # Shard 0 labels s/4 instead of s/3: s/3 missing, s/4 labelled twice (extra in shard 0).
    store.commit(shards[0], ["s/1", "s/2", "s/4"], p, None, p)
    store.commit(shards[1], ["s/4", "s/5"], p[:2], None, p[:2])
    with pytest.raises(LabelIntegrityError) as err:
        store.finalize(shards)
    message = str(err.value)
    assert "missing" in message and "'s/3'" in message and "more than once" in message
    assert not store.manifest_path.exists()


def test_commit_refuses_wrong_row_count(tmp_path, shards):
    store = LabelStore(tmp_path / "t1", "t1", "abc")
    with pytest.raises(LabelIntegrityError, match="scored 2 rows"):
        store.commit(shards[0], ["s/1", "s/2"], probs(2), None, probs(2))
    assert not store.parquet_path(0).exists()


def test_swap_back_and_average():
    p_ba = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    mapped = swap_back(p_ba)
    assert np.allclose(mapped, [[0.2, 0.7, 0.1], [0.6, 0.1, 0.3]])
    p_ab = np.array([[0.3, 0.5, 0.2], [0.5, 0.2, 0.3]])
    mean = swap_average(p_ab, mapped)
    assert np.allclose(mean.sum(axis=1), 1.0)
    assert np.allclose(mean[0], [0.25, 0.6, 0.15])
    assert np.allclose(swap_back(np.array([[0.9, 0.1]])), [[0.1, 0.9]])  # 2-class: no tie column


def test_ensemble_means():
    a, b = np.array([[0.6, 0.3, 0.1]]), np.array([[0.2, 0.5, 0.3]])
    assert np.allclose(prob_mean([a, b]), [[0.4, 0.4, 0.2]])
    geo = np.sqrt(a * b)
    assert np.allclose(logit_mean([a, b]), geo / geo.sum())
    assert np.allclose(prob_mean([a, b], weights=[3, 1]), 0.75 * a + 0.25 * b)


def test_finalize_names_duplicates_within_and_across_shards_and_extra_ids(tmp_path):
    shards = [write_input(tmp_path, 0, ["a/1", "a/2", "a/3"]), write_input(tmp_path, 1, ["b/1", "b/2"])]
    store = LabelStore(tmp_path / "t1", "t1", "abc")
    p = probs(3)
    store.commit(shards[0], ["a/1", "a/1", "b/2"], p, None, p)  # a/1 twice in a shard; b/2 from the other shard
    store.commit(shards[1], ["b/1", "b/2"], p[:2], None, p[:2])
    with pytest.raises(LabelIntegrityError) as err:
        store.finalize(shards)
    message = str(err.value)
    assert "shard-00000: 2 input ids missing, e.g. ['a/2', 'a/3']" in message
    assert "shard-00000: 1 ids not in the input, e.g. ['b/2']" in message
    assert "2 ids labelled more than once, e.g. ['a/1', 'b/2']" in message


def test_finalize_is_exact_when_every_id_hash_collides(tmp_path, shards, monkeypatch):
    """The cross-shard check compares 64-bit hashes; equal hashes of different ids are not duplicates."""
    import arena_dist.label.store as store_module

    store = LabelStore(tmp_path / "t1", "t1", "abc")
    commit_all(store, shards)
    monkeypatch.setattr(store_module, "id_hashes", lambda ids: np.zeros(len(ids), dtype=np.int64))
    assert store.finalize(shards)["rows"] == 5
    p = probs(2)
    store.commit(shards[1], ["s/4", "s/4"], p, None, p)  # now a real duplicate (and s/5 missing)
    with pytest.raises(LabelIntegrityError, match=r"1 ids labelled more than once, e.g. \['s/4'\]"):
        store.finalize(shards)
