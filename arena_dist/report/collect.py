"""Find what a run directory holds: the stage records (arena_dist.artefacts) and what they name (evaluations,
label-stage status, the Bayes optimum), TensorBoard scalars per stage, resolved configs.

Stages are found by their records, wherever they sit under the run directory, so the report works for a demo run
(every stage under one run directory) and for a single stage's directory alike.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from arena_dist.artefacts import StageArtefact, find_artefacts

LABEL_STAT_KEYS = ("padding_ratio", "rows_per_s", "tokens_per_s", "rows", "shards_done", "shards_total", "seconds")


def read_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the TensorBoard event files under `directory`, sorted by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, dict[int, float]] = defaultdict(dict)
    for events in sorted(directory.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            for event in accumulator.Scalars(tag):
                series[tag][int(event.step)] = float(event.value)  # a resumed run rewrites steps: last wins
    return {tag: sorted(points.items()) for tag, points in sorted(series.items())}


def training_logs(run_dir: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{stage: {tag: [(step, value)]}} for each top-level directory holding TensorBoard logs."""
    stages: dict[str, Path] = {}
    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        relative = events.relative_to(run_dir)
        stage = relative.parts[0] if len(relative.parts) > 1 else run_dir.name
        stages.setdefault(stage, run_dir / stage if len(relative.parts) > 1 else run_dir)
    return {stage: read_scalars(path) for stage, path in stages.items()}


def stage_records(run_dir: Path, exclude: Path | None = None) -> list[tuple[Path, StageArtefact]]:
    """Every stage record under the run directory (in the order the stages started), but the one in `exclude`."""
    skip = None if exclude is None else exclude.resolve()
    return [(path, record) for path, record in find_artefacts(run_dir) if path.resolve() != skip]


def evaluations(records: list[tuple[Path, StageArtefact]]) -> list[dict]:
    """Every successful evaluate stage: its metrics.json and calibration PNG, as its record names them."""
    found = []
    for directory, record in records:
        if record.stage != "evaluate" or record.status != "succeeded" or "metrics" not in record.outputs:
            continue
        metrics_path = Path(record.outputs["metrics"])
        calibration = record.outputs.get("calibration")
        found.append({"path": metrics_path, "metrics": json.loads(metrics_path.read_text()),
                      "calibration": Path(calibration) if calibration and Path(calibration).exists() else None})
    return found


def _find_keys(obj, keys, prefix="") -> dict:
    hits = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{prefix}{key}"
            if key in keys and isinstance(value, (int, float)):
                hits[name] = value
            elif isinstance(value, dict):
                hits.update(_find_keys(value, keys, f"{name}."))
    return hits


def label_stats(records: list[tuple[Path, StageArtefact]]) -> list[dict]:
    """Throughput / padding numbers from the status files the label stages' records name (`<teacher>/status`), and
    each teacher's agreement with the pool sources' own labels (`<teacher>/source_agreement` in the record)."""
    stats = [{"path": Path(path), "stats": _find_keys(json.loads(Path(path).read_text()), LABEL_STAT_KEYS)}
             for _, record in records if record.stage == "label"
             for name, path in record.outputs.items() if name.endswith("/status") and Path(path).is_file()]
    for directory, record in records:
        agreement = {name: value for name, value in record.metrics.items()
                     if record.stage == "label" and name.endswith("/source_agreement") and value is not None}
        if agreement:
            stats.append({"path": Path(directory), "stats": agreement})
    return stats


def resolved_configs(run_dir: Path) -> list[tuple[Path, str]]:
    names = ("resolved_config.yaml", "demo_config.yaml")
    paths = sorted(p for name in names for p in run_dir.rglob(name) if "report" not in p.relative_to(run_dir).parts)
    return [(path, path.read_text()) for path in paths]


def bayes_reference(records: list[tuple[Path, StageArtefact]]) -> dict | None:
    """The Bayes optimum the synth stage recorded (its `bayes` output), None without a synth stage."""
    path = next((record.outputs["bayes"] for _, record in records
                 if record.stage == "synth" and "bayes" in record.outputs), None)
    return None if path is None else json.loads(Path(path).read_text())
