"""Render the collected run data as PNG plots and one self-contained HTML page (images beside it)."""

from __future__ import annotations

import html
import shutil
from pathlib import Path

from arena_dist.report import collect


def plot_training(stage: str, series: dict[str, list[tuple[int, float]]], target: Path) -> Path | None:
    """Loss-like series (train and eval) of one stage on one figure; None when the stage logged no loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tags = [tag for tag in series if "loss" in tag.lower() or tag.lower().endswith("kl")]
    if not tags:
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    # Eval curves last and bold: per-step train losses are noisy and would hide them.
    for tag in sorted(tags, key=lambda t: "eval" in t.lower()):
        steps, values = zip(*series[tag])
        if len(steps) >= 50:
            window = max(5, len(steps) // 50)
            totals = np.cumsum(np.insert(np.asarray(values, dtype=float), 0, 0.0))
            index = np.arange(1, len(values) + 1)
            start = np.maximum(0, index - window)
            smooth = (totals[index] - totals[start]) / (index - start)  # trailing mean, shorter at the start
            line, = axis.plot(steps, values, "-", alpha=0.2, linewidth=0.8)
            axis.plot(steps, smooth, "-", color=line.get_color(), label=f"{tag} (moving mean of {window})")
        else:
            axis.plot(steps, values, "o-", markersize=4, linewidth=2, label=tag)
    axis.set(xlabel="step", ylabel="loss", title=f"{stage}: training and evaluation loss")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def _evaluation_section(evaluation: dict, images: Path, index: int) -> str:
    metrics = evaluation["metrics"]
    parts = [f"<h3>{html.escape(str(evaluation['path'].parent.name))}</h3>"]
    headline = [["log loss", metrics.get("log_loss")], ["accuracy", metrics.get("accuracy")],
                ["rows", metrics.get("n")]]
    if metrics.get("bayes_log_loss") is not None:
        headline += [["Bayes log loss (optimum)", metrics["bayes_log_loss"]],
                     ["share of achievable gain", metrics.get("share_of_achievable_gain")]]
    if metrics.get("ece_top_label") is not None:
        headline.append(["expected calibration error", metrics["ece_top_label"]])
    parts.append(_table(headline, ["metric", "value"]))
    for column in ("language", "source"):
        rows = metrics.get(f"by_{column}") or []
        if rows:
            parts.append(f"<h4>by {column}</h4>")
            parts.append(_table([[r.get("group"), r.get("n"), r.get("log_loss"), r.get("accuracy")] for r in rows],
                                [column, "rows", "log loss", "accuracy"]))
    if evaluation["calibration"] is not None:
        copy = images / f"calibration_{index}.png"
        shutil.copyfile(evaluation["calibration"], copy)
        parts.append(f'<h4>calibration</h4><img src="{copy.parent.name}/{copy.name}" alt="calibration diagram">')
    return "\n".join(parts)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}img{max-width:100%}pre{background:#f7f7f7;padding:8px;
overflow-x:auto;font-size:12px}h2{border-bottom:1px solid #ddd;padding-bottom:3px}"""


def stage_rows(records, run_dir: Path) -> list[list[str]]:
    """One row per stage record: where, which stage, status (or its error), time, rows and its headline metric."""
    rows = []
    for directory, record in records:
        where = directory.relative_to(run_dir).as_posix() if directory != run_dir else "."
        status = record.status if record.error is None else f"{record.status}: {record.error}"
        seconds = "" if record.seconds is None else f"{record.seconds:.1f} s"
        rows.append([where, record.stage, status, seconds, record.rows_text(), record.headline_text()])
    return rows


def render_report(run_dir: Path, output_dir: Path) -> dict:
    """Write output_dir/index.html and its PNGs; returns what was included."""
    images = output_dir / "img"
    images.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    included: dict[str, int] = {}

    def section(key: str | None, items, title: str, body) -> None:
        """A section of `body(items)` under `title` when there are items; `included[key]` counts them."""
        if key is not None:
            included[key] = len(items)
        if items:
            sections.append(f"<h2>{title}</h2>" + body(items))

    records = collect.stage_records(run_dir, exclude=output_dir)
    included["stages"] = len(records)
    section(None, collect.bayes_reference(records), "Synthetic benchmark optimum", lambda bayes: _table(
        [["Bayes log loss", bayes.get("bayes_log_loss")], ["Bayes accuracy", bayes.get("bayes_accuracy")],
         ["uniform log loss (ln 3)", bayes.get("ln3")], ["achievable gain", bayes.get("achievable_gain")],
         ["tie rate", bayes.get("tie_rate")]], ["reference", "value"]))
    section(None, records, "Stages", lambda records: _table(
        stage_rows(records, run_dir), ["directory", "stage", "status", "time", "rows", "headline"]))

    plots = []
    for stage, series in collect.training_logs(run_dir).items():
        plot = plot_training(stage, series, images / f"training_{stage}.png")
        if plot is not None:
            plots.append(f'<h3>{html.escape(stage)}</h3><img src="img/{plot.name}" alt="{html.escape(stage)} loss">')
    section("training_plots", plots, "Training", "\n".join)
    section("evaluations", collect.evaluations(records), "Evaluation", lambda evaluations: "\n".join(
        _evaluation_section(ev, images, i) for i, ev in enumerate(evaluations)))
    section("label_stats", collect.label_stats(records), "Pseudo-labelling throughput", lambda label: _table(
        [[str(item["path"].relative_to(run_dir)), key, value]
         for item in label for key, value in item["stats"].items()], ["file", "metric", "value"]))
    section("configs", collect.resolved_configs(run_dir), "Resolved configs", lambda configs: "\n".join(
        f"<details><summary>{html.escape(str(path.relative_to(run_dir)))}</summary>"
        f"<pre>{html.escape(text)}</pre></details>" for path, text in configs))

    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>arena_dist run {html.escape(run_dir.name)}"
            f"</title><style>{STYLE}</style></head><body><h1>arena_dist run: {html.escape(str(run_dir))}</h1>"
            + "\n".join(sections) + "</body></html>\n")
    from arena_dist.io import atomic_write_text

    atomic_write_text(output_dir / "index.html", page)
    return included
