"""`arena-dist label`: teachers score a prompt pool shard-parallel on Ray actors into an exactly-once label store.

Recipe: resolve the input shards from the dataset manifest -> connect Ray -> per teacher, score every uncommitted
shard (arena_dist.label.driver) and verify the store (every input id exactly once) -> average the stores when there
are several members (arena_dist.label.ensemble). Outputs under `output_dir`: `<teacher_id>/` stores,
`<ensemble.id>/` when merged, `resolved_config.yaml`, `label_summary.json`; live progress in
`<teacher_id>/status.json`.

Members may run as separate jobs (one teacher per config) and be merged later: a config with `teachers: []` and
`ensemble.merge_stores: [...]` only merges.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from arena_dist.config import StrictModel

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class InputSection(StrictModel):
    dataset_dir: Path
    split: str = "pool"


class TeacherSpec(StrictModel):
    id: str = Field(pattern=ID_PATTERN, max_length=64)  # the store's directory name and the `teacher_id` column
    export_path: Path
    # Run Python code shipped inside the export (transformers `auto_map`). Only this setting turns it on, never the
    # export itself: an export that ships code is refused while it is False.
    trust_remote_code: bool = False
    # A LoRA export's base model, when it is no longer where training found it (another machine, a moved folder).
    base_path: Path | None = None


class BatchingSection(StrictModel):
    max_tokens: int = Field(16384, gt=0)  # padded tokens (rows x longest row) per forward pass
    max_rows: int | None = Field(None, gt=0)


class RaySection(StrictModel):
    address: str | None = None  # None: $RAY_ADDRESS (set by `ray job submit`) or else a private local Ray
    local_num_cpus: int | None = Field(None, gt=0)  # CPUs of that private local Ray (default: all)
    num_actors: int = Field(2, ge=1)
    cpus_per_actor: float = Field(1.0, gt=0)  # fractional is fine (leave room for the driver on small boxes)
    gpus_per_actor: float = Field(0.0, ge=0)  # > 1: accelerate device_map="auto" spreads the teacher over them
    threads_per_actor: int | None = Field(None, ge=1)  # torch threads; default max(1, int(cpus_per_actor))
    max_restarts: int = Field(3, ge=0)  # Ray restarts of a dead actor
    max_shard_attempts: int = Field(3, ge=1)  # a shard lost with its actor this many times stops the run
    inflight_per_actor: int = Field(2, ge=1)  # shards queued at an actor, so it never waits for the driver


class EnsembleSection(StrictModel):
    id: str = Field("ensemble", pattern=ID_PATTERN, max_length=64)
    method: Literal["prob_mean", "logit_mean"] = "prob_mean"
    merge_stores: list[Path] = Field(default_factory=list)  # finished stores (earlier jobs) to merge in
    weights: list[float] | None = None  # one per member: this run's teachers first, then merge_stores
    enabled: bool = True  # merge when there are at least two members


class Config(StrictModel):
    output_dir: Path
    input: InputSection | None = None
    teachers: list[TeacherSpec] = Field(default_factory=list)
    batching: BatchingSection = BatchingSection()
    ray: RaySection = RaySection()
    swap_tta: bool = True  # score (A,B) and (B,A); p_mean is their average
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    quantization: Literal["none", "8bit", "4bit"] = "none"  # bitsandbytes loading of the teacher
    ensemble: EnsembleSection = EnsembleSection()

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        ids = [t.id for t in self.teachers]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"teachers: id {duplicates[0]!r} is used twice")
        if self.ensemble.id in ids:
            raise ValueError(f"ensemble.id {self.ensemble.id!r} is also a teacher id")
        if not self.teachers and not self.ensemble.merge_stores:
            raise ValueError("nothing to do: give teachers (to label) or ensemble.merge_stores (to merge)")
        if self.teachers and self.input is None:
            raise ValueError("input.dataset_dir is required to label with teachers")
        members = len(self.teachers) + len(self.ensemble.merge_stores)
        if self.ensemble.weights is not None and len(self.ensemble.weights) != members:
            raise ValueError(f"ensemble.weights: {len(self.ensemble.weights)} weights for {members} members")
        return self


def label_config_hash(teacher: TeacherSpec, meta: dict, config: Config) -> str:
    """What changes the labels: the teacher export (metadata + its files' names and sizes), swap-TTA, precision.

    Hashing 140 GB of weights on every run is not worth it; a retrained export changes its metadata's config hash
    or its files. Batching, actor counts and addresses do not change the labels and are left out."""
    export = Path(teacher.export_path)
    files = sorted((p.relative_to(export).as_posix(), p.stat().st_size) for p in export.rglob("*") if p.is_file())
    payload = {"teacher_id": teacher.id, "meta": meta, "files": files, "swap_tta": config.swap_tta,
               "dtype": config.dtype, "quantization": config.quantization}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run(config: Config) -> dict:
    from arena_dist.config import save_resolved_config
    from arena_dist.data.store import load_manifest
    from arena_dist.hub import fetch_on_every_node
    from arena_dist.io import atomic_write_json, claim_output_dir
    from arena_dist.label.agreement import source_agreement
    from arena_dist.label.driver import ActorSettings, label_shards
    from arena_dist.ray_local import ray_session
    from arena_dist.label.ensemble import merge_label_stores
    from arena_dist.label.progress import Progress
    from arena_dist.label.store import LabelStore, input_shards, store_padding
    from arena_dist.models.export import check_remote_code, read_export_meta

    output_dir = claim_output_dir(config.output_dir, "output_dir")
    save_resolved_config(config, output_dir)
    summary: dict = {"output_dir": str(output_dir), "teachers": {}}
    if config.teachers:
        # Before Ray starts: one clear line, no actor restarts. The LoRA bases (hub ids among them) come back.
        bases = [check_remote_code(t.export_path, t.trust_remote_code, f"teachers[{i}].trust_remote_code", t.base_path)
                 for i, t in enumerate(config.teachers)]
        dataset_dir = Path(config.input.dataset_dir)
        shards = input_shards(dataset_dir, config.input.split)
        dataset_hash = load_manifest(dataset_dir).get("config_hash")
        settings = ActorSettings(
            num_actors=config.ray.num_actors, cpus_per_actor=config.ray.cpus_per_actor,
            gpus_per_actor=config.ray.gpus_per_actor, max_restarts=config.ray.max_restarts,
            max_shard_attempts=config.ray.max_shard_attempts, inflight_per_actor=config.ray.inflight_per_actor,
            threads_per_actor=config.ray.threads_per_actor, dtype=config.dtype, quantization=config.quantization,
        )
        with ray_session(config.ray.address, config.ray.local_num_cpus):
            fetch_on_every_node(bases)  # before the actors: one download per node, not one per actor
            for teacher in config.teachers:
                meta = read_export_meta(teacher.export_path)
                store = LabelStore(output_dir / teacher.id, teacher.id, label_config_hash(teacher, meta, config))
                progress = Progress(store.directory / "status.json", teacher.id, len(shards),
                                    sum(s.rows for s in shards))
                run_summary = label_shards(
                    teacher.id, str(teacher.export_path), shards, store, settings,
                    config.batching.max_tokens, config.batching.max_rows, config.swap_tta, progress,
                    trust_remote_code=teacher.trust_remote_code,
                    base_path=str(teacher.base_path) if teacher.base_path else None,
                )
                manifest = store.finalize(shards, {
                    "dataset_dir": str(dataset_dir), "split": config.input.split, "dataset_config_hash": dataset_hash,
                    "export_path": str(teacher.export_path), "label_mode": meta["label_mode"],
                    "num_labels": meta["num_labels"], "template": meta.get("template"),
                    "max_length": meta.get("max_length"), "swap_tta": config.swap_tta, "dtype": config.dtype,
                    "quantization": config.quantization, "padding": store_padding(store, shards).as_dict(),
                })
                progress.update("finalized", force=True)
                print(f"[label {teacher.id}] {manifest['rows']} rows labelled exactly once "
                      f"({run_summary['shards_scored']} shards scored, {run_summary['shards_skipped']} already done, "
                      f"padding ratio {manifest['padding']['padding_ratio']:.3f}) -> {store.directory}", flush=True)
                summary["teachers"][teacher.id] = {**run_summary, "store": str(store.directory),
                                                   "rows": manifest["rows"],
                                                   "padding_ratio": manifest["padding"]["padding_ratio"]}
                agreement = source_agreement(shards, store.directory)
                if agreement is not None:
                    summary["teachers"][teacher.id]["source_agreement"] = agreement
                    print(f"[label {teacher.id}] agrees with the sources' own labels on {agreement['agreement']:.1%} "
                          f"of {agreement['rows']:,} rows: " + ", ".join(
                              f"{name} {part['agreement']:.1%} of {part['rows']:,}"
                              for name, part in agreement["by_source"].items()), flush=True)
    members = [output_dir / t.id for t in config.teachers] + [Path(p) for p in config.ensemble.merge_stores]
    if config.ensemble.enabled and len(members) >= 2:
        merged = merge_label_stores(members, output_dir / config.ensemble.id, config.ensemble.method,
                                    config.ensemble.weights, config.ensemble.id)
        summary["ensemble"] = {"store": str(output_dir / config.ensemble.id), "rows": merged["rows"],
                               "members": [m["teacher_id"] for m in merged["ensemble"]["members"]]}
    atomic_write_json(output_dir / "label_summary.json", summary)
    write_label_artefact(config, output_dir, summary)
    return summary


def write_label_artefact(config: Config, output_dir: Path, summary: dict) -> None:
    """Rows per store; headline: scoring throughput over every teacher of this run (rows scored / scoring time)."""
    from arena_dist.artefacts import write_artefact

    teachers = summary["teachers"]
    scored = sum(t.get("rows_scored", 0) for t in teachers.values())
    scoring_s = sum(t.get("scoring_seconds") or 0.0 for t in teachers.values())
    paddings = [t["padding_ratio"] for t in teachers.values()]  # of each whole store, not only this run's shards
    outputs = {"summary": output_dir / "label_summary.json"}
    for teacher_id, entry in teachers.items():
        outputs[teacher_id] = entry["store"]
        outputs[f"{teacher_id}/status"] = Path(entry["store"]) / "status.json"
    rows = {teacher_id: entry["rows"] for teacher_id, entry in teachers.items()}
    if "ensemble" in summary:
        outputs[config.ensemble.id] = summary["ensemble"]["store"]
        rows[config.ensemble.id] = summary["ensemble"]["rows"]
    inputs = {f"teacher/{t.id}": t.export_path for t in config.teachers}
    inputs.update({f"member/{Path(p).name}": p for p in config.ensemble.merge_stores})
    if config.input is not None and config.teachers:
        inputs["dataset"] = config.input.dataset_dir
    metrics = {"rows_scored": scored, "rows_per_s": scored / scoring_s if scoring_s > 0 else None,
               "padding_ratio": sum(paddings) / len(paddings) if paddings else None}
    for teacher_id, entry in teachers.items():  # the teacher against pool sources that came with labels
        if "source_agreement" in entry:
            metrics[f"{teacher_id}/source_agreement"] = entry["source_agreement"]["agreement"]
    write_artefact(output_dir, "label", config, inputs=inputs, outputs=outputs, rows=rows, metrics=metrics,
                   headline="rows_per_s")
