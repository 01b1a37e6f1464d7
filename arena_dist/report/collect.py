"""Find what a run directory holds: TensorBoard scalars per stage, evaluations, label-stage stats, configs.

Discovery is by file shape rather than fixed paths, so the report works for a demo run (every stage under one run
directory) and for a single stage's directory alike.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

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


def evaluations(run_dir: Path) -> list[dict]:
    """Every evaluate-stage output (metrics.json with a log loss or accuracy), with its calibration PNG if any."""
    found = []
    for metrics_path in sorted(run_dir.rglob("metrics.json")):
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(metrics, dict) or "accuracy" not in metrics:
            continue
        calibration = metrics_path.parent / "calibration.png"
        found.append({"path": metrics_path, "metrics": metrics,
                      "calibration": calibration if calibration.exists() else None})
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


def label_stats(run_dir: Path) -> list[dict]:
    """Throughput / padding numbers from the label stage's status and manifest files."""
    stats = []
    for path in sorted(run_dir.rglob("*.json")):
        if "label" not in str(path.relative_to(run_dir)) or path.name.endswith(".done.json"):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        hits = _find_keys(data, LABEL_STAT_KEYS)
        if "padding_ratio" in " ".join(hits):
            stats.append({"path": path, "stats": hits})
    return stats


def resolved_configs(run_dir: Path) -> list[tuple[Path, str]]:
    names = ("resolved_config.yaml", "demo_config.yaml")
    paths = sorted(p for name in names for p in run_dir.rglob(name) if "report" not in p.relative_to(run_dir).parts)
    return [(path, path.read_text()) for path in paths]


def stage_summaries(run_dir: Path) -> dict[str, dict]:
    """The demo's per-stage summaries (summaries/<stage>.json), in pipeline order of their files' times."""
    folder = run_dir / "summaries"
    if not folder.is_dir():
        return {}
    files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    return {path.stem: json.loads(path.read_text()) for path in files}


def bayes_reference(run_dir: Path) -> dict | None:
    for path in sorted(run_dir.rglob("bayes.json")):
        return json.loads(path.read_text())
    return None
