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

from pydantic import Field

from arena_dist.config import StrictModel, load_config, save_resolved_config
from arena_dist.errors import ArenaDistError

REPO = Path(__file__).resolve().parents[1]


class DemoConfig(StrictModel):
    run_dir: str = "runs/demo"
    configs_dir: str = Field("launch/configs/demo", description="one YAML per stage, relative to the repo")
    stages: list[str] = Field(
        default_factory=lambda: ["synth", "prepare", "teacher", "label", "student", "predict", "evaluate", "report"]
    )
    num_cpus: int = Field(2, ge=1)
    stage_timeout_s: int = Field(1800, ge=10)
    echo_logs: bool = True


@dataclass
class Step:
    """One stage of the pipeline: its entry script and the `--set` overrides that wire it to the run directory."""

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


def pipeline() -> list[Step]:
    return [
        Step("synth", "launch/synth.py", lambda run: [f"output_dir={run / 'synth'}"]),
        Step("prepare", "launch/prepare.py", lambda run: [f"output_dir={run / 'dataset'}"]),
        Step("teacher", "launch/teacher.py", lambda run: [
            f"data.dataset_dir={run / 'dataset'}", f"output.run_dir={run / 'teacher'}",
            f"ray.storage_path={run / 'teacher' / 'ray'}",
        ]),
        Step("label", "launch/pseudo_label.py", lambda run: [
            f"input.dataset_dir={run / 'dataset'}", f"teachers.0.export_path={run / 'teacher' / 'export'}",
            f"output_dir={run / 'labels'}",
        ]),
        Step("student", "launch/student.py", lambda run: [
            f"data.dataset_dir={run / 'dataset'}", f"data.labels_dir={run / 'labels'}",
            f"output.run_dir={run / 'student'}",
        ]),
        Step("predict", "launch/predict.py", lambda run: [
            f"test_file={run / 'synth' / 'lmsys' / 'test.csv'}", f"model_path={run / 'student' / 'export'}",
            f"output_dir={run / 'predict'}",
        ]),
        Step("evaluate", "launch/evaluate.py", lambda run: [
            f"predictions={run / 'predict' / 'submission.csv'}",
            f"answers={run / 'synth' / 'lmsys' / 'test_answers.csv'}", f"output_dir={run / 'evaluate'}",
        ]),
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


def summary_table(steps: list[Step], run: Path) -> str:
    """Per stage: time, rows, and quality next to the Bayes optimum of the synthetic data."""
    bayes = {}
    bayes_path = run / "synth" / "bayes.json"
    if bayes_path.exists():
        bayes = json.loads(bayes_path.read_text())
    rows = [("stage", "time", "rows", "quality")]
    for step in steps:
        rows.append((step.name, f"{step.seconds:6.1f} s", str(step.summary.get("rows", "")),
                     str(step.summary.get("quality", ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if bayes:
        lines.append(f"Bayes optimum on the test set: {bayes_line(bayes)}")
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

    run = Path(config.run_dir).resolve()
    run.mkdir(parents=True, exist_ok=True)
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
        print(f"Ray head {head.address}, dashboard {head.dashboard_url} (127.0.0.1 only)", flush=True)
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
