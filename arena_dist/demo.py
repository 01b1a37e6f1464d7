"""`make demo`: the whole pipeline on synthetic data, every stage submitted to a local Ray head with `ray job submit`.

    python -m arena_dist.demo [--config launch/configs/demo.yaml] [--set run_dir=runs/demo2 ...]

It starts a private Ray head (dashboard on 127.0.0.1), runs the stages in order, prints a summary table (time, rows,
quality against the Bayes optimum of the synthetic data) and always stops its head on exit, Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pydantic import Field, field_validator

from arena_dist.artefacts import StageArtefact, metric_text, read_artefact
from arena_dist.config import StrictModel, load_config, save_resolved_config
from arena_dist.data.synth_generators import GENERATORS
from arena_dist.errors import ArenaDistError
from arena_dist.io import claim_output_dir
from arena_dist.ray_local import LocalRayHead, submit_job

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
    """One stage run of the pipeline: its entry script, its config, the `--set` overrides that wire it to the run
    directory and `output`, the directory (under the run) where it leaves its stage record. `config_name` defaults
    to the stage name (launch/configs/demo/<config_name>.yaml)."""

    name: str
    script: str
    overrides: Callable[[Path], list[str]]
    output: str
    config_name: str | None = None
    config_output: str | None = None  # the config is this output of the synth stage (it knows the paths it wrote)
    record: StageArtefact | None = None
    seconds: float = 0.0

    def config_path(self, config: DemoConfig, run: Path) -> Path | None:
        if self.config_output:
            return Path(output_of(run, "synth", self.config_output))
        path = REPO / config.configs_dir / f"{self.config_name or self.name}.yaml"
        return path if path.exists() else None


def output_of(run: Path, directory: str, name: str) -> str:
    """The path an earlier stage recorded as its output `name` (its stage record in run/directory)."""
    record = read_artefact(run / directory)
    if record is None or record.status != "succeeded" or name not in record.outputs:
        raise ArenaDistError(f"{run / directory}: no successful stage record with an output {name!r} "
                             "(run the stage that writes it first)")
    return record.outputs[name]


TEACHER_ID = "teacher"


def predict_step(name: str, model: str, output: str, swap_tta: bool) -> Step:
    """Without swap-TTA, no refinement at all (`refine=[]`); with it, the config's (swap-TTA on every row)."""
    return Step(name, "launch/predict.py", lambda run: [
        f"test_file={output_of(run, 'synth', 'lmsys/test')}", f"models.0.export_path={output_of(run, model, 'export')}",
        f"output_dir={run / output}", *([] if swap_tta else ["refine=[]"]),
    ], output, config_name="predict")


def evaluate_step(name: str, predictions: str, output: str) -> Step:
    return Step(name, "launch/evaluate.py", lambda run: [
        f"predictions={output_of(run, predictions, 'probabilities')}",
        f"answers={output_of(run, 'synth', 'lmsys/test_answers')}", f"output_dir={run / output}",
    ], output, config_name="evaluate")


def pipeline() -> list[Step]:
    """The demo's stages in order. synth writes the labelled sets and the pool's prompts; the synthetic world's chat
    models answer those prompts (`generate`), and that pool is what the teacher labels and the student learns from.
    The teacher and the student are both scored on the synthetic test set, and the student with and without
    swap-TTA, so the summary shows each against the Bayes optimum. Each stage finds what an earlier one wrote
    through that stage's record (`output_of`)."""
    return [
        Step("synth", "launch/synth.py", lambda run: [
            f"output_dir={run / 'synth'}", f"generated_pool={run / 'generated' / 'pool.parquet'}"], "synth"),
        Step("prepare-prompts", "launch/prepare.py", lambda run: [f"output_dir={run / 'prompts'}"], "prompts",
             config_output="prompts_prepare_config"),
        Step("generate", "launch/generate.py", lambda run: [
            f"input.dataset_dir={output_of(run, 'prompts', 'dataset')}", f"output_dir={run / 'generated'}",
            *(f"generators.{i}.name_or_path={output_of(run, 'synth', f'generators/{spec.name}')}"
              for i, spec in enumerate(GENERATORS)),
        ], "generated"),
        Step("prepare", "launch/prepare.py", lambda run: [f"output_dir={run / 'dataset'}"], "dataset",
             config_output="prepare_config"),
        Step("teacher", "launch/teacher.py", lambda run: [
            f"data.dataset_dir={output_of(run, 'dataset', 'dataset')}", f"output.run_dir={run / 'teacher'}",
            f"ray.storage_path={run / 'teacher' / 'ray'}",
        ], "teacher"),
        Step("label", "launch/pseudo_label.py", lambda run: [
            f"input.dataset_dir={output_of(run, 'dataset', 'dataset')}",
            f"teachers.0.export_path={output_of(run, 'teacher', 'export')}",
            f"teachers.0.id={TEACHER_ID}", f"output_dir={run / 'labels'}",
        ], "labels"),
        Step("student", "launch/student.py", lambda run: [
            f"data.dataset_dir={output_of(run, 'dataset', 'dataset')}",
            f"data.soft_labels={output_of(run, 'labels', TEACHER_ID)}", f"output.run_dir={run / 'student'}",
        ], "student"),
        predict_step("predict", "student", "predict", True),
        evaluate_step("evaluate", "predict", "evaluate"),
        predict_step("predict-no-tta", "student", "predict_no_tta", False),
        evaluate_step("evaluate-no-tta", "predict_no_tta", "evaluate_no_tta"),
        predict_step("predict-teacher", "teacher", "predict_teacher", True),
        evaluate_step("evaluate-teacher", "predict_teacher", "evaluate_teacher"),
        Step("report", "launch/report.py", lambda run: [f"run_dir={run}"], "report"),
    ]


def run_step(step: Step, config: DemoConfig, run: Path, head) -> None:
    entrypoint = ["python", step.script]
    config_path = step.config_path(config, run)
    if config_path is not None:
        entrypoint += ["--config", str(config_path)]
    entrypoint += [arg for override in step.overrides(run) for arg in ("--set", override)]
    print(f"\n=== {step.name}: ray job submit -- {' '.join(entrypoint)}", flush=True)
    started, submitted = time.monotonic(), time.time()
    done = submit_job(head, entrypoint, working_dir=REPO, timeout=config.stage_timeout_s,
                      log_path=run / "logs" / f"{step.name}.log", echo=config.echo_logs)
    step.seconds = time.monotonic() - started
    record = read_artefact(run / step.output)
    if record is not None and record.finished_unix() >= submitted:  # not a record left by an earlier run
        step.record = record
    if done.returncode != 0:
        tail = "" if config.echo_logs else done.stdout[-3000:]
        raise ArenaDistError(f"stage {step.name} failed (exit {done.returncode}); log: {run / 'logs' / step.name}.log"
                             + (f"\n{tail}" if tail else ""))


def describe(record) -> tuple[str, str, str, str]:
    """(stage time, rows, headline, other metrics) cells for one stage record; empty cells without one."""
    if record is None:
        return "", "", "", ""
    others = ", ".join(metric_text(name, value) for name, value in record.metrics.items() if name != record.headline)
    headline = record.headline_text() if record.status == "succeeded" else f"failed: {record.error}"
    seconds = "" if record.seconds is None else f"{record.seconds:6.1f} s"
    return seconds, record.rows_text(), headline, others


def summary_table(steps: list[Step], run: Path) -> str:
    """Per stage: job time (submission to exit), the stage's own time, rows, headline metric and the other metrics
    of its record; the Bayes optimum below."""
    rows = [("stage", "job time", "stage time", "rows", "headline", "metrics")]
    rows += [(step.name, f"{step.seconds:6.1f} s", *describe(step.record)) for step in steps]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"total {sum(step.seconds for step in steps):.0f} s")
    with contextlib.suppress(ArenaDistError, OSError):  # a run without the synth stage has no optimum to show
        bayes = json.loads(Path(output_of(run, "synth", "bayes")).read_text())
        lines.append(f"Bayes optimum on the test set: log loss {bayes['bayes_log_loss']:.4f}, accuracy "
                     f"{bayes['bayes_accuracy']:.4f} (uniform: log loss {bayes['ln3']:.4f}, achievable gain "
                     f"{bayes['achievable_gain']:.4f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m arena_dist.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", default=str(REPO / "launch" / "configs" / "demo.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        config = load_config(DemoConfig, args.config, args.overrides)
        run = claim_output_dir(Path(config.run_dir).resolve(), "run_dir")
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
            finished.append(step)  # a failed stage's row shows its error
            run_step(step, config, run, head)
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
