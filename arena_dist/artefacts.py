"""Stage artefacts: every stage leaves one typed record, `stage.json`, in its output directory.

The record says what ran (stage, config hash), when (started / finished / seconds), with what (inputs) and what it
produced (outputs, as paths), how many rows, its final metrics and which one is the stage's headline, and whether it
succeeded. The demo, the report and later stages read results from here (`read_artefact`) instead of guessing
them from file shapes or key names.

Each recipe writes its own record at its end (`write_artefact`), because only the recipe knows its outputs and its
headline; the CLI writes the `failed` record when a recipe raises after it claimed its output directory
(`record_failure`), so a failure is recorded once for every stage instead of in every recipe.
"""

from __future__ import annotations

import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Mapping, Optional, Union

from pydantic import Field, ValidationError, model_validator

from arena_dist.config import StrictModel, config_hash
from arena_dist.errors import ArenaDistError, InputError
from arena_dist.io import atomic_write_json, claim_time

ARTEFACT_FILE = "stage.json"
SCHEMA_VERSION = 1

Rows = Union[int, dict[str, int], None]


class StageArtefact(StrictModel):
    """One stage run. `rows` is a count or a small {part: count} mapping (splits, teachers); `headline` names the
    entry of `metrics` that summarises the stage in one number (None only when the stage failed)."""

    schema_version: int = SCHEMA_VERSION
    stage: str
    status: Literal["succeeded", "failed"]
    config_hash: Optional[str] = None
    started: Optional[str] = None  # ISO 8601, UTC
    finished: str
    seconds: Optional[float] = None
    inputs: dict[str, str] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    rows: Rows = None
    metrics: dict[str, Optional[float]] = Field(default_factory=dict)
    headline: Optional[str] = None
    error: Optional[str] = None

    @model_validator(mode="after")
    def _consistent(self) -> "StageArtefact":
        if self.headline is not None and self.headline not in self.metrics:
            raise ValueError(f"headline {self.headline!r} is not one of the metrics ({', '.join(self.metrics)})")
        if self.status == "succeeded" and self.headline is None:
            raise ValueError("a succeeded stage names its headline metric")
        if self.status == "failed" and not self.error:
            raise ValueError("a failed stage carries its error")
        return self

    def finished_unix(self) -> float:
        return datetime.fromisoformat(self.finished).timestamp()

    def headline_value(self) -> Optional[float]:
        return None if self.headline is None else self.metrics.get(self.headline)

    def rows_text(self) -> str:
        """`1,234` or `train 800, test 200`; empty when the stage has no rows."""
        if isinstance(self.rows, dict):
            return ", ".join(f"{name} {count:,}" for name, count in self.rows.items())
        return "" if self.rows is None else f"{self.rows:,}"

    def headline_text(self) -> str:
        return "" if self.headline is None else metric_text(self.headline, self.headline_value())


def metric_text(name: str, value: float | None) -> str:
    """`log loss 0.9812`, `quarantined 12` (whole numbers without decimals), `rows per s -`."""
    if value is None:
        shown = "-"
    elif float(value).is_integer() and abs(value) < 1e15:
        shown = f"{int(value):,}"
    else:
        shown = f"{value:.4f}"
    return f"{name.replace('_', ' ')} {shown}"


def _iso(unix: float | None) -> str | None:
    return None if unix is None else datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="milliseconds")


def _paths(mapping: Mapping[str, object] | None) -> dict[str, str]:
    """Absolute paths; a list value (e.g. several soft-label stores) becomes `name/0`, `name/1`, ..."""
    out = {}
    for name, value in (mapping or {}).items():
        items = enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]
        for index, path in items:
            if path is not None:
                out[name if index is None else f"{name}/{index}"] = str(Path(path).resolve())
    return out


def _numbers(metrics: Mapping[str, object] | None) -> dict[str, float | None]:
    """Metrics as floats (booleans and ints too); a non-finite value is None, as in every JSON file of the project."""
    numbers = {name: None if value is None else float(value) for name, value in (metrics or {}).items()}
    return {name: number if number is None or math.isfinite(number) else None for name, number in numbers.items()}


def write_artefact(
    directory: str | os.PathLike, stage: str, config=None, *, outputs: Mapping[str, object] | None = None,
    inputs: Mapping[str, object] | None = None, rows: Rows = None, metrics: Mapping[str, object] | None = None,
    headline: str | None = None, started: float | None = None, status: str = "succeeded", error: str | None = None,
) -> StageArtefact:
    """Validate and write `<directory>/stage.json` atomically. `started` (unix time) defaults to when this process
    claimed `directory` (arena_dist.io records it), which is how a recipe that did not time itself is timed."""
    directory = Path(directory)
    finished = time.time()
    started = claim_time(directory) if started is None else started
    artefact = StageArtefact(
        stage=stage, status=status, config_hash=None if config is None else config_hash(config), started=_iso(started),
        finished=_iso(finished), seconds=None if started is None else round(finished - started, 3),
        inputs=_paths(inputs), outputs=_paths(outputs), rows=rows, metrics=_numbers(metrics), headline=headline,
        error=error,
    )
    atomic_write_json(directory / ARTEFACT_FILE, artefact.model_dump(mode="json"))
    return artefact


def record_failure(directory: str | os.PathLike, stage: str, error: BaseException, config=None) -> StageArtefact:
    """The `failed` record of a stage that raised after claiming `directory`: its first error line, no outputs.
    Errors of the project are one line meant for the user; any other error is prefixed with its type."""
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else ""
    if not isinstance(error, ArenaDistError):
        line = f"{type(error).__name__}: {line}" if line else type(error).__name__
    return write_artefact(directory, stage, config, status="failed", error=line[:500])


def read_artefact(directory: str | os.PathLike) -> StageArtefact | None:
    """The record in `directory` (None when there is none). A damaged or foreign record is an InputError naming the
    file: a reader must never fall back to guessing."""
    path = Path(directory) / ARTEFACT_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return StageArtefact.model_validate_json(text)
    except ValidationError as err:
        raise InputError(f"{path}: not a stage record of this version ({err.errors()[0]['msg']})") from None


def find_artefacts(root: str | os.PathLike) -> list[tuple[Path, StageArtefact]]:
    """(directory, record) for every stage record under `root` (itself included), in the order the stages started."""
    found = [(path.parent, record) for path in Path(root).rglob(ARTEFACT_FILE)
             if (record := read_artefact(path.parent)) is not None]  # None: removed since the listing
    return sorted(found, key=lambda item: (item[1].started or item[1].finished, str(item[0])))
