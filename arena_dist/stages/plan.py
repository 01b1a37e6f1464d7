"""`arena-dist plan`: capacity planner. Memory per GPU (model states by the ZeRO formulas, activations, quantised
weights), whether it fits and the largest micro-batch, and time for a teacher epoch, pseudo-labelling and a student
epoch at a stated MFU; and the wall time of a competition submission against its time limit. Pure arithmetic: no
GPU, no torch, no deepspeed import. Formulas: arena_dist/planning/*.py.
"""

from __future__ import annotations

from arena_dist.artefacts import write_artefact
from arena_dist.config import save_resolved_config
from arena_dist.io import atomic_write_json, claim_output_dir
from arena_dist.planning.config import Config  # noqa: F401  (the CLI looks for `Config`)
from arena_dist.planning.report import build_plan, format_plan

HEADLINES = ("teacher_epoch_hours", "submission_hours", "student_epoch_hours")  # the first one planned


def run(config: Config) -> dict:
    plan = build_plan(config)
    out_dir = claim_output_dir(config.out_dir, "out_dir")
    atomic_write_json(out_dir / "plan.json", plan)
    save_resolved_config(config, out_dir)
    print(format_plan(plan))
    print(f"wrote {out_dir / 'plan.json'}")
    metrics = plan_metrics(plan)
    headline = next(name for name in HEADLINES if name in metrics)
    write_artefact(out_dir, "plan", config, outputs={"plan": out_dir / "plan.json"}, metrics=metrics,
                   headline=headline)
    return plan


def plan_metrics(plan: dict) -> dict:
    """Per job: GiB per GPU, whether it fits, hours (the teacher's epoch is the headline: it dominates the bill;
    without a teacher, the submission's hours)."""
    metrics = {}
    for job in ("teacher", "student"):
        if plan.get(job):
            metrics[f"{job}_gib_per_gpu"] = plan[job]["memory"]["total_gib"]
            metrics[f"{job}_fits"] = plan[job]["memory"]["fits"]
            metrics[f"{job}_epoch_hours"] = plan[job]["epoch"]["hours"]
    if plan.get("label"):
        metrics["label_hours"] = plan["label"]["hours"]
    if plan.get("submission"):
        metrics["submission_hours"] = plan["submission"]["hours"]
        metrics["submission_fits"] = plan["submission"]["fits"]
        metrics["submission_margin_hours"] = plan["submission"]["margin_hours"]
    return metrics
