"""`arena-dist <stage> --config X.yaml --set key=value ...`

Each stage lives in `arena_dist.stages.<name>` and exposes `Config` (a StrictModel) and `run(config)`. Stage
modules are imported only when their stage runs, so `arena-dist synth` never imports torch or ray. A recipe writes
its stage record (`stage.json`, arena_dist.artefacts) when it succeeds; when it raises after claiming its output
directory, the CLI writes the `failed` record there.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time

from arena_dist.config import load_config
from arena_dist.errors import ArenaDistError
from arena_dist.io import atomic_write_text, claim_time, claimed_dirs

STAGES = {
    "synth": "write a synthetic arena benchmark with a known preference model",
    "prepare": "merge sources into validated, deduplicated, folded parquet shards",
    "generate": "answer prompts with two generator models each into a pool, on Ray actors",
    "teacher": "fine-tune a teacher classifier with DeepSpeed ZeRO-3 on Ray Train",
    "label": "pseudo-label a prompt pool with teacher exports on Ray actors",
    "student": "train a QLoRA student by distillation",
    "merge": "average a student's fold adapters into one model, checked against their ensemble",
    "predict": "write a competition submission from a trained model",
    "bundle": "one folder for an offline notebook: exports, pinned wheels, predict config, run script",
    "evaluate": "score predictions against answers",
    "plan": "capacity planner: memory per GPU and time estimates",
    "report": "render an HTML report of a run directory",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arena-dist", description=__doc__.strip().splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, help_text in STAGES.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        stage.add_argument("--config", "-c", help="YAML file validated into the stage's typed config")
        stage.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                           help="override one config key (dotted path), repeatable")
        if name == "report":
            stage.add_argument("run_dir", nargs="?", help="run directory (same as --set run_dir=...)")
    return parser


def stage_module(name: str):
    return importlib.import_module(f"arena_dist.stages.{name}")


def write_summary(summary) -> None:
    """When ARENA_DIST_SUMMARY names a file, leave the stage's whole summary dict there: for tests that run a stage
    in a child process and check details the stage record (`stage.json`) does not carry."""
    target = os.environ.get("ARENA_DIST_SUMMARY")
    if target and isinstance(summary, dict):
        atomic_write_text(target, json.dumps(summary, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    from arena_dist.quiet import silence_known_warnings

    silence_known_warnings()  # before any stage imports the libraries that emit them
    args = build_parser().parse_args(argv)
    module = stage_module(args.stage)
    overrides = list(args.overrides)
    if getattr(args, "run_dir", None):
        overrides.insert(0, f"run_dir={args.run_dir}")
    try:
        config = load_config(module.Config, args.config, overrides)
        write_summary(run_recorded(args.stage, module, config))
    except ArenaDistError as err:
        print(f"arena-dist {args.stage}: {err}", file=sys.stderr)
        return 2
    return 0


def run_recorded(stage: str, module, config):
    """`module.run(config)`; if it raises after claiming an output directory, the first directory it claimed gets
    a `failed` stage record with the error's first line (then the error goes on as before)."""
    started = time.time()
    try:
        return module.run(config)
    except BaseException as err:
        claimed = [d for d in claimed_dirs() if (claim_time(d) or 0.0) >= started]
        if claimed:
            from arena_dist.artefacts import record_failure

            with contextlib.suppress(OSError):  # the directory is gone or read-only: the error is what matters
                record_failure(claimed[0], stage, err, config)
        raise


if __name__ == "__main__":
    sys.exit(main())
