"""Run `arena-dist predict` from this bundle on an offline machine that has its own torch (a Kaggle notebook).

    python <bundle>/run.py --test-file /kaggle/input/lmsys-chatbot-arena/test.csv --output-dir /kaggle/working \\
        --time-budget 30000

1. installs the bundle's wheels: `pip install --no-index --find-links <bundle>/wheelhouse --no-deps <wheels>`. Each
   is pinned and was checked against the others' requirements when the bundle was built; torch and its own
   dependencies stay the machine's.
2. runs `python -m arena_dist.cli predict --config <bundle>/predict.yaml`, offline, with the bundled models' paths
   made absolute where the bundle lies now, then the test file, the output folder, the time budget in seconds (less
   what the install took) and any `--set key=value` given here.

Standard library only: it runs before anything is installed. `arena-dist bundle` writes it into every bundle (its
source is arena_dist/bundle/entry.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MANIFEST = "manifest.json"
PREDICT_CONFIG = "predict.yaml"
WHEELHOUSE = "wheelhouse"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="install this bundle's wheels, then run arena-dist predict")
    parser.add_argument("--test-file", help="competition test file (default: the bundled predict config's)")
    parser.add_argument("--output-dir", help="where the submission goes (default: the bundled predict config's)")
    parser.add_argument("--time-budget", type=float, metavar="SECONDS",
                        help="seconds predict may take, counted from this script's start")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any other predict setting (dotted key), repeatable")
    return parser.parse_args(argv)


def yaml_text(value: str) -> str:
    """A string as a single-quoted YAML scalar: `--set` parses its value as YAML, and a path may hold `: ` or `#`."""
    return "'" + value.replace("'", "''") + "'"


def check_python(manifest: dict) -> str | None:
    """Why the wheels cannot install on this interpreter (None when they can)."""
    wanted = manifest["target"]["python_version"]
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if wanted != here:
        return (f"this bundle's wheels are for Python {wanted}, this is Python {here}: build the bundle again with "
                f"target.python_version: \"{here}\"")
    return None


def install_command(bundle: Path, manifest: dict) -> list[str]:
    """`--no-compile`: pip would byte-compile every module of every wheel (thousands in transformers alone, most of
    them never imported by predict), several times slower than the install itself; Python compiles what predict
    imports when it first imports it."""
    wheels = [str(bundle / WHEELHOUSE / wheel["file"]) for wheel in manifest["wheels"]]
    return [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(bundle / WHEELHOUSE),
            "--no-deps", "--no-compile", "--disable-pip-version-check", *wheels]


def predict_command(bundle: Path, manifest: dict, args: argparse.Namespace, spent_s: float = 0.0) -> list[str]:
    """`python -m arena_dist.cli predict ...` with every bundled path anchored at `bundle`."""
    sets = [f"{key}={yaml_text(str(bundle / relative))}" for key, relative in manifest["anchored"].items()]
    if args.test_file:
        sets.append(f"test_file={yaml_text(os.path.abspath(args.test_file))}")
    if args.output_dir:
        sets.append(f"output_dir={yaml_text(os.path.abspath(args.output_dir))}")
    if args.time_budget is not None:
        left = args.time_budget - spent_s
        if left <= 0:
            raise SystemExit(f"run.py: the install took {spent_s:.0f} s of the {args.time_budget:.0f} s time budget")
        sets.append(f"time_budget={left:.1f}")
    sets += args.overrides
    command = [sys.executable, "-m", "arena_dist.cli", "predict", "--config", str(bundle / PREDICT_CONFIG)]
    return command + [part for item in sets for part in ("--set", item)]


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    bundle = Path(__file__).resolve().parent
    manifest = json.loads((bundle / MANIFEST).read_text())
    problem = check_python(manifest)
    if problem:
        print(f"run.py: {problem}", file=sys.stderr)
        return 2
    print(f"run.py: installing {len(manifest['wheels'])} wheels from {bundle / WHEELHOUSE}", flush=True)
    installed = subprocess.run(install_command(bundle, manifest))
    if installed.returncode != 0:
        print("run.py: pip install failed (above)", file=sys.stderr)
        return installed.returncode
    spent = time.monotonic() - started
    print(f"run.py: installed in {spent:.0f} s; running predict", flush=True)
    command = predict_command(bundle, manifest, args, spent)
    return subprocess.run(command, env={**os.environ, **OFFLINE}).returncode


if __name__ == "__main__":
    sys.exit(main())
