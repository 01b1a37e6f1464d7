"""`make demo`: the whole pipeline on synthetic data, every stage submitted to a local Ray head with `ray job submit`.

    python -m arena_dist.demo [--config launch/configs/demo.yaml] [--set run_dir=runs/demo2 ...]

It starts a private Ray head (dashboard on 127.0.0.1), runs the stages in order, prints a summary table (time, rows,
quality against the Bayes optimum of the synthetic data) and always stops its head on exit, Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import Field, field_validator

from arena_dist.config import StrictModel, load_config, save_resolved_config
from arena_dist.errors import ArenaDistError

REPO = Path(__file__).resolve().parents[1]


class DemoConfig(StrictModel):
    run_dir: str = "runs/demo"
    configs_dir: str = Field("launch/configs/demo", description="one YAML per stage, relative to the repo")
    stages: list[str] = Field(
        default_factory=lambda: [step.name for step in pipeline()],
        description="names from arena_dist.demo.pipeline(), run in pipeline order",
    )
    num_cpus: int = Field(2, ge=1)
    stage_timeout_s: int = Field(1800, ge=10)
    echo_logs: bool = True

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, value: list[str]) -> list[str]:
        known = [step.name for step in pipeline()]
        unknown = [name for name in value if name not in known]
        if unknown:  # a typo must not silently run nothing
            raise ValueError(f"unknown stage {unknown[0]!r} (known: {', '.join(known)})")
        return value


@dataclass
class Step:
    """One stage run of the pipeline: its entry script, its config and the `--set` overrides that wire it to the
    run directory. `config_name` defaults to the stage name (launch/configs/demo/<config_name>.yaml)."""

    name: str
    script: str
    overrides: Callable[[Path], list[str]]
    config_name: str | None = None
    summary: dict = field(default_factory=dict)
    seconds: float = 0.0

    def config_path(self, config: DemoConfig, run: Path) -> Path | None:
        if self.name == "prepare":
            return run / "synth" / "prepare.yaml"  # written by synth, with the paths of what it wrote
        path = REPO / config.configs_dir / f"{self.config_name or self.name}.yaml"
        return path if path.exists() else None


TEACHER_ID = "teacher"


def predict_step(name: str, model: str, output: str, tta: str) -> Step:
    return Step(name, "launch/predict.py", lambda run: [
        f"test_file={run / 'synth' / 'lmsys' / 'test.csv'}", f"model.export_path={run / model / 'export'}",
        f"output_dir={run / output}", f"tta.mode={tta}",
    ], config_name="predict")


def evaluate_step(name: str, predictions: str, output: str) -> Step:
    return Step(name, "launch/evaluate.py", lambda run: [
        f"predictions={run / predictions / 'probabilities.parquet'}",
        f"answers={run / 'synth' / 'lmsys' / 'test_answers.csv'}", f"output_dir={run / output}",
    ], config_name="evaluate")


def pipeline() -> list[Step]:
    """The demo's stages in order. The teacher and the student are both scored on the synthetic test set, and the
    student with and without swap-TTA, so the summary shows each against the Bayes optimum."""
    return [
        Step("synth", "launch/synth.py", lambda run: [f"output_dir={run / 'synth'}"]),
        Step("prepare", "launch/prepare.py", lambda run: [f"output_dir={run / 'dataset'}"]),
        Step("teacher", "launch/teacher.py", lambda run: [
            f"data.dataset_dir={run / 'dataset'}", f"output.run_dir={run / 'teacher'}",
            f"ray.storage_path={run / 'teacher' / 'ray'}",
        ]),
        Step("label", "launch/pseudo_label.py", lambda run: [
            f"input.dataset_dir={run / 'dataset'}", f"teachers.0.export_path={run / 'teacher' / 'export'}",
            f"teachers.0.id={TEACHER_ID}", f"output_dir={run / 'labels'}",
        ]),
        Step("student", "launch/student.py", lambda run: [
            f"data.dataset_dir={run / 'dataset'}", f"data.soft_labels={run / 'labels' / TEACHER_ID}",
            f"output.run_dir={run / 'student'}",
        ]),
        predict_step("predict", "student", "predict", "all"),
        evaluate_step("evaluate", "predict", "evaluate"),
        predict_step("predict-no-tta", "student", "predict_no_tta", "none"),
        evaluate_step("evaluate-no-tta", "predict_no_tta", "evaluate_no_tta"),
        predict_step("predict-teacher", "teacher", "predict_teacher", "all"),
        evaluate_step("evaluate-teacher", "predict_teacher", "evaluate_teacher"),
        Step("report", "launch/report.py", lambda run: [f"run_dir={run}"]),
    ]


def run_step(step: Step, config: DemoConfig, run: Path, head) -> None:
    from arena_dist.ray_local import submit_job

    summary_path = run / "summaries" / f"{step.name}.json"
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    entrypoint = ["python", step.script]
    config_path = step.config_path(config, run)
    if config_path is not None:
        entrypoint += ["--config", str(config_path)]
    for override in step.overrides(run):
        entrypoint += ["--set", override]
    print(f"\n=== {step.name}: ray job submit -- {' '.join(entrypoint)}", flush=True)
    started = time.monotonic()
    done = submit_job(
        head, entrypoint, working_dir=REPO, env={"ARENA_DIST_SUMMARY": str(summary_path)},
        timeout=config.stage_timeout_s, log_path=run / "logs" / f"{step.name}.log", echo=config.echo_logs,
    )
    step.seconds = time.monotonic() - started
    if done.returncode != 0:
        tail = "" if config.echo_logs else done.stdout[-3000:]
        raise ArenaDistError(f"stage {step.name} failed (exit {done.returncode}); log: {run / 'logs' / step.name}.log"
                             + (f"\n{tail}" if tail else ""))
    if summary_path.exists():
        step.summary = json.loads(summary_path.read_text())


QUALITY_KEYS = ("log_loss", "eval_log_loss", "accuracy", "eval_accuracy", "share_of_achievable_gain",
                "bayes_log_loss", "padding_ratio")


def _flatten(summary: dict, prefix: str = "", depth: int = 0) -> dict:
    flat = {}
    for key, value in summary.items():
        if isinstance(value, dict) and depth < 4:
            flat.update(_flatten(value, f"{prefix}{key}.", depth + 1))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _recency(flat_key: str) -> int:
    """Sort key: a stage's final metrics first, its initial ones (e.g. the student's eval before training) last."""
    return 0 if "final" in flat_key else 2 if "initial" in flat_key else 1


def describe(summary: dict) -> tuple[str, str]:
    """(rows, quality) cells for one stage's summary: whatever rows count and quality metrics it reported."""
    flat = _flatten(summary)
    rows = summary.get("rows", summary.get("n"))
    if rows is None:  # e.g. the label stage: rows per teacher store
        rows = next((v for k, v in flat.items() if k.endswith(".rows_scored") and isinstance(v, int)), "")
    if isinstance(rows, dict):
        rows = ", ".join(f"{k} {v:,}" for k, v in rows.items() if isinstance(v, int))
    elif isinstance(rows, int):
        rows = f"{rows:,}"
    quality = []
    for key in QUALITY_KEYS:
        hits = [v for k, v in sorted(flat.items(), key=lambda item: _recency(item[0]))
                if k.split(".")[-1] == key and isinstance(v, (int, float))]
        if hits:
            label = key.replace("share_of_achievable_gain", "share of gain").replace("_", " ")
            quality.append(f"{label} {hits[0]:.4f}")
    return str(rows), ", ".join(quality)


def summary_table(steps: list[Step], run: Path) -> str:
    """Per stage: time, rows, and quality next to the Bayes optimum of the synthetic data."""
    rows = [("stage", "time", "rows", "quality")]
    for step in steps:
        count, quality = describe(step.summary)
        rows.append((step.name, f"{step.seconds:6.1f} s", count, quality))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"total {sum(step.seconds for step in steps):.0f} s")
    bayes_path = run / "synth" / "bayes.json"
    if bayes_path.exists():
        lines.append(f"Bayes optimum on the test set: {bayes_line(json.loads(bayes_path.read_text()))}")
    return "\n".join(lines)


def bayes_line(bayes: dict) -> str:
    return (f"log loss {bayes['bayes_log_loss']:.4f}, accuracy {bayes['bayes_accuracy']:.4f} "
            f"(uniform: log loss {bayes['ln3']:.4f}, achievable gain {bayes['achievable_gain']:.4f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m arena_dist.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", default=str(REPO / "launch" / "configs" / "demo.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        config = load_config(DemoConfig, args.config, args.overrides)
    except ArenaDistError as err:
        print(err, file=sys.stderr)
        return 2

    from arena_dist.ray_local import LocalRayHead

    from arena_dist.io import claim_output_dir

    run = Path(config.run_dir).resolve()
    try:
        claim_output_dir(run, "run_dir")
    except ArenaDistError as err:
        print(err, file=sys.stderr)
        return 2
    save_resolved_config(config, run, "demo_config.yaml")
    steps = [step for step in pipeline() if step.name in config.stages]
    # SIGTERM (e.g. from a job scheduler) unwinds like Ctrl-C, so the head is always stopped.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    head = LocalRayHead(num_cpus=config.num_cpus)
    finished: list[Step] = []
    status = 1
    try:
        print(f"starting a local Ray head ({config.num_cpus} CPUs) ...", flush=True)
        head.start()
        print(f"Ray head {head.address}, dashboard {head.dashboard_url} (127.0.0.1 only), temp dir {head.temp_dir}",
              flush=True)
        for step in steps:
            run_step(step, config, run, head)
            finished.append(step)
        status = 0
    except ArenaDistError as err:
        print(f"\ndemo failed: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ndemo interrupted", file=sys.stderr)
        status = 130
    finally:
        head.stop()
        print("Ray head stopped", flush=True)
    print("\n" + summary_table(finished, run))
    report = run / "report" / "index.html"
    if report.exists():
        print(f"report: {report}")
    return status


if __name__ == "__main__":
    sys.exit(main())
