"""How often a teacher's labels agree with a pool source's own labels.

When prepare routes a labelled source (a public preference set, say) to the pool, the source's label is kept in the
pool's `source_label` column. After labelling, the teacher's most likely class is compared with it on those rows: a
check of the teacher on answers someone else gave, and a measure of how far that source's labels can be trusted for
training. A 2-class teacher has no tie class: rows the source calls a tie are counted apart, not as disagreements.

Read shard by shard (input shard i against label shard i, joined by id), so memory stays that of one shard.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow.parquet as pq

from arena_dist.label.store import InputShard, load_store_manifest, read_store_shard

TIE = 2


def source_agreement(shards: Sequence[InputShard], store_dir: str | Path) -> dict | None:
    """{rows, agreement, ties_skipped, by_source: {source: {rows, agreement}}}; None when no pool row has a
    source label (or the pool predates the column)."""
    store_dir = Path(store_dir)
    entries = {entry["index"]: entry for entry in load_store_manifest(store_dir)["shards"]}
    rows: Counter[str] = Counter()
    agreed: Counter[str] = Counter()
    ties_skipped = 0
    for shard in shards:
        if "source_label" not in pq.read_schema(shard.path).names:
            continue
        inputs = pq.read_table(shard.path, columns=["id", "source", "source_label"]).to_pydict()
        labelled = [(i, s, y) for i, s, y in zip(inputs["id"], inputs["source"], inputs["source_label"])
                    if y is not None]
        if not labelled:
            continue
        table = read_store_shard(store_dir, entries[shard.index], ["id", "p_mean"])
        predicted = dict(zip(table.column("id").to_pylist(),
                             np.argmax(np.asarray(table.column("p_mean").to_pylist()), axis=1).tolist()))
        classes = len(table.column("p_mean")[0]) if table.num_rows else 3
        for record_id, source, label in labelled:
            if label == TIE and classes == 2:
                ties_skipped += 1
                continue
            rows[source] += 1
            agreed[source] += int(predicted[record_id] == label)
    total = sum(rows.values())
    if not total:
        return None
    return {"rows": total, "agreement": sum(agreed.values()) / total, "ties_skipped": ties_skipped,
            "by_source": {source: {"rows": n, "agreement": agreed[source] / n} for source, n in sorted(rows.items())}}
