import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from arena_dist.errors import ConfigError
from arena_dist.io import sha256_file
from arena_dist.label.ensemble import merge_label_stores
from arena_dist.label.probs import swap_average
from arena_dist.label.store import InputShard, LabelIntegrityError, LabelStore, read_labels

IDS = [["p/1", "p/2", "p/3"], ["p/4", "p/5"]]


@pytest.fixture
def shards(tmp_path):
    out = []
    for index, ids in enumerate(IDS):
        path = tmp_path / "data" / f"shard-{index:05d}-of-00002.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": ids}), path)
        out.append(InputShard(index, path, sha256_file(path), len(ids)))
    return out


def make_store(root, teacher_id, shards, seed, num_labels=3, order=None):
    """A finalized store with random probabilities; `order` permutes rows inside shards (members may differ)."""
    rng = np.random.default_rng(seed)
    store = LabelStore(root / teacher_id, teacher_id, f"hash-{teacher_id}")
    values = {}
    for shard, ids in zip(shards, IDS):
        ids = list(reversed(ids)) if order == "reversed" else list(ids)
        p_ab = rng.dirichlet(np.ones(num_labels), size=len(ids))
        p_ba = rng.dirichlet(np.ones(num_labels), size=len(ids))
        p_mean = swap_average(p_ab, p_ba)
        store.commit(shard, ids, p_ab, p_ba, p_mean)
        values.update({record_id: (p_ab[i], p_mean[i]) for i, record_id in enumerate(ids)})
    store.finalize(shards, {"num_labels": num_labels, "split": "pool"})
    return store, values


def test_prob_mean_and_members_recorded(tmp_path, shards):
    _, a = make_store(tmp_path, "teacher-a", shards, seed=1)
    _, b = make_store(tmp_path, "teacher-b", shards, seed=2, order="reversed")
    manifest = merge_label_stores([tmp_path / "teacher-a", tmp_path / "teacher-b"], tmp_path / "ens")
    assert [m["teacher_id"] for m in manifest["ensemble"]["members"]] == ["teacher-a", "teacher-b"]
    assert manifest["ensemble"]["method"] == "prob_mean" and manifest["rows"] == 5
    table = read_labels(tmp_path / "ens").to_pydict()
    assert sorted(table["id"]) == sorted(sum(IDS, []))
    for i, record_id in enumerate(table["id"]):
        np.testing.assert_allclose(table["p_mean"][i], (a[record_id][1] + b[record_id][1]) / 2, atol=1e-12)
        np.testing.assert_allclose(table["p_ab"][i], (a[record_id][0] + b[record_id][0]) / 2, atol=1e-12)
    assert np.allclose(np.sum(table["p_mean"], axis=1), 1.0)


def test_logit_mean(tmp_path, shards):
    _, a = make_store(tmp_path, "a", shards, seed=3)
    _, b = make_store(tmp_path, "b", shards, seed=4)
    merge_label_stores([tmp_path / "a", tmp_path / "b"], tmp_path / "ens", method="logit_mean")
    table = read_labels(tmp_path / "ens").to_pydict()
    record_id = table["id"][0]
    geo = np.sqrt(a[record_id][1] * b[record_id][1])
    np.testing.assert_allclose(table["p_mean"][0], geo / geo.sum(), atol=1e-12)


def test_member_with_missing_id_fails_loudly(tmp_path, shards):
    make_store(tmp_path, "a", shards, seed=5)
    store_b, _ = make_store(tmp_path, "b", shards, seed=6)
    # Corrupt member b after it was finalized: shard 1 loses p/5 (its manifest checksum no longer matches either).
    table = pq.read_table(store_b.parquet_path(1)).slice(0, 1)
    pq.write_table(table, store_b.parquet_path(1))
    with pytest.raises(LabelIntegrityError, match="checksum differs"):
        merge_label_stores([tmp_path / "a", tmp_path / "b"], tmp_path / "ens")
    assert not (tmp_path / "ens" / "manifest.json").exists()
    # Same loss, with b's manifest rewritten to match: the merge still refuses (ids differ from member a).
    import json
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["shards"][1]["sha256"] = sha256_file(store_b.parquet_path(1))
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LabelIntegrityError, match="ids differ"):
        merge_label_stores([tmp_path / "a", tmp_path / "b"], tmp_path / "ens")


def test_unfinished_or_incompatible_members_refused(tmp_path, shards):
    make_store(tmp_path, "a", shards, seed=7)
    make_store(tmp_path, "two", shards, seed=8, num_labels=2)
    with pytest.raises(ConfigError, match="2-class"):
        merge_label_stores([tmp_path / "a", tmp_path / "two"], tmp_path / "ens")
    unfinished = LabelStore(tmp_path / "c", "c", "h")
    assert unfinished.directory.is_dir()  # a store claims (creates) its directory
    with pytest.raises(Exception, match="never finalized"):
        merge_label_stores([tmp_path / "a", unfinished.directory], tmp_path / "ens")
    with pytest.raises(ConfigError, match="weights"):
        merge_label_stores([tmp_path / "a", tmp_path / "a"], tmp_path / "ens", weights=[1.0])
