"""`arena-dist bundle`: a predict config -> one folder to upload as a Kaggle dataset for an offline notebook.

The folder (arena_dist/bundle/__init__.py describes it) holds the exports, a wheelhouse of the pinned runtime for
the target interpreter, the predict config rewritten to the bundled exports, run.py and a notebook cell. It is built
in a temporary folder beside `output_dir` and swapped in whole; an existing `output_dir` is replaced only when it is
an earlier bundle (or empty).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from arena_dist.config import StrictModel


class Target(StrictModel):
    """The interpreter of the offline notebook (how to read it off the image: arena_dist/bundle/wheelhouse.py)."""

    python_version: str  # "3.11": quoted in YAML, 3.10 unquoted would be the number 3.1
    platform: str  # manylinux_2_35_x86_64; every older manylinux of the machine is accepted too
    implementation: Literal["cp"] = "cp"
    # Runtime packages the target image already has at a fitting version: left out of the wheelhouse.
    provided: list[str] = Field(default_factory=list)

    @field_validator("python_version")
    @classmethod
    def _major_minor(cls, value: str) -> str:
        if not re.fullmatch(r"3\.\d{1,2}", value):
            raise ValueError(f"expected major.minor such as \"3.11\", got {value!r}")
        return value


class Notebook(StrictModel):
    """What notebook_cell.py runs."""

    bundle_dir: str | None = None  # where the dataset is mounted; default /kaggle/input/<output_dir's name>
    time_budget_s: float | None = Field(None, gt=0)  # passed as --time-budget (predict's `time_budget`)


class Config(StrictModel):
    predict_config: str  # a predict stage YAML; its test_file / output_dir are the notebook's defaults
    output_dir: str
    target: Literal["local"] | Target = "local"  # local: this interpreter (tests, or a build on the image itself)
    # LoRA exports whose base is not inside the export: copy the base into the bundle, or (default) point the
    # member's base_path at base_paths[<its base as recorded, or the member's base_path>] on the target.
    copy_bases: bool = False
    base_paths: dict[str, str] = Field(default_factory=dict)
    predict_overrides: list[str] = Field(default_factory=list)  # `key=value` applied to the predict config first
    notebook: Notebook = Notebook()


def target_spec(config: Config):
    from arena_dist.bundle.wheelhouse import TargetSpec, manylinux_platforms

    if config.target == "local":
        return TargetSpec()
    target = config.target
    manylinux_platforms(target.platform)  # a malformed tag fails here, before any copying
    return TargetSpec(target.python_version, target.platform, target.implementation, tuple(target.provided))


def notebook_cell(config: Config, plan):
    from arena_dist.bundle.build import NotebookCell

    tree = plan.tree
    return NotebookCell(
        bundle_dir=config.notebook.bundle_dir or f"/kaggle/input/{Path(config.output_dir).resolve().name}",
        test_file=tree.get("test_file") if isinstance(tree.get("test_file"), str) else None,
        output_dir=tree.get("output_dir") if isinstance(tree.get("output_dir"), str) else None,
        time_budget_s=config.notebook.time_budget_s)


def run(config: Config) -> dict:
    from arena_dist.artefacts import write_artefact
    from arena_dist.bundle.build import MANIFEST_FILE, NOTEBOOK_CELL, PREDICT_CONFIG, RUN_SCRIPT, WHEELHOUSE, \
        assemble, check_previous_bundle, plan_bundle
    from arena_dist.config import save_resolved_config
    from arena_dist.io import atomic_directory, check_replaceable

    started = time.time()
    out = Path(config.output_dir).resolve()
    check_replaceable(out, "output_dir")
    check_previous_bundle(out)
    target = target_spec(config)
    plan = plan_bundle(config.predict_config, config.copy_bases, config.base_paths, config.predict_overrides)
    print(f"bundle: {len(plan.placement.exports)} exports, {len(plan.placement.bases)} bases to copy, "
          f"{len(plan.placement.external_bases)} LoRA bases served by the target -> {out}", flush=True)
    with atomic_directory(out) as tmp:
        manifest = assemble(tmp, plan, target, notebook_cell(config, plan))
        save_resolved_config(config, tmp)
        sizes = manifest["sizes"]
        write_artefact(
            tmp, "bundle", config, started=started,
            inputs={"predict_config": config.predict_config,
                    "exports": [manifest["exports"][rel]["source"] for rel in manifest["exports"]]},
            outputs={"manifest": out / MANIFEST_FILE, "predict_config": out / PREDICT_CONFIG,
                     "run_script": out / RUN_SCRIPT, "notebook_cell": out / NOTEBOOK_CELL,
                     "wheelhouse": out / WHEELHOUSE},
            rows={"exports": len(manifest["exports"]), "bases": len(manifest["bases"]),
                  "wheels": len(manifest["wheels"])},
            metrics={"bundle_mb": sizes["total"] / 2**20, "wheelhouse_mb": sizes["wheelhouse"] / 2**20,
                     "models_mb": sizes["models"] / 2**20},
            headline="bundle_mb")
    print(f"bundle: wrote {out} ({sizes['total'] / 2**20:,.1f} MB: wheelhouse {sizes['wheelhouse'] / 2**20:,.1f} MB "
          f"in {len(manifest['wheels'])} wheels, models {sizes['models'] / 2**20:,.1f} MB) for Python "
          f"{manifest['target']['python_version']} on {manifest['target']['platform']}", flush=True)
    print(f"bundle: paste into the notebook:\n{(out / NOTEBOOK_CELL).read_text()}", flush=True)
    return {"output_dir": str(out), **manifest}
