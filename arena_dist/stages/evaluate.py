"""`arena-dist evaluate`: score a predictions file against an answers file.

Writes metrics.json (log loss, accuracy, Bayes reference when the answers carry true probabilities, per-language and
per-source tables, calibration bins), by_language.csv, by_source.csv and calibration.png into `output_dir`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from arena_dist.config import StrictModel, save_resolved_config


class Config(StrictModel):
    predictions: str  # submission (LMSYS shape or WSDM `id, winner`) or predict's probabilities.parquet
    answers: str  # csv / parquet with the truth (synth's test_answers, or any file with id + label columns)
    output_dir: str
    # auto: 3 classes when any answer is a tie or any prediction puts mass on tie; 2class refuses both
    label_mode: Literal["auto", "3class", "2class"] = "auto"
    n_bins: int = Field(10, ge=2, le=100)


def run(config: Config) -> dict:
    from arena_dist.artefacts import write_artefact
    from arena_dist.evaluate.report import evaluate_files, format_table, write_report
    from arena_dist.io import claim_output_dir

    claim_output_dir(config.output_dir, "output_dir")

    num_classes = {"auto": None, "3class": 3, "2class": 2}[config.label_mode]
    summary = evaluate_files(config.predictions, config.answers, n_bins=config.n_bins, num_classes=num_classes)
    written = write_report(summary, config.output_dir)
    save_resolved_config(config, config.output_dir)
    ll = "-" if summary["log_loss"] is None else f"{summary['log_loss']:.4f}"
    line = f"evaluate: n={summary['n']} log_loss={ll} accuracy={summary['accuracy']:.4f}"
    if summary.get("bayes_log_loss") is not None:
        share = summary.get("share_of_achievable_gain")
        line += (f" (bayes {summary['bayes_log_loss']:.4f}, share of achievable gain "
                 f"{'-' if share is None else format(share, '.3f')})")
    print(line)
    print(format_table(summary["by_language"], "language"))
    print(format_table(summary["by_source"], "source"))
    print("evaluate: wrote " + ", ".join(str(p) for p in written.values()))
    metrics = {key: summary.get(key) for key in ("log_loss", "accuracy", "bayes_log_loss", "share_of_achievable_gain",
                                                 "ece_top_label")}
    write_artefact(config.output_dir, "evaluate", config,
                   inputs={"predictions": config.predictions, "answers": config.answers}, outputs=written,
                   rows=summary["n"], metrics=metrics,
                   headline="log_loss" if summary["log_loss"] is not None else "accuracy")
    return {"n": summary["n"], **metrics, "outputs": {k: str(v) for k, v in written.items()}}
