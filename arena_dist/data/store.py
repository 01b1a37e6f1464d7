"""The dataset store: canonical records in parquet shards plus a manifest.

Layout of a dataset directory::

    manifest.json                          schema version, config hash, shards (rows, sha256), counts, folds
    resolved_config.yaml                   the prepare config that built it
    <split>/shard-00000-of-00008.parquet   split: "train" / "eval" (labelled), "pool" (unlabelled), "prompts"
    quarantine/<source>.jsonl              rows that could not be used, with row number and reason

The shard of a record is a stable hash of its id, rows keep source order inside a shard, and nothing carries a
timestamp, so the same input and config give byte-identical shards.

Reader API (used by every later stage; plain ints, no torch.distributed):
`load_manifest`, `shard_paths`, `read_shard`, `iter_records`, `read_records`, `count_records`, `verify_dataset`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from arena_dist.data.folds import fold_filter
from arena_dist.data.normalize import hash64
from arena_dist.data.records import LABEL_NAMES, RECORD_SCHEMA, SCHEMA_VERSION, Record
from arena_dist.errors import InputError
from arena_dist.io import sha256_file
from arena_dist.progress import progress_bar

MANIFEST = "manifest.json"
QUARANTINE_DIR = "quarantine"
PARQUET_COMPRESSION = "zstd"
# Min/max statistics only for the small columns (filters on fold, label, source ...). For the long text columns they
# are useless and the writer keeps them for every row group until the file closes: memory that grows with the rows.
STATISTICS_COLUMNS = ["id", "source", "model_a", "model_b", "language", "label", "fold", "source_label"]


# ----------------------------------------------------------------------------------------------------------- naming
def shard_name(index: int, num_shards: int) -> str:
    return f"shard-{index:05d}-of-{num_shards:05d}.parquet"


def shard_of(record_id: str, num_shards: int) -> int:
    """Stable shard index of a record id (blake2b, the same in every process and run)."""
    return hash64(record_id, salt="shard") % num_shards


# ----------------------------------------------------------------------------------------------------------- reading
def load_manifest(dataset_dir: str | os.PathLike) -> dict:
    path = Path(dataset_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no manifest (not a prepared dataset directory?)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable manifest ({exc})") from None
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise InputError(f"{path}: schema_version {version!r}, this code reads {SCHEMA_VERSION}")
    return manifest


def shard_paths(dataset_dir: str | os.PathLike, split: str) -> list[Path]:
    splits = load_manifest(dataset_dir).get("splits", {})
    if split not in splits:
        raise InputError(
            f"{Path(dataset_dir) / MANIFEST}: no split {split!r} (has: {', '.join(sorted(splits)) or 'none'})"
        )
    return [Path(dataset_dir) / shard["path"] for shard in splits[split]["shards"]]


def read_shard(path: str | os.PathLike) -> list[Record]:
    try:
        table = pq.read_table(path, schema=RECORD_SCHEMA)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: unreadable shard ({exc})") from None
    return table.to_pylist()  # type: ignore[return-value]


def iter_records(dataset_dir: str | os.PathLike, split: str = "train", batch_size: int = 4096) -> Iterator[Record]:
    """Every record of `split` in canonical order (shard by shard), reading one batch at a time."""
    for path in shard_paths(dataset_dir, split):
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=batch_size):
            yield from batch.to_pylist()  # type: ignore[misc]


def _shard_masks(paths: list[Path], accept) -> list[list[bool]]:
    """Per shard, which rows pass the fold filter (reads only the small `fold` column)."""
    return [[accept(fold) for fold in pq.read_table(path, columns=["fold"]).column("fold").to_pylist()]
            for path in paths]


def rank_bounds(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of `rank`'s contiguous slice of `total` items; sizes differ by at most one."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    return total * rank // world_size, total * (rank + 1) // world_size


def count_records(dataset_dir, split: str = "train", folds=None, exclude_folds=None) -> int:
    accept = fold_filter(folds, exclude_folds)
    return sum(sum(mask) for mask in _shard_masks(shard_paths(dataset_dir, split), accept))


def read_records(dataset_dir: str | os.PathLike, split: str = "train", rank: int = 0, world_size: int = 1,
                 folds: Iterable[int] | None = None, exclude_folds: Iterable[int] | None = None) -> list[Record]:
    """`rank`'s contiguous slice of the (fold-filtered) records of `split`, in canonical order.

    The slices of ranks 0..world_size-1 are disjoint, cover every selected record exactly once and differ in size by
    at most one. Only the shards that overlap the slice are read in full.
    """
    accept = fold_filter(folds, exclude_folds)
    paths = shard_paths(dataset_dir, split)
    masks = _shard_masks(paths, accept)
    start, end = rank_bounds(sum(sum(mask) for mask in masks), rank, world_size)
    selected: list[Record] = []
    offset = 0  # number of selected records in the shards before this one
    for path, mask in zip(paths, masks):
        count = sum(mask)
        if offset + count > start and offset < end:
            rows = [row for row, keep in zip(read_shard(path), mask) if keep]
            selected.extend(rows[max(0, start - offset) : end - offset])
        offset += count
        if offset >= end:
            break
    return selected


def verify_dataset(dataset_dir: str | os.PathLike) -> dict:
    """Check every shard's sha256 and row count against the manifest; raise InputError on the first mismatch."""
    manifest = load_manifest(dataset_dir)
    checked = {}
    for split, entry in manifest["splits"].items():
        rows = 0
        for shard in entry["shards"]:
            path = Path(dataset_dir) / shard["path"]
            if not path.exists():
                raise InputError(f"{path}: shard listed in the manifest is missing")
            digest = sha256_file(path)
            if digest != shard["sha256"]:
                raise InputError(f"{path}: sha256 {digest[:12]}… differs from the manifest's {shard['sha256'][:12]}…")
            actual = pq.ParquetFile(path).metadata.num_rows
            if actual != shard["rows"]:
                raise InputError(f"{path}: {actual} rows, the manifest says {shard['rows']}")
            rows += actual
        if rows != entry["rows"]:
            raise InputError(f"{Path(dataset_dir) / MANIFEST}: split {split!r} rows {entry['rows']} != shards {rows}")
        checked[split] = rows
    return checked


# ----------------------------------------------------------------------------------------------------------- writing
class ShardedSplitWriter:
    """Streams records of one split into `num_shards` parquet files, `batch_rows` rows per row group.

    Memory is bounded by `max_buffered_rows` rows in all (default: 8 shards' worth, `8 * batch_rows`), whatever the
    number of records or shards. Up to 8 shards every shard buffers `batch_rows` rows and writes them as a row group,
    as it always did. With more shards (a 1M-row pool for 32 actors wants a few hundred) that bound per shard let
    memory grow with the shard count (250 shards buffered half a million rows of Python dicts), and writing smaller
    row groups instead does not help: an open parquet writer keeps about 9 KB of metadata per row group until it
    closes (7,750 row groups of ~130 rows at 1M rows in 250 shards: ~70 MB). So past 8 shards the fullest shard's
    buffer is spilled to an Arrow IPC stream (a stream keeps no per-batch metadata), and `close` turns each spill
    into its parquet shard, one shard at a time, in row groups of `batch_rows` rows: the same rows in the same order.
    """

    def __init__(self, root: Path, split: str, num_shards: int, num_folds: int, batch_rows: int = 2048,
                 max_buffered_rows: int | None = None):
        self.root, self.split, self.num_shards, self.num_folds = root, split, num_shards, num_folds
        self.batch_rows = batch_rows
        self.max_buffered_rows = max_buffered_rows or 8 * batch_rows
        self._spill = num_shards * batch_rows > self.max_buffered_rows
        self._buffered = 0
        self._buffers: list[list[Record]] = [[] for _ in range(num_shards)]
        self._writers: list[pq.ParquetWriter | None] = [None] * num_shards
        self._spills: list[pa.ipc.RecordBatchStreamWriter | None] = [None] * num_shards
        self._rows = [0] * num_shards
        self.fold_sizes = [0] * num_folds
        self.label_counts: Counter[str] = Counter()
        self.language_counts: Counter[str] = Counter()

    def relative_path(self, index: int) -> str:
        return f"{self.split}/{shard_name(index, self.num_shards)}"

    def _spill_path(self, index: int) -> Path:
        return self.root / f".spill-{self.split}" / f"{index:05d}.arrows"

    def add(self, record: Record) -> None:
        index = shard_of(record["id"], self.num_shards)
        self._buffers[index].append(record)
        self._rows[index] += 1
        self.fold_sizes[record["fold"]] += 1
        label = record["label"]
        self.label_counts["none" if label is None else LABEL_NAMES[label]] += 1
        self.language_counts[record["language"]] += 1
        self._buffered += 1
        if len(self._buffers[index]) >= self.batch_rows:
            self._flush(index)
        elif self._buffered > self.max_buffered_rows:
            self._flush(max(range(self.num_shards), key=lambda i: len(self._buffers[i])))

    def _writer(self, index: int) -> pq.ParquetWriter:
        if self._writers[index] is None:
            path = self.root / self.relative_path(index)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writers[index] = pq.ParquetWriter(
                path, RECORD_SCHEMA, compression=PARQUET_COMPRESSION, write_statistics=STATISTICS_COLUMNS
            )
        return self._writers[index]  # type: ignore[return-value]

    def _flush(self, index: int) -> None:
        rows = self._buffers[index]
        if not rows:
            return
        table = pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)
        if self._spill:
            if self._spills[index] is None:
                path = self._spill_path(index)
                path.parent.mkdir(parents=True, exist_ok=True)
                self._spills[index] = pa.ipc.new_stream(str(path), RECORD_SCHEMA)
            self._spills[index].write_table(table)  # type: ignore[union-attr]
        else:
            self._writer(index).write_table(table)
        self._buffers[index] = []
        self._buffered -= len(rows)

    def _write_spilled(self, index: int) -> None:
        """The shard's spill, re-read in order and written as row groups of `batch_rows` rows; then removed."""
        spill = self._spills[index]
        if spill is None:
            return
        spill.close()
        self._spills[index] = None
        path = self._spill_path(index)
        writer, pending, pending_rows = self._writer(index), [], 0
        with pa.ipc.open_stream(pa.memory_map(str(path))) as reader:
            for batch in reader:
                pending.append(batch)
                pending_rows += batch.num_rows
                while pending_rows >= self.batch_rows:
                    table = pa.Table.from_batches(pending, schema=RECORD_SCHEMA)
                    writer.write_table(table.slice(0, self.batch_rows))
                    rest = table.slice(self.batch_rows)
                    pending, pending_rows = rest.to_batches(), rest.num_rows
        if pending_rows:
            writer.write_table(pa.Table.from_batches(pending, schema=RECORD_SCHEMA))
        path.unlink()

    def close(self) -> dict:
        """Write what is buffered, close every shard (empty shards too) and return the manifest entry."""
        shards = []
        for index in range(self.num_shards):
            self._flush(index)
            self._write_spilled(index)
            self._writer(index).close()
            path = self.relative_path(index)
            shards.append({"path": path, "rows": self._rows[index], "sha256": sha256_file(self.root / path)})
        if self._spill and self._spill_path(0).parent.exists():
            self._spill_path(0).parent.rmdir()
        return {"rows": sum(self._rows), "shards": shards, "fold_sizes": list(self.fold_sizes),
                "label_counts": {name: self.label_counts.get(name, 0) for name in (*LABEL_NAMES, "none")},
                "language_counts": dict(sorted(self.language_counts.items()))}

    def abort(self) -> None:
        for writer in (*self._writers, *self._spills):
            if writer is not None:
                writer.close()


# ----------------------------------------------------------------------------------------------------------- pipeline
def _source_counts(reader, quarantine_path: Path, quarantine_name: str, accept) -> dict:
    """Run one source: every row is quarantined (written to JSONL) or gives records (a rated set gives several); every
    record is filtered (counted per filter), kept (via `accept`) or a content duplicate."""
    from arena_dist.data.filters import assign_language, filter_reason
    from arena_dist.data.sources import DUPLICATE_ID, raw_as_strings
    from arena_dist.data.normalize import SeenHashes

    counts = {"read": 0, "kept": 0, "duplicates": 0, "quarantined": 0, "filtered": 0, "records": 0}
    reasons: Counter[str] = Counter()
    filters: Counter[str] = Counter()
    languages: Counter[str] = Counter()  # of the kept records
    filter_config = reader.config.filters
    seen_ids = SeenHashes()
    # Silent for sources read within 10 s; a row count every 10 s for the long ones (updated every 4096 rows).
    progress = progress_bar(f"  {reader.config.name}: read", reader.total_rows, every_s=10.0, delay_s=10.0)
    quarantine_path.parent.mkdir(parents=True, exist_ok=True)
    with open(quarantine_path, "w", encoding="utf-8") as quarantine:

        def reject(outcome, reason: str, detail: str) -> None:
            counts["quarantined"] += 1
            reasons[reason] += 1
            entry = {"row": outcome.row, "reason": reason, "detail": detail, "raw": raw_as_strings(outcome.raw)}
            quarantine.write(json.dumps(entry, ensure_ascii=True) + "\n")  # ASCII escapes survive lone surrogates

        for outcome in reader:
            counts["read"] += 1
            if counts["read"] % 4096 == 0:
                progress.update(4096)
            if outcome.record is None:
                reject(outcome, outcome.reason, outcome.detail)
                continue
            new_ids = [seen_ids.add(hash64(record["id"], salt="id")) for record in outcome.records]
            if not all(new_ids):
                reject(outcome, DUPLICATE_ID, f"id {outcome.record['id']!r} seen before in this source")
                continue
            for record in outcome.records:
                counts["records"] += 1
                assign_language(record, filter_config)
                reason = filter_reason(record, filter_config)
                if reason is not None:
                    counts["filtered"] += 1
                    filters[reason] += 1
                elif accept(record):
                    counts["kept"] += 1
                    languages[record["language"]] += 1
                else:
                    counts["duplicates"] += 1
    progress.update(counts["read"] - progress.n)
    progress.close()
    check_conservation(reader.config.name, counts)
    result = {**counts, "reasons": dict(sorted(reasons.items())), "filters": dict(sorted(filters.items())),
              "languages": dict(sorted(languages.items())), "repaired_surrogates": reader.repaired_surrogates,
              "quarantine_file": quarantine_name}
    check_source_counts(reader.config, result)
    return result


def check_conservation(name: str, counts: dict) -> None:
    """Never silently lose a row: rows read = rows quarantined + rows giving records (one each, except rated sets),
    and records = kept + duplicates + filtered."""
    if counts["records"] != counts["kept"] + counts["duplicates"] + counts["filtered"] or (
        counts["records"] < counts["read"] - counts["quarantined"]
    ):
        raise AssertionError(f"{name}: counts do not add up: {counts}")


def check_source_counts(config, counts: dict) -> None:
    """Stop on a source that is almost certainly the wrong file or a wrong column mapping: no rows at all, none kept,
    or more than `max_quarantine_share` of them quarantined. One InputError naming the source, its file, the counts
    and the option that accepts it."""
    where = f"source {config.name!r} ({config.path})"
    if counts["quarantined"] > config.max_quarantine_share * counts["read"]:
        share = counts["quarantined"] / counts["read"]
        raise InputError(
            f"{where}: {counts['quarantined']:,} of {counts['read']:,} rows quarantined ({share:.0%}"
            f"{_top_reasons(counts['reasons'])}), above max_quarantine_share {config.max_quarantine_share:g}; "
            "fix the file or its columns mapping, or raise max_quarantine_share for this source"
        )
    if counts["kept"] == 0 and not config.allow_empty:
        reasons = _top_reasons(counts["reasons"])
        what = "no rows" if counts["read"] == 0 else f"no row kept ({_count_line(counts)}{reasons})"
        raise InputError(f"{where}: {what}; set allow_empty: true for this source if that is expected")


def _top_reasons(reasons: dict, top: int = 3) -> str:
    common = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))[:top]
    return "".join(f", {reason}={n:,}" for reason, n in common)


def _count_line(counts: dict) -> str:
    filtered = counts.get("filtered", 0)
    records = counts.get("records", counts["read"] - counts["quarantined"])
    kept = f"kept {counts['kept']:,} + duplicates {counts['duplicates']:,}"
    if filtered:
        kept += f" + filtered {filtered:,}"
    if records == counts["read"] - counts["quarantined"]:  # one record per row
        return f"read={counts['read']:,} = {kept} + quarantined {counts['quarantined']:,}"
    return (f"read={counts['read']:,} rows = {counts['read'] - counts['quarantined']:,} giving {records:,} records "
            f"({kept}) + quarantined {counts['quarantined']:,}")


def build_dataset(sources: list, output_dir: str | os.PathLike, num_shards: int = 8, num_folds: int = 5, seed: int = 0,
                  batch_rows: int = 2048, resolved_config=None, config_hash_value: str | None = None) -> dict:
    """Sources (list of SourceConfig) -> a dataset directory; returns the manifest.

    Every source is opened (and its columns checked) before any row is read; the dataset is built in a temporary
    directory beside `output_dir` and swapped in at the end (`arena_dist.io.atomic_directory`), so an error leaves
    no partial output, and an existing `output_dir` is replaced only when it is a dataset (or other output) of ours.
    Dedup is global and in source order: the first occurrence of a comparison wins, later ones count as duplicates
    of the source they come from. Sources that put the winner in A (chosen/rejected, rated and scored sets) are
    balanced A/B after dedup, over the kept rows. Filters (and language identification) run before dedup.
    """
    from arena_dist.config import config_hash, save_resolved_config
    from arena_dist.data.folds import fold_of_key
    from arena_dist.data.normalize import SeenHashes, comparison_hash, prompt_key
    from arena_dist.data.sources import BalancedAssigner, open_source
    from arena_dist.io import atomic_directory, atomic_write_json, check_replaceable

    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        raise InputError(f"source names must be unique, got {names}")
    _check_sources_outside(sources, Path(output_dir))
    check_replaceable(output_dir, "output_dir")
    readers = [open_source(source) for source in sources]
    seen_content = SeenHashes()
    manifest_sources: dict[str, dict] = {}
    writers: dict[str, ShardedSplitWriter] = {}
    with atomic_directory(output_dir) as tmp:
        try:
            for reader in readers:
                config = reader.config
                assigner = BalancedAssigner(seed, config.name) if reader.balance_sides else None

                def accept(record, split=reader.output_split, assigner=assigner) -> bool:
                    key = prompt_key(record["prompt"])
                    content = comparison_hash(record["prompt"], record["response_a"], record["response_b"], key=key)
                    if not seen_content.add(content):
                        return False
                    if assigner is not None:
                        record = assigner.assign(record)
                    record["fold"] = fold_of_key(key, num_folds, seed)
                    if split not in writers:
                        writers[split] = ShardedSplitWriter(tmp, split, num_shards, num_folds, batch_rows)
                    writers[split].add(record)
                    return True

                quarantine_name = f"{QUARANTINE_DIR}/{config.name}.jsonl"
                counts = _source_counts(reader, tmp / quarantine_name, quarantine_name, accept)
                manifest_sources[config.name] = {
                    "kind": config.kind, "path": str(config.path), "split": reader.output_split,
                    **input_fingerprint(config.path), **counts,
                }
                print(format_source_counts(config.name, manifest_sources[config.name]), flush=True)
            splits = {split: writers[split].close() for split in sorted(writers)}
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "config_hash": config_hash_value or (config_hash(resolved_config) if resolved_config is not None else None),
            "num_shards": num_shards, "num_folds": num_folds, "seed": seed, "splits": splits,
            "sources": manifest_sources,
            **{key: {split: entry[key] for split, entry in splits.items()}
               for key in ("fold_sizes", "label_counts", "language_counts")},
        }
        if resolved_config is not None:
            save_resolved_config(resolved_config, tmp)
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest


def _check_sources_outside(sources: list, output_dir: Path) -> None:
    """A source inside the output directory would be replaced by the dataset built from it."""
    root = output_dir.resolve()
    for source in sources:
        path = Path(source.path).resolve()
        if path == root or root in path.parents:
            raise InputError(f"{output_dir}: output_dir contains the source {source.name!r} ({source.path}); "
                             "write the dataset somewhere else")


def input_fingerprint(path: str | os.PathLike) -> dict:
    """Size and sha256 of a source file: provenance in the manifest, and how a rerun knows nothing changed."""
    return {"input_bytes": Path(path).stat().st_size, "input_sha256": sha256_file(path)}


def current_manifest(output_dir: str | os.PathLike, expected_config_hash: str, sources: list) -> dict | None:
    """The manifest of `output_dir` if it was built by the same config from the same input bytes and its shards
    verify; None when anything differs (or there is no dataset), so the caller rebuilds."""
    try:
        manifest = load_manifest(output_dir)
        if manifest.get("config_hash") != expected_config_hash:
            return None
        for source in sources:
            recorded = manifest["sources"].get(source.name, {})
            if not Path(source.path).is_file() or recorded.get("input_sha256") != sha256_file(source.path):
                return None
        verify_dataset(output_dir)
    except (InputError, KeyError, TypeError):
        return None
    return manifest


def format_source_counts(name: str, counts: dict) -> str:
    reasons = ", ".join(f"{reason}={n}" for reason, n in counts["reasons"].items())
    line = f"{name}: {_count_line(counts)}"
    if reasons:
        line += f" ({reasons})"
    if counts.get("filters"):
        line += "; filtered: " + ", ".join(f"{name}={n:,}" for name, n in counts["filters"].items())
    if counts["repaired_surrogates"]:
        line += f"; repaired surrogates in {counts['repaired_surrogates']:,} texts"
    return line
