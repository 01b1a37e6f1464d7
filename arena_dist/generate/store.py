"""The generated pool: two replies per prompt, committed exactly once per input shard, then one pool file.

The label store's layout and checks (arena_dist.label.store: `shard-00000.parquet` + its `.done.json` commit record,
input sha256, config hash, output checksum; `finalize` proves every input id is there exactly once), holding pool
rows instead of labels. `write_pool` then joins the committed shards into `pool.parquet`, a file `arena-dist
prepare` reads as a `pool` source (id, prompt, response_a, response_b, model_a, model_b, language).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from arena_dist.io import atomic_path, sha256_file
from arena_dist.label.store import InputShard, LabelIntegrityError, LabelStore, load_store_manifest, read_store_shard

POOL_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("prompt", pa.list_(pa.string()), nullable=False),
    pa.field("response_a", pa.list_(pa.string()), nullable=False),
    pa.field("response_b", pa.list_(pa.string()), nullable=False),
    pa.field("model_a", pa.string(), nullable=False),
    pa.field("model_b", pa.string(), nullable=False),
    pa.field("language", pa.string(), nullable=False),
])
POOL_COLUMNS = tuple(POOL_SCHEMA.names)


class PoolStore(LabelStore):
    """`store_id` plays the label store's teacher id (in every commit record and the manifest)."""

    def commit_rows(self, shard: InputShard, columns: dict, extra: dict | None = None) -> dict:
        """Write the shard's pool rows atomically, then its commit record; returns the record."""
        rows = len(columns["id"])
        if rows != shard.rows:
            raise LabelIntegrityError(f"{shard.path}: generated {rows} rows but the dataset manifest says {shard.rows}")
        for name in POOL_COLUMNS:
            if len(columns[name]) != rows:
                raise LabelIntegrityError(f"{shard.path}: column {name} has {len(columns[name])} values for {rows} rows")
        table = pa.Table.from_pydict({name: columns[name] for name in POOL_COLUMNS}, schema=POOL_SCHEMA)
        return self.commit_table(shard, table, extra)


def write_pool(store_dir: str | os.PathLike, output: str | os.PathLike) -> dict:
    """Every shard of a finalized store (checked against its manifest) into one parquet file, atomically."""
    store_dir = Path(store_dir)
    tables = [read_store_shard(store_dir, entry, POOL_COLUMNS) for entry in load_store_manifest(store_dir)["shards"]]
    table = pa.concat_tables(tables) if tables else POOL_SCHEMA.empty_table()
    with atomic_path(Path(output)) as tmp:
        pq.write_table(table, tmp)
    return {"path": str(output), "rows": table.num_rows, "sha256": sha256_file(output)}


def pool_models(table: pa.Table) -> dict[str, int]:
    """Replies per generator (each row counts once for model_a and once for model_b)."""
    counts: dict[str, int] = {}
    for column in ("model_a", "model_b"):
        for model in table.column(column).to_pylist():
            counts[model] = counts.get(model, 0) + 1
    return dict(sorted(counts.items()))


def read_pool(path: str | os.PathLike, columns: Sequence[str] | None = None) -> pa.Table:
    return pq.read_table(path, columns=list(columns) if columns else None)
