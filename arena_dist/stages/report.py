"""`arena-dist report RUN_DIR`: an HTML page with PNG plots of a run (training curves, calibration, per-language
and per-source tables, label throughput and padding ratio) and its resolved configs."""

from __future__ import annotations

from pathlib import Path

from arena_dist.config import StrictModel
from arena_dist.errors import InputError


class Config(StrictModel):
    run_dir: str
    output_dir: str | None = None  # default: <run_dir>/report


def run(config: Config) -> dict:
    from arena_dist.artefacts import write_artefact
    from arena_dist.io import claim_output_dir
    from arena_dist.report.render import render_report

    run_dir = Path(config.run_dir).resolve()
    if not run_dir.is_dir():
        raise InputError(f"report: run directory {run_dir} does not exist")
    output_dir = Path(config.output_dir).resolve() if config.output_dir else run_dir / "report"
    claim_output_dir(output_dir, "output_dir")
    included = render_report(run_dir, output_dir)
    index = output_dir / "index.html"
    print(f"report: {index} ({', '.join(f'{k}={v}' for k, v in included.items())})")
    write_artefact(output_dir, "report", config, inputs={"run_dir": run_dir}, outputs={"report": index},
                   rows=included["stages"], metrics=included, headline="stages")
    return {"report": str(index), **included}
