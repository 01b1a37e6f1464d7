"""`arena-dist predict`: a competition test file -> a checked submission (+ full probabilities for evaluate), within a
wall-clock budget, from an ensemble of any number of exports.

LMSYS test.csv -> `id, winner_model_a, winner_model_b, winner_tie`; WSDM test.parquet -> `id, winner`. Each member
of `models` is an arena_dist export (a student's adapter export is rebuilt on its quantised base; LoRA exports of one
base, such as fold adapters, share one loaded base).

How a row's probability is made (`arena_dist.predict.ensemble`): member 0 scores every row in the direct order (A, B)
and the submission is written; then the `refine` passes run in order, each one member in one order (direct, or
swapped (B, A) mapped back), on at most `fraction` of the rows, most uncertain first (`uncertainty`: entropy, or
margin = 1 - |p(A) - p(B)|). A row's final probability is the weighted mean over the passes done on it:

    p(row) = sum over members m that scored the row of w(m) * mean(p of m's orders done)  /  sum of those w(m)

(within a member the direct and swapped orders are averaged; member weights are renormalised over the members that
scored that row). Default `refine`: swap-TTA of member 0, then each further member, direct order then swapped; with
all passes done on a row this is the weighted mean of the members' swap-TTA probabilities.

`time_budget` (seconds from the start of this stage, or an ISO-8601 deadline such as 2025-01-31T18:00:00+00:00; a
deadline without an offset is local time): the refinement stops when its next chunk would not end before the
deadline less `safety_margin` (`arena_dist.predict.budget`). The submission is rewritten atomically after every
chunk, so a valid one is always on disk: after SIGKILL it is the last one written; SIGTERM stops the run at once and
exits non-zero (status 2) saying which submission is on disk.

Outputs in `output_dir`: the submission (checked before every write: every test id once, values in [0, 1], rows
summing to 1), probabilities.parquet (id, the three LMSYS columns for every competition, language, and one boolean
column per pass, `pass_m<member>_<direct|swap>`: applied to that row or not), predict_summary.json (per pass: rows
done, chunks, seconds, predicted seconds, why it stopped) and resolved_config.yaml.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator, model_validator

from arena_dist.config import StrictModel, save_resolved_config
from arena_dist.errors import ArenaDistError

Quantization = Literal["auto", "none", "4bit", "8bit"]


class ModelSpec(StrictModel):
    export_path: str
    weight: float = Field(1.0, gt=0)  # in the ensemble; weights are normalised to sum to 1
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    quantization: Quantization = "auto"  # auto: as the export was trained (its metadata)
    # Run Python code shipped inside the export (transformers `auto_map`). Only this setting turns it on, never the
    # export itself: an export that ships code is refused while it is False.
    trust_remote_code: bool = False
    # A LoRA export's base model, when it is no longer where training found it (another machine, a moved folder).
    base_path: str | None = None


class RefinePass(StrictModel):
    member: int = Field(ge=0)  # index into `models`
    swap: bool  # score (B, A) and map back; false: the direct order (A, B)
    fraction: float = Field(1.0, gt=0, le=1)  # cap on the share of rows it may touch (the most uncertain first)


class Batching(StrictModel):
    max_tokens: int = Field(16384, gt=0)  # padded tokens (rows x longest row) per forward pass
    max_rows: int | None = Field(None, gt=0)


def default_refine(num_models: int) -> list[dict]:
    """Swap-TTA of member 0, then each further member: its direct order, then its swapped one."""
    passes = [{"member": 0, "swap": True}]
    for member in range(1, num_models):
        passes += [{"member": member, "swap": False}, {"member": member, "swap": True}]
    return passes


class Config(StrictModel):
    test_file: str
    output_dir: str
    competition: Literal["auto", "lmsys", "wsdm"] = "auto"  # auto: .csv -> lmsys, .parquet -> wsdm
    models: list[ModelSpec] = Field(min_length=1)
    refine: list[RefinePass]  # omitted: default_refine; [] scores member 0's direct order only
    uncertainty: Literal["entropy", "margin"] = "entropy"
    # Seconds from the start of the stage, or an ISO-8601 deadline; None: no budget, every pass on its fraction.
    time_budget: float | datetime | None = None
    # Kept free before the deadline for what runs after the last chunk (probabilities.parquet, the summary, the
    # stage record: seconds even for 25k rows) and for a last chunk slower than predicted. Default: 5% of the
    # budget, at most 60 s. Not a fixed share: 10% of a 9 h Kaggle budget would idle 54 minutes; not a fixed number:
    # 60 s would eat most of a one-minute budget. Chunks shrink with the time left (10% of it), so a mispredicted
    # chunk overruns by a small share of what is left, not of the budget.
    safety_margin: float | None = Field(None, ge=0)
    replicas: int = Field(1, ge=1)  # >1: one scorer per worker process (arena_dist.predict.replicas)
    # "all": every member stays loaded; "one": one member (or group of fold adapters sharing a base) at a time, for
    # devices that hold one model but not the ensemble (two 4-bit 9B/14B students on a 16 GB T4).
    resident_models: Literal["all", "one"] = "all"
    batching: Batching = Batching()
    submission_name: str = "submission.csv"
    threads: int | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _default_refine(cls, data):
        if isinstance(data, dict) and data.get("refine") is None and isinstance(data.get("models"), list):
            data = {**data, "refine": default_refine(len(data["models"]))}
        return data

    @field_validator("time_budget", mode="before")
    @classmethod
    def _deadline_text(cls, value):
        """A deadline written as text (YAML reads an unquoted one as a timestamp already)."""
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"time_budget {value!r} is neither seconds nor an ISO-8601 deadline "
                                 "(e.g. 2025-01-31T18:00:00+00:00)") from None
        return value

    @field_validator("time_budget")
    @classmethod
    def _positive(cls, value):
        if isinstance(value, float) and value <= 0:
            raise ValueError(f"time_budget must be positive seconds or an ISO-8601 deadline, got {value}")
        return value

    @model_validator(mode="after")
    def _passes(self) -> "Config":
        seen = set()
        for index, step in enumerate(self.refine):
            where = f"refine.{index}"
            if step.member >= len(self.models):
                raise ValueError(f"{where}.member: {step.member}, but models has {len(self.models)} member(s)")
            if (step.member, step.swap) == (0, False):
                raise ValueError(f"{where}: member 0's direct order is the first pass (every row); not a refinement")
            if (step.member, step.swap) in seen:
                raise ValueError(f"{where}: member {step.member} {'swapped' if step.swap else 'direct'} is listed "
                                 "twice")
            seen.add((step.member, step.swap))
        return self


def resolve_budget(config: Config, started: float) -> tuple[float | None, float]:
    """(deadline on the monotonic clock or None, safety margin in seconds) for a stage started at `started`."""
    budget = config.time_budget
    if budget is None:
        return None, 0.0
    if isinstance(budget, datetime):  # without a UTC offset: local time (timestamp() reads it so)
        deadline = time.monotonic() + (budget.timestamp() - time.time())
    else:
        deadline = started + float(budget)
    margin = config.safety_margin
    if margin is None:
        margin = min(60.0, 0.05 * max(0.0, deadline - started))
    return deadline, margin


class Terminated(ArenaDistError):
    """SIGTERM: the run stops where it is; the last submission written stays (every write is atomic)."""


@contextlib.contextmanager
def stop_on_sigterm(written: dict):
    """SIGTERM raises `Terminated` wherever the run is (between two Python steps), saying what is on disk.
    `written`: {"path": the submission, "count": how many times it has been written so far}."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only: nothing to install
        return

    def stop(signum, frame):
        if written["count"]:
            raise Terminated(f"stopped by SIGTERM; {written['path']} is the last complete submission (written "
                             f"{written['count']} time(s), every row scored)")
        raise Terminated("stopped by SIGTERM before the first submission was written: there is none")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_models(config: Config) -> None:
    """Every export is checked for shipped code (and a LoRA base for where it is) before any is loaded, naming the
    setting to change."""
    from arena_dist.models.export import check_remote_code

    for index, spec in enumerate(config.models):
        check_remote_code(spec.export_path, spec.trust_remote_code, f"models.{index}.trust_remote_code",
                          spec.base_path)


def build_scorer(config: Config):
    """The members in this process, or one copy per worker process when `replicas` > 1."""
    from arena_dist.predict.infer import build_local_scorer

    members = [spec.model_dump(exclude={"weight"}) for spec in config.models]
    args = (members, config.batching.max_tokens, config.batching.max_rows, config.threads, config.resident_models)
    if config.replicas == 1:
        return build_local_scorer(*args)
    from arena_dist.predict.replicas import ReplicaPool

    return ReplicaPool(build_local_scorer, args, config.replicas, config.threads)


def check_labels(config: Config, scorer, competition: str) -> None:
    from arena_dist.errors import ConfigError

    if competition != "lmsys":
        return
    for index, spec in enumerate(config.models):
        if scorer.num_labels(index) != 3:
            raise ConfigError(f"models.{index}.export_path: a {scorer.num_labels(index)}-class model cannot predict "
                              f"LMSYS ties ({spec.export_path})")


def write_probabilities(path, ids, records, outcome) -> None:
    """The ensemble's probabilities in the LMSYS layout, the language and one flag column per pass."""
    import pandas as pd

    from arena_dist.classes import to_classes
    from arena_dist.io import atomic_path

    three = to_classes(outcome.ensemble.combined(), 3)
    columns = {"id": ids, "winner_model_a": three[:, 0], "winner_model_b": three[:, 1], "winner_tie": three[:, 2],
               "language": [r["language"] for r in records]}
    for report in outcome.passes:
        columns[f"pass_{report.name}"] = outcome.ensemble.done(report.member, report.swap)
    with atomic_path(path) as tmp:
        pd.DataFrame(columns).to_parquet(tmp, index=False)


def run(config: Config) -> dict:
    started = time.monotonic()
    deadline, margin = resolve_budget(config, started)
    written = {"path": None, "count": 0}
    with stop_on_sigterm(written):
        return _run(config, started, deadline, margin, written)


def _run(config: Config, started: float, deadline: float | None, margin: float, written: dict) -> dict:
    from arena_dist.artefacts import write_artefact
    from arena_dist.io import atomic_write_json, claim_output_dir
    from arena_dist.predict.budget import Pass, predict_in_budget
    from arena_dist.predict.submission import build_submission, write_submission
    from arena_dist.predict.testfile import read_test_file

    out = claim_output_dir(config.output_dir, "output_dir")
    submission = written["path"] = out / config.submission_name
    ids, records, counts = read_test_file(config.test_file, config.competition)
    competition = counts["competition"]
    num_classes = 3 if competition == "lmsys" else 2
    passes = [Pass(step.member, step.swap, step.fraction) for step in config.refine]
    check_models(config)

    def publish(probs):
        write_submission(submission, build_submission(ids, probs, competition), ids, competition)
        written["count"] += 1

    scorer = build_scorer(config)
    try:
        check_labels(config, scorer, competition)
        budget = ("no time budget" if deadline is None
                  else f"{deadline - started:.0f} s budget, {margin:.1f} s safety margin")
        print(f"predict: {len(ids)} test rows ({counts['lenient_rows']} kept leniently), competition {competition}, "
              f"{len(config.models)} member(s), refinement {', '.join(p.name for p in passes) or 'none'}, {budget}",
              flush=True)
        outcome = predict_in_budget(scorer, records, passes, [spec.weight for spec in config.models], num_classes,
                                    config.uncertainty, deadline, margin, publish)
    finally:
        scorer.close()

    write_probabilities(out / "probabilities.parquet", ids, records, outcome)
    seconds = time.monotonic() - started
    padding = outcome.padding.as_dict() if hasattr(outcome.padding, "as_dict") else outcome.padding
    refined = outcome.passes[1:]
    refined_rows, planned_rows = sum(r.rows for r in refined), sum(r.planned_rows for r in refined)
    summary = {"rows": len(ids), "competition": competition, "submission": str(submission),
               "probabilities": str(out / "probabilities.parquet"), "seconds": seconds,
               "rows_per_second": len(ids) / seconds, **{k: v for k, v in counts.items() if k != "competition"},
               "weights": outcome.ensemble.weights.tolist(), "uncertainty": config.uncertainty,
               "time_budget": config.model_dump(mode="json")["time_budget"], "replicas": config.replicas,
               "padding": padding, "submission_writes": written["count"], **outcome.summary()}
    atomic_write_json(out / "predict_summary.json", summary)
    save_resolved_config(config, out)
    write_artefact(
        out, "predict", config,
        inputs={"test_file": config.test_file, "models": [spec.export_path for spec in config.models]},
        outputs={"submission": submission, "probabilities": out / "probabilities.parquet",
                 "summary": out / "predict_summary.json"},
        rows=len(ids), metrics={"rows_per_second": summary["rows_per_second"],
                                "padding_ratio": (padding or {}).get("padding_ratio"),
                                "fp32_rows": (padding or {}).get("fp32_rows"),
                                "refined_share": refined_rows / planned_rows if planned_rows else None},
        headline="rows_per_second",
    )
    print(f"predict: wrote {submission} ({len(ids)} rows, {seconds:.1f} s, {refined_rows}/{planned_rows} "
          f"refinement rows done)", flush=True)
    return summary
