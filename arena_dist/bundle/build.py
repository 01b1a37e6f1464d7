"""Assemble a bundle folder from a predict config: the models it uses, a wheelhouse for the target, the rewritten
config, the run script, a notebook cell and the manifest (see arena_dist/bundle/__init__.py for the layout)."""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from arena_dist.bundle.exports import Member, Placement, copy_folder, find_members, folders_size, place_models, \
    rewrite_paths
from arena_dist.bundle.wheelhouse import TargetSpec, build_project_wheel, check_closure, checkout_root, \
    download_wheels, pinned_requirements, provided_by_torch
from arena_dist.errors import ConfigError, InputError
from arena_dist.io import OWNER_MARKER, atomic_write_json, atomic_write_text, is_project_output, sha256_file

BUNDLE_KIND = "arena_dist bundle"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PREDICT_CONFIG = "predict.yaml"
RUN_SCRIPT = "run.py"
NOTEBOOK_CELL = "notebook_cell.py"
WHEELHOUSE = "wheelhouse"
MB = 1 << 20


@dataclass
class BundlePlan:
    """A checked predict config, ready to assemble: the bundled config tree (paths relative to the bundle), the
    keys run.py anchors, and where every model goes."""

    config_file: Path
    tree: dict
    anchored: dict[str, str]
    placement: Placement
    members: list[Member]


@dataclass
class NotebookCell:
    """What the pasted cell runs: the bundle's folder on the target and the predict arguments."""

    bundle_dir: str
    test_file: str | None
    output_dir: str | None
    time_budget_s: float | None


def plan_bundle(predict_config: str, copy_bases: bool, base_paths: dict[str, str],
                overrides: Iterable[str] = ()) -> BundlePlan:
    """Read the predict config as YAML (plus `overrides`), check every export and base it names and rewrite its
    paths; nothing is copied or downloaded yet, so a wrong path fails in a second."""
    import yaml

    from arena_dist.config import apply_overrides, load_yaml

    path = Path(predict_config)
    try:
        tree = load_yaml(path.read_text())
    except OSError as err:
        raise ConfigError(f"predict_config {path}: cannot read it ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"predict_config {path}: not valid YAML ({err})".replace("\n", " ")) from None
    if not isinstance(tree, dict):
        raise ConfigError(f"predict_config {path}: top level must be a mapping of keys")
    tree = apply_overrides(tree, overrides)
    members = find_members(tree, path)
    placement = place_models(members, path, copy_bases, base_paths)
    tree, anchored = rewrite_paths(tree, {**placement.exports, **placement.bases})
    unanchored = [m.key for m in members if f"{m.key}.export_path" not in anchored]
    if unanchored:  # cannot happen unless rewrite_paths and place_models disagree on a path
        raise ConfigError(f"{path}: export_path of {', '.join(unanchored)} was not rewritten")
    return BundlePlan(path, tree, anchored, placement, members)


def is_bundle(folder: Path) -> bool:
    """True when `folder` holds a manifest this command wrote."""
    try:
        return json.loads((folder / MANIFEST_FILE).read_text()).get("kind") == BUNDLE_KIND
    except (OSError, ValueError, AttributeError):  # missing, unreadable, not JSON, not a mapping
        return False


def check_previous_bundle(target: Path) -> None:
    """A bundle replaces only an empty folder or an earlier bundle: another stage's output, though arena_dist wrote
    it too (it carries the same ownership marker), is refused here; a foreign folder is refused by the swap."""
    if not is_project_output(target) or is_bundle(target):
        return
    others = sorted(entry.name for entry in target.iterdir() if entry.name != OWNER_MARKER)
    if others:
        raise InputError(f"{target}: output_dir holds another stage's output (e.g. {others[0]!r}), not a bundle; "
                         "choose a new or empty directory")


def _progress(total_bytes: int, desc: str):
    """A progress bar in MB and the `advance(bytes)` callback that feeds it."""
    from arena_dist.progress import progress_bar

    bar = progress_bar(desc, total=max(1, round(total_bytes / MB)), unit="MB", delay_s=2.0)
    done = {"bytes": 0, "shown": 0}

    def advance(count: int) -> None:
        done["bytes"] += count
        shown = done["bytes"] // MB
        if shown > done["shown"]:
            bar.update(shown - done["shown"])
            done["shown"] = shown

    return bar, advance


def copy_models(plan: BundlePlan, directory: Path) -> dict:
    """Every export and copied base into the bundle; -> their manifest entries."""
    folders = {**plan.placement.exports, **plan.placement.bases}
    bar, advance = _progress(folders_size(folders), "bundle: copy models")
    entries = {}
    with bar:
        for source, relative in folders.items():
            entry = copy_folder(source, directory / relative, advance)
            entries[relative] = {"source": str(source), **entry}
    return entries


def build_wheelhouse(directory: Path, target: TargetSpec) -> tuple[list[dict], dict]:
    """Download the pinned runtime wheels for `target`, build arena_dist's, check the closure; -> manifest rows and
    the target's description."""
    from packaging.utils import canonicalize_name

    root = checkout_root()
    pins = pinned_requirements(root / "requirements" / "runtime.txt", root / "requirements" / "constraints.txt",
                               target)
    with_torch = provided_by_torch(target)
    provided = with_torch | {canonicalize_name(name) for name in target.provided}
    overlap = sorted(pin.name for pin in pins if pin.name in with_torch)
    if overlap:
        raise ConfigError(f"requirements/runtime.txt lists {', '.join(overlap)}, which the target's own torch brings; "
                          "installing another version over it would change the target's torch installation")
    wanted = [pin for pin in pins if pin.name not in provided]
    described = target.describe()
    directory.mkdir()
    print(f"bundle: downloading {len(wanted)} pinned wheels for Python {described['python_version']} on "
          f"{described['platform']}", flush=True)
    download_wheels(wanted, target, directory)
    build_project_wheel(root, directory)
    wheels = check_closure(directory, provided, target)
    rows = [{"file": w.path.name, "name": w.name, "version": w.version, "size": w.path.stat().st_size,
             "sha256": sha256_file(w.path)} for w in wheels]
    return rows, described


def notebook_cell_text(cell: NotebookCell) -> str:
    """The few lines a competitor pastes into the submission notebook (internet off, the bundle added as input).
    run.py's output is passed on line by line: a child process's own output would go to the notebook server's log,
    not to the cell."""
    args = []
    for flag, value in (("--test-file", cell.test_file), ("--output-dir", cell.output_dir),
                        ("--time-budget", None if cell.time_budget_s is None else f"{cell.time_budget_s:g}")):
        if value is not None:
            args.append(f"    {flag!r}, {value!r},\n")
    return (
        "# arena_dist submission: add this bundle as an input of the notebook (internet off), then run this cell.\n"
        "import subprocess, sys\n\n"
        f"BUNDLE = {cell.bundle_dir!r}  # where the bundle's dataset is mounted\n"
        'run = subprocess.Popen([sys.executable, f"{BUNDLE}/run.py",\n'
        f"{''.join(args)}"
        "], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)\n"
        "for line in run.stdout:\n"
        '    print(line, end="")\n'
        'assert run.wait() == 0, f"run.py failed (exit status {run.returncode})"\n'
    )


def predict_yaml_text(plan: BundlePlan) -> str:
    import yaml

    header = (f"# `arena-dist bundle` wrote this from {plan.config_file.resolve()}. Model paths are relative to this\n"
              f"# bundle's folder: {RUN_SCRIPT} passes them as absolute paths ({', '.join(plan.anchored)}).\n")
    return header + yaml.safe_dump(plan.tree, sort_keys=False)


def assemble(directory: Path, plan: BundlePlan, target: TargetSpec, cell: NotebookCell) -> dict:
    """Write the whole bundle into `directory` (the caller's temporary folder); -> the manifest."""
    started = time.monotonic()
    models = copy_models(plan, directory)
    wheels, described = build_wheelhouse(directory / WHEELHOUSE, target)
    atomic_write_text(directory / PREDICT_CONFIG, predict_yaml_text(plan))
    shutil.copyfile(Path(__file__).with_name("entry.py"), directory / RUN_SCRIPT)
    atomic_write_text(directory / NOTEBOOK_CELL, notebook_cell_text(cell))
    wheel_bytes = sum(w["size"] for w in wheels)
    model_bytes = sum(m["size"] for m in models.values())
    manifest = {
        "kind": BUNDLE_KIND, "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "created_by": _created_by(), "predict_config": str(plan.config_file.resolve()),
        "target": described, "wheels": wheels,
        "exports": {rel: models[rel] for rel in plan.placement.exports.values()},
        "bases": {rel: models[rel] for rel in plan.placement.bases.values()},
        "bases_on_target": plan.placement.external_bases,
        "anchored": plan.anchored,
        "sizes": {"wheelhouse": wheel_bytes, "models": model_bytes, "total": wheel_bytes + model_bytes},
        "seconds": round(time.monotonic() - started, 1),
    }
    atomic_write_json(directory / MANIFEST_FILE, manifest)
    return manifest


def _created_by() -> str:
    import arena_dist

    return f"arena_dist {arena_dist.__version__} (Python {sys.version.split()[0]})"
