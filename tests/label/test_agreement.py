"""The label stage's check against pool sources that came with labels: the teacher's argmax against `source_label`,
shard by shard, per source, ties apart for a 2-class teacher."""

import json

import numpy as np
import pyarrow.parquet as pq

from arena_dist.data.sources import SourceConfig
from arena_dist.data.store import build_dataset
from arena_dist.label.agreement import source_agreement
from arena_dist.label.store import LabelStore, input_shards


def pairwise_file(path, n):
    with open(path, "w") as out:
        for i in range(n):
            out.write(json.dumps({"prompt": f"question number {i}?", "chosen": f"a good answer {i}",
                                  "rejected": f"a worse answer {i}"}) + "\n")
    return path


def test_agreement_counts_the_teachers_argmax_against_each_sources_own_label(tmp_path):
    from arena_dist.data.synth import generate_pool

    pool = tmp_path / "pool.parquet"
    generate_pool(20, 0, pool, progress=False)
    sources = [SourceConfig(name="pool", kind="pool", path=pool),
               SourceConfig(name="prefs", kind="pairwise_jsonl", path=pairwise_file(tmp_path / "p.jsonl", 30),
                            use_as="pool")]
    dataset = tmp_path / "dataset"
    build_dataset(sources, dataset, num_shards=3, num_folds=2, seed=0)
    shards = input_shards(dataset, "pool")
    store = LabelStore(tmp_path / "labels", "t0", "hash")
    rng = np.random.default_rng(0)
    expected_rows = expected_agree = 0
    for shard in shards:
        table = pq.read_table(shard.path, columns=["id", "source_label"]).to_pydict()
        labels = [y if y is not None else int(rng.integers(0, 3)) for y in table["source_label"]]
        agree = rng.random(len(labels)) < 0.7
        predicted = [y if ok else (y + 1) % 3 for y, ok in zip(labels, agree)]
        p_mean = np.full((len(labels), 3), 0.1)
        p_mean[np.arange(len(labels)), predicted] = 0.8
        store.commit(shard, table["id"], p_mean, None, p_mean)
        has_label = np.array([y is not None for y in table["source_label"]])
        expected_rows += int(has_label.sum())
        expected_agree += int((agree & has_label).sum())
    store.finalize(shards)

    result = source_agreement(shards, store.directory)
    assert expected_rows == 30 and result["rows"] == 30 and list(result["by_source"]) == ["prefs"]
    assert result["agreement"] == expected_agree / 30 and 0 < expected_agree < 30
    assert result["by_source"]["prefs"] == {"rows": 30, "agreement": expected_agree / 30}


def test_no_source_labels_means_no_agreement(tmp_path):
    from tiny_fixtures import make_pool_dataset

    dataset = make_pool_dataset(tmp_path / "dataset", n_rows=12, num_shards=2)
    shards = input_shards(dataset, "pool")
    store = LabelStore(tmp_path / "labels", "t0", "hash")
    for shard in shards:
        ids = pq.read_table(shard.path, columns=["id"]).column("id").to_pylist()
        store.commit(shard, ids, np.full((len(ids), 3), 1 / 3), None, np.full((len(ids), 3), 1 / 3))
    store.finalize(shards)
    assert source_agreement(shards, store.directory) is None
