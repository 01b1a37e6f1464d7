"""The label store: soft labels keyed by record id, committed exactly once per input shard.

Layout of one teacher's store, `<output_dir>/<teacher_id>/`:

    shard-00000.parquet      id, p_ab, p_ba_mapped, p_mean, teacher_id, config_hash (one row per input row, input order)
    shard-00000.done.json    the commit record, written (atomically) only after the parquet has been renamed into
                             place: input shard name + sha256 (from the dataset manifest) + row count, output sha256
    manifest.json            written by `finalize` once every input id is labelled exactly once
    status.json              live progress

`p_ab` are the class probabilities of the original order (A, B[, tie]); `p_ba_mapped` those of the swapped input
mapped back to the original order (the swapped "A" is the original B); `p_mean` is the mean of the two (or `p_ab`
when swap-TTA is off, and then `p_ba_mapped` is null). Vectors have the teacher's own number of classes: a 2-class
teacher (WSDM, no ties) stores [p_A, p_B] and no tie column at all, because a zero there would claim "ties never
happen" when the teacher simply cannot say; merging 2-class and 3-class stores is refused (`ensemble`).

A shard counts as done only when its commit record exists and agrees with the parquet on disk (sha256, row count),
with the current dataset (input sha256) and with the current label config (hash). Anything else — a parquet without
a record, a record whose checksum does not match, a changed input shard or config — is redone: partial outputs never
count as done.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from arena_dist.errors import ArenaDistError, InputError
from arena_dist.io import atomic_path, atomic_write_json, claim_output_dir, sha256_file

STORE_FORMAT_VERSION = 1

LABEL_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("p_ab", pa.list_(pa.float64()), nullable=False),
    pa.field("p_ba_mapped", pa.list_(pa.float64())),
    pa.field("p_mean", pa.list_(pa.float64()), nullable=False),
    pa.field("teacher_id", pa.string(), nullable=False),
    pa.field("config_hash", pa.string(), nullable=False),
], metadata={"arena_dist.label_store_version": str(STORE_FORMAT_VERSION)})


class LabelIntegrityError(ArenaDistError):
    """The label store does not hold every input id exactly once (missing, duplicate or extra ids)."""


@dataclass(frozen=True)
class InputShard:
    """One input shard of the dataset, as the dataset manifest describes it."""

    index: int
    path: Path
    sha256: str
    rows: int

    @property
    def name(self) -> str:
        return self.path.name


def shard_stem(index: int) -> str:
    return f"shard-{index:05d}"


def input_shards(dataset_dir: str | os.PathLike, split: str) -> list[InputShard]:
    """The split's shards with the row counts and checksums recorded in the dataset manifest."""
    from arena_dist.data.store import load_manifest, shard_paths

    dataset_dir = Path(dataset_dir)
    paths = shard_paths(dataset_dir, split)  # refuses a split the manifest does not have
    if not paths:
        raise InputError(f"{dataset_dir}: split {split!r} has no shards")
    entries = load_manifest(dataset_dir)["splits"][split]["shards"]  # the entries `paths` were made from, in order
    return [InputShard(index=index, path=path, sha256=entry["sha256"], rows=int(entry["rows"]))
            for index, (path, entry) in enumerate(zip(paths, entries))]


def read_input_ids(path: str | os.PathLike) -> list[str]:
    return read_input_id_array(path).to_pylist()


def read_input_id_array(path: str | os.PathLike) -> pa.Array:
    """The id column of a shard as one Arrow array (no Python strings)."""
    return pq.read_table(path, columns=["id"]).column("id").combine_chunks()


def _as_matrix(values, rows: int, name: str) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != rows:
        raise ValueError(f"{name}: expected {rows} rows of class probabilities, got shape {matrix.shape}")
    return matrix


def _list_column(matrix: np.ndarray | None, rows: int) -> pa.Array:
    if matrix is None:
        return pa.nulls(rows, type=pa.list_(pa.float64()))
    flat = pa.array(matrix.reshape(-1), type=pa.float64())
    offsets = pa.array(np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


class LabelStore:
    """One teacher's (or one ensemble's) store directory."""

    def __init__(self, directory: str | os.PathLike, teacher_id: str, config_hash: str):
        # A store rewrites its shards: the directory must be new, empty or a store of ours.
        self.directory = claim_output_dir(directory, "label store")
        self.teacher_id = teacher_id
        self.config_hash = config_hash

    def parquet_path(self, index: int) -> Path:
        return self.directory / f"{shard_stem(index)}.parquet"

    def done_path(self, index: int) -> Path:
        return self.directory / f"{shard_stem(index)}.done.json"

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    # -- per-shard commits -------------------------------------------------------------------------------------

    def commit_identity(self, shard: InputShard) -> dict:
        """What a shard's commit record must say, besides its output checksum, for the shard to count as done."""
        return {"teacher_id": self.teacher_id, "config_hash": self.config_hash, "input_name": shard.name,
                "input_sha256": shard.sha256, "rows": shard.rows}

    def check_committed(self, shard: InputShard) -> tuple[bool, str]:
        """(done, reason): done only when the commit record matches the parquet, the input and the config."""
        done_path, parquet_path = self.done_path(shard.index), self.parquet_path(shard.index)
        if not done_path.exists():
            return False, "no commit record" + (" (partial output ignored)" if parquet_path.exists() else "")
        try:
            record = json.loads(done_path.read_text())
        except (OSError, ValueError):
            return False, "unreadable commit record"
        for key, value in self.commit_identity(shard).items():
            if record.get(key) != value:
                return False, f"commit record {key}={record.get(key)!r}, expected {value!r}"
        if not parquet_path.exists():
            return False, "commit record without its parquet"
        if sha256_file(parquet_path) != record.get("output_sha256"):
            return False, "output checksum differs from the commit record"
        return True, "committed"

    def commit(self, shard: InputShard, ids: Sequence[str], p_ab, p_ba_mapped, p_mean,
               extra: dict | None = None) -> dict:
        """Write the shard's labels atomically, then its commit record; returns the record."""
        rows = len(ids)
        if rows != shard.rows:
            raise LabelIntegrityError(f"{shard.path}: scored {rows} rows but the dataset manifest says {shard.rows}")
        p_ab = _as_matrix(p_ab, rows, "p_ab")
        p_mean = _as_matrix(p_mean, rows, "p_mean")
        p_ba_mapped = None if p_ba_mapped is None else _as_matrix(p_ba_mapped, rows, "p_ba_mapped")
        table = pa.Table.from_arrays([
            pa.array(list(ids), type=pa.string()), _list_column(p_ab, rows), _list_column(p_ba_mapped, rows),
            _list_column(p_mean, rows), pa.array([self.teacher_id] * rows, type=pa.string()),
            pa.array([self.config_hash] * rows, type=pa.string()),
        ], schema=LABEL_SCHEMA)
        return self.commit_table(shard, table, extra)

    def commit_table(self, shard: InputShard, table: pa.Table, extra: dict | None = None) -> dict:
        """Write a shard's output table atomically, then its commit record; returns the record."""
        # A stale record must not vouch for the new parquet even for an instant.
        self.done_path(shard.index).unlink(missing_ok=True)
        parquet_path = self.parquet_path(shard.index)
        with atomic_path(parquet_path) as tmp:
            pq.write_table(table, tmp)
        record = {**self.commit_identity(shard), "output": parquet_path.name,
                  "output_sha256": sha256_file(parquet_path), **(extra or {})}
        atomic_write_json(self.done_path(shard.index), record)
        return record

    # -- the final merge ---------------------------------------------------------------------------------------

    def finalize(self, shards: Sequence[InputShard], info: dict | None = None,
                 expected_ids: Callable[[InputShard], Sequence[str] | pa.Array] | None = None) -> dict:
        """Verify every input id is labelled exactly once, then write manifest.json; raise otherwise.

        `expected_ids(shard)`: the ids the shard must hold (default: the input shard's id column).

        Memory is flat in the number of rows: one shard's ids at a time (compared exactly, as Arrow arrays), and for
        the check across shards one 64-bit hash per row in a numpy array (sorted; equal neighbours are candidate
        duplicates). A second pass turns candidate hashes back into id strings, so the error names real duplicate
        ids and a hash collision between two different ids is never reported as one. Holding every id string (as a
        Counter did) cost about 100 bytes a row: the largest term of the driver's memory at a million rows."""
        expected_ids = expected_ids or (lambda shard: read_input_id_array(shard.path))
        problems: list[str] = []
        hashes = np.empty(sum(shard.rows for shard in shards), dtype=np.int64)  # grows if outputs hold more rows
        filled = 0
        shard_entries = []
        checked: list[InputShard] = []
        for shard in shards:
            done, reason = self.check_committed(shard)
            if not done:
                problems.append(f"{shard_stem(shard.index)} ({shard.name}): not committed: {reason}")
                continue
            out_ids = read_input_id_array(self.parquet_path(shard.index))
            in_ids = expected_ids(shard)
            in_ids = in_ids if isinstance(in_ids, pa.Array) else pa.array(list(in_ids), type=pa.string())
            problems += _shard_id_problems(shard_stem(shard.index), in_ids, out_ids)
            shard_hashes = id_hashes(out_ids)
            if filled + len(shard_hashes) > len(hashes):
                hashes.resize(filled + len(shard_hashes), refcheck=False)
            hashes[filled:filled + len(shard_hashes)] = shard_hashes
            filled += len(shard_hashes)
            checked.append(shard)
            record = json.loads(self.done_path(shard.index).read_text())
            shard_entries.append({
                "index": shard.index, "input": shard.name, "input_sha256": shard.sha256, "rows": len(out_ids),
                "path": self.parquet_path(shard.index).name, "sha256": record["output_sha256"],
            })
        hashes = hashes[:filled]
        hashes.sort()
        repeated = hashes[1:][hashes[1:] == hashes[:-1]]  # a boolean mask: no second array of hashes (np.diff)
        if len(repeated):
            duplicates = self._duplicate_ids(checked, np.unique(repeated))
            if duplicates:
                problems.append(f"{sum(duplicates.values())} ids labelled more than once, "
                                f"e.g. {sorted(duplicates)[:3]}")
        total_rows = filled
        expected_rows = sum(shard.rows for shard in shards)
        if not problems and total_rows != expected_rows:
            problems.append(f"{total_rows} labelled rows but the input has {expected_rows}")
        if problems:
            raise LabelIntegrityError(
                f"label store {self.directory} is incomplete or inconsistent: " + "; ".join(problems[:5])
                + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
            )
        manifest = {"format_version": STORE_FORMAT_VERSION, "teacher_id": self.teacher_id,
                    "config_hash": self.config_hash, "rows": total_rows, "num_shards": len(shard_entries),
                    "shards": shard_entries, **(info or {})}
        atomic_write_json(self.manifest_path, manifest)
        return manifest

    def _duplicate_ids(self, shards: Sequence[InputShard], candidates: np.ndarray) -> dict[str, int]:
        """The second pass: id -> extra times labelled, over the ids whose hash is among `candidates`."""
        counts: Counter[str] = Counter()
        for shard in shards:
            out_ids = read_input_id_array(self.parquet_path(shard.index))
            hits = np.flatnonzero(np.isin(id_hashes(out_ids), candidates))
            counts.update(out_ids.take(pa.array(hits, type=pa.int64())).to_pylist())
        return {record_id: count - 1 for record_id, count in counts.items() if count > 1}


def id_hashes(ids: pa.Array) -> np.ndarray:
    """64-bit hashes of ids, for comparing within this process only (Python's string hash is salted per process,
    so these are never stored): a fraction of a second per million ids."""
    return np.fromiter((hash(record_id) for record_id in ids.to_pylist()), dtype=np.int64, count=len(ids))


def _shard_id_problems(stem: str, in_ids: pa.Array, out_ids: pa.Array) -> list[str]:
    """Missing and extra ids of one shard, compared exactly (Arrow set membership), named in the message."""
    import pyarrow.compute as pc

    problems = []
    missing = in_ids.filter(pc.invert(pc.is_in(in_ids, value_set=out_ids)))
    extra = out_ids.filter(pc.invert(pc.is_in(out_ids, value_set=in_ids)))
    for ids, what in ((missing, "input ids missing"), (extra, "ids not in the input")):
        if len(ids):
            unique = sorted(set(ids.to_pylist()))
            problems.append(f"{stem}: {len(unique)} {what}, e.g. {unique[:3]}")
    return problems


def load_store_manifest(store_dir: str | os.PathLike) -> dict:
    path = Path(store_dir) / "manifest.json"
    if not path.exists():
        raise InputError(f"{path}: no label store manifest (the store was never finalized)")
    return json.loads(path.read_text())


def read_store_shard(store_dir: Path, entry: dict, columns: Sequence[str] | None = None,
                     verify: bool = True) -> pa.Table:
    """One shard of a finalized store, as its manifest `entry` names it, checked against the manifest's checksum."""
    path = store_dir / entry["path"]
    if verify and sha256_file(path) != entry["sha256"]:
        raise LabelIntegrityError(f"{path}: checksum differs from {store_dir / 'manifest.json'} (changed after it "
                                  "was finalized)")
    return pq.read_table(path, columns=list(columns) if columns else None)


def read_labels(store_dir: str | os.PathLike, columns: Sequence[str] | None = None, verify: bool = True) -> pa.Table:
    """All labels of a finalized store as one table (shard order, input order within a shard)."""
    store_dir = Path(store_dir)
    tables = [read_store_shard(store_dir, entry, columns, verify) for entry in load_store_manifest(store_dir)["shards"]]
    if not tables:
        return LABEL_SCHEMA.empty_table() if not columns else LABEL_SCHEMA.empty_table().select(list(columns))
    return pa.concat_tables(tables)


def soft_labels(store_dir: str | os.PathLike, column: str = "p_mean") -> dict[str, list[float]]:
    """id -> class probabilities (swap-averaged by default): what the student joins to its records."""
    table = read_labels(store_dir, columns=["id", column])
    return dict(zip(table.column("id").to_pylist(), table.column(column).to_pylist()))


def store_padding(store: LabelStore, shards: Sequence[InputShard]):
    """Padding over every committed shard of the store (earlier runs included), from the commit records."""
    from arena_dist.label.batching import PaddingStats

    total = PaddingStats()
    for shard in shards:
        path = store.done_path(shard.index)
        if path.exists():
            padding = json.loads(path.read_text()).get("padding")
            if padding:
                total = total + PaddingStats(padding["rows"], padding["batches"], padding["real_tokens"],
                                             padding["padded_tokens"], padding.get("fp32_rows", 0))
    return total
