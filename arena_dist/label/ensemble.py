"""Ensembles: several finished label stores (teachers, fold models) -> one averaged soft-label store.

Members may have run as separate jobs; each must be finalized (its manifest proves every input id labelled exactly
once) over the same dataset split. The merged store has the same layout and columns as a teacher's store, so readers
never care which kind they get: `p_ab`, `p_ba_mapped` and `p_mean` are each averaged over the members
(`prob_mean`: arithmetic mean of probabilities, the default; `logit_mean`: softmax of the mean log-probability,
i.e. the mean of logits, a normalised geometric mean). Its manifest lists the members that contributed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from arena_dist.errors import ConfigError
from arena_dist.io import sha256_file
from arena_dist.label.probs import logit_mean, prob_mean
from arena_dist.label.store import InputShard, LabelIntegrityError, LabelStore, load_store_manifest, read_store_shard

EnsembleMethod = Literal["prob_mean", "logit_mean"]
METHODS = {"prob_mean": prob_mean, "logit_mean": logit_mean}


def merge_label_stores(store_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                       method: EnsembleMethod = "prob_mean", weights: Sequence[float] | None = None,
                       ensemble_id: str | None = None) -> dict:
    """Average finalized label stores shard by shard into `out_dir`; returns the merged store's manifest."""
    if method not in METHODS:
        raise ConfigError(f"ensemble method {method!r}: expected one of {', '.join(METHODS)}")
    if len(store_dirs) < 1:
        raise ConfigError("ensemble: no label stores to merge")
    if weights is not None and (len(weights) != len(store_dirs) or min(weights) <= 0):
        raise ConfigError(f"ensemble weights: need {len(store_dirs)} positive weights, got {list(weights)}")
    combine = METHODS[method]
    dirs = [Path(d) for d in store_dirs]
    manifests = [load_store_manifest(d) for d in dirs]
    _check_compatible(dirs, manifests)
    members = [{"teacher_id": m["teacher_id"], "store": str(d), "config_hash": m["config_hash"],
                "manifest_sha256": sha256_file(d / "manifest.json"), "rows": m["rows"],
                "weight": None if weights is None else float(weights[i])}
               for i, (d, m) in enumerate(zip(dirs, manifests))]
    members_hash = hashlib.sha256(
        json.dumps([[m["teacher_id"], m["config_hash"], m["weight"]] for m in members] + [method]).encode()
    ).hexdigest()[:16]
    ensemble_id = ensemble_id or "ensemble"
    out = LabelStore(out_dir, ensemble_id, members_hash)
    reference = manifests[0]
    shards = []
    # Streaming: one shard of every member in memory at a time, never a whole store (nor all its ids).
    for entry in reference["shards"]:
        tables = [read_store_shard(d, _entry(m, entry["index"], d)) for d, m in zip(dirs, manifests)]
        ids = tables[0].column("id").to_pylist()
        aligned = [tables[0], *(_align(t, ids, d, entry["index"]) for d, t in zip(dirs[1:], tables[1:]))]

        def mean(column: str) -> np.ndarray:
            return combine([_matrix(t.column(column)) for t in aligned], weights)

        has_swap = all(t.column("p_ba_mapped").null_count == 0 for t in aligned)
        p_ab, p_ba, p_mean = mean("p_ab"), mean("p_ba_mapped") if has_swap else None, mean("p_mean")
        # The merged shard is tied to the same input shard (name + checksum) as its members.
        shard = InputShard(index=entry["index"], path=Path(entry["input"]), sha256=entry["input_sha256"],
                           rows=entry["rows"])
        out.commit(shard, ids, p_ab, p_ba, p_mean, extra={"members": [m["teacher_id"] for m in members]})
        shards.append(shard)
        del tables, aligned
    info = {k: reference[k] for k in ("dataset_dir", "split", "label_mode", "num_labels") if k in reference}
    # The members' manifests already proved their ids equal the input's; the merge must hold exactly those (read
    # again from the first member, shard by shard, rather than kept from the loop above).
    entries = {entry["index"]: entry for entry in reference["shards"]}
    manifest = out.finalize(shards, {**info, "ensemble": {"method": method, "members": members}},
                            expected_ids=lambda shard: read_store_shard(dirs[0], entries[shard.index], ["id"],
                                                                        verify=False).column("id").combine_chunks())
    print(f"[label ensemble] {ensemble_id}: {manifest['rows']} rows from {len(members)} members ({method}) "
          f"-> {out.directory}", flush=True)
    return manifest


def _matrix(column) -> np.ndarray:
    """A list<double> column of equal-length rows as a (rows, classes) array, without Python lists."""
    import pyarrow.compute as pc

    flat = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    if len(flat) == 0:
        return np.empty((0, 0), dtype=np.float64)
    lengths = pc.list_value_length(flat)
    width = pc.min(lengths).as_py()
    if width != pc.max(lengths).as_py():
        raise LabelIntegrityError("a label column holds probability vectors of different lengths")
    return np.asarray(flat.flatten(), dtype=np.float64).reshape(len(flat), width)


def _entry(manifest: dict, index: int, store_dir: Path) -> dict:
    for entry in manifest["shards"]:
        if entry["index"] == index:
            return entry
    raise LabelIntegrityError(f"{store_dir}: no shard {index} in its manifest")


def _align(table, ids: list[str], store_dir: Path, index: int):
    """Reorder `table` to `ids`; a member with a different id set is an error, never a silent partial mean."""
    member_ids = table.column("id").to_pylist()
    if member_ids == ids:
        return table
    position = {record_id: i for i, record_id in enumerate(member_ids)}
    if len(position) != len(member_ids) or set(position) != set(ids):
        missing = sorted(set(ids) - set(position))[:3]
        extra = sorted(set(position) - set(ids))[:3]
        raise LabelIntegrityError(
            f"{store_dir} shard {index}: ids differ from the first member (missing {missing}, extra {extra})"
        )
    return table.take([position[record_id] for record_id in ids])


def _check_compatible(dirs: list[Path], manifests: list[dict]) -> None:
    first = manifests[0]
    seen_ids = set()
    for directory, manifest in zip(dirs, manifests):
        key = (manifest["teacher_id"], manifest["config_hash"])
        if key in seen_ids:
            raise ConfigError(f"ensemble: {directory} repeats member {manifest['teacher_id']} (same config)")
        seen_ids.add(key)
        if manifest.get("num_labels") != first.get("num_labels"):
            raise ConfigError(f"ensemble: {directory} has {manifest.get('num_labels')} classes but {dirs[0]} has "
                              f"{first.get('num_labels')}: 2-class (no tie) and 3-class teachers cannot be averaged")
        inputs = [(e["index"], e["input"], e["input_sha256"], e["rows"]) for e in manifest["shards"]]
        first_inputs = [(e["index"], e["input"], e["input_sha256"], e["rows"]) for e in first["shards"]]
        if inputs != first_inputs:
            raise ConfigError(f"ensemble: {directory} labelled different input shards than {dirs[0]}")
