"""Load a predictions file and an answers file, join them by id, compute the metrics, write tables and a PNG.

Predictions: the LMSYS submission shape (`id, winner_model_a, winner_model_b, winner_tie`, csv or parquet; predict
also writes this shape as `probabilities.parquet` for every competition), or a WSDM submission (`id, winner`: hard
predictions, so accuracy only).
Answers: one of `winner_model_a/winner_model_b/winner_tie` one-hot columns (LMSYS), `winner` in
{model_a, model_b, tie} (WSDM), or `label` (0/1/2, a canonical record's label); optional `language`, `source`, and
the true probabilities `p_a, p_b[, p_tie]` the synthetic generator writes (then the Bayes log loss of the same rows
and the share of the achievable gain the predictions capture are reported too). The source of a row is its `source`
column, else the prefix of a canonical id ("<source>/<id>"), else "all".
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from arena_dist.errors import InputError
from arena_dist.evaluate import metrics
from arena_dist.predict.submission import LMSYS_COLUMNS, read_table

WINNER_TO_LABEL = {"model_a": 0, "model_b": 1, "tie": 2}


def load_predictions(path: str | os.PathLike) -> tuple[pd.Series, np.ndarray | None, np.ndarray | None]:
    """-> (ids, probs [N, 3] or None, hard labels [N] or None)."""
    frame = read_table(path)
    if "id" not in frame.columns:
        raise InputError(f"{path}: column 'id' is missing")
    if set(LMSYS_COLUMNS[1:]) <= set(frame.columns):
        probs = frame[LMSYS_COLUMNS[1:]].to_numpy(dtype=np.float64)
        bad = ~np.isfinite(probs).all(axis=1) | (probs.sum(axis=1) <= 0)
        if bad.any():
            raise InputError(f"{path}: row {int(np.argmax(bad))} (id {frame['id'].iloc[int(np.argmax(bad))]!r}) "
                             "has NaN or no positive probability")
        return frame["id"], probs, None
    if "winner" in frame.columns:
        return frame["id"], None, winners_to_labels(frame["winner"], path)
    raise InputError(f"{path}: need columns {LMSYS_COLUMNS[1:]} (probabilities) or 'winner'")


def winners_to_labels(winners: pd.Series, path) -> np.ndarray:
    unknown = ~winners.isin(WINNER_TO_LABEL.keys())
    if unknown.any():
        raise InputError(f"{path}: column 'winner' row {int(np.argmax(unknown.to_numpy()))} has unknown value "
                         f"{winners[unknown].iloc[0]!r}")
    return winners.map(WINNER_TO_LABEL).to_numpy(dtype=np.int64)


def load_answers(path: str | os.PathLike) -> pd.DataFrame:
    """-> frame with id, label, language, source and (when present) p_true [p_a, p_b, p_tie] columns."""
    frame = read_table(path)
    if "id" not in frame.columns:
        raise InputError(f"{path}: column 'id' is missing")
    if set(LMSYS_COLUMNS[1:]) <= set(frame.columns):
        onehot = frame[LMSYS_COLUMNS[1:]].to_numpy(dtype=np.float64)
        bad = onehot.sum(axis=1) != 1
        if bad.any():
            raise InputError(f"{path}: row {int(np.argmax(bad))}: winner columns are not one-hot")
        labels = onehot.argmax(axis=1)
    elif "winner" in frame.columns:
        labels = winners_to_labels(frame["winner"], path)
    elif "label" in frame.columns:
        if frame["label"].isna().any():
            raise InputError(f"{path}: column 'label' row {int(np.argmax(frame['label'].isna().to_numpy()))} is empty")
        labels = frame["label"].to_numpy(dtype=np.int64)
    else:
        raise InputError(f"{path}: need the answer in {LMSYS_COLUMNS[1:]}, 'winner' or 'label'")
    out = pd.DataFrame({"id": frame["id"].astype(str), "label": labels})
    if out["id"].duplicated().any():
        raise InputError(f"{path}: duplicate id {out['id'][out['id'].duplicated()].iloc[0]!r}")
    out["language"] = frame["language"].fillna("unknown").astype(str) if "language" in frame.columns else "unknown"
    if "source" in frame.columns:
        out["source"] = frame["source"].astype(str)
    else:
        out["source"] = [i.split("/", 1)[0] if "/" in i else "all" for i in out["id"]]
    if {"p_a", "p_b"} <= set(frame.columns):
        out["p_a"] = frame["p_a"].astype(float)
        out["p_b"] = frame["p_b"].astype(float)
        out["p_tie"] = frame["p_tie"].astype(float) if "p_tie" in frame.columns else 0.0
    elif "p_a" in frame.columns:  # WSDM answers carry P(A) alone
        out["p_a"] = frame["p_a"].astype(float)
        out["p_b"] = 1.0 - out["p_a"]
        out["p_tie"] = 0.0
    return out


def evaluate_files(predictions: str | os.PathLike, answers: str | os.PathLike, n_bins: int = 10,
                   num_classes: int | None = None) -> dict:
    """Join and score. `num_classes` None = 3 when any answer is a tie or predictions have a tie mass, else 2."""
    ids, probs, hard = load_predictions(predictions)
    truth = load_answers(answers)
    pred_index = pd.Series(np.arange(len(ids)), index=ids.astype(str))
    if pred_index.index.duplicated().any():
        raise InputError(f"{predictions}: duplicate id {pred_index.index[pred_index.index.duplicated()][0]!r}")
    missing = ~truth["id"].isin(pred_index.index)
    if missing.any():
        raise InputError(f"{predictions}: {int(missing.sum())} answer id(s) have no prediction, e.g. "
                         f"{truth['id'][missing].iloc[0]!r}")
    extra = int((~pred_index.index.isin(truth["id"])).sum())
    order = pred_index.loc[truth["id"]].to_numpy()
    labels = truth["label"].to_numpy()
    if num_classes is None:
        num_classes = 3 if (labels == 2).any() else 2
    summary: dict = {"predictions": str(predictions), "answers": str(answers), "n": int(len(truth)),
                     "extra_predictions_ignored": extra, "num_classes": num_classes,
                     "label_counts": {str(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True))}}
    if probs is None:
        correct = (hard[order] == labels)
        summary.update(log_loss=None, accuracy=float(correct.mean()))
        frame = truth.assign(correct=correct)
        for column in ("language", "source"):
            summary[f"by_{column}"] = [
                {"group": g, "n": int(len(part)), "log_loss": None, "accuracy": float(part["correct"].mean())}
                for g, part in sorted(frame.groupby(column), key=lambda kv: (-len(kv[1]), kv[0]))]
        summary["calibration"] = None
        return summary
    task_probs = metrics.restrict_to_classes(probs[order], num_classes)
    summary["log_loss"] = metrics.log_loss(task_probs, labels)
    summary["accuracy"] = metrics.accuracy(task_probs, labels)
    summary["uniform_log_loss"] = math.log(num_classes)
    if "p_a" in truth.columns:
        true_probs = metrics.restrict_to_classes(truth[["p_a", "p_b", "p_tie"]].to_numpy(), num_classes)
        bayes = metrics.log_loss(true_probs, labels)
        summary["bayes_log_loss"] = bayes
        summary["bayes_accuracy"] = metrics.accuracy(true_probs, labels)
        achievable = math.log(num_classes) - bayes
        summary["share_of_achievable_gain"] = (
            (math.log(num_classes) - summary["log_loss"]) / achievable if achievable > 0 else None)
    summary["by_language"] = metrics.group_metrics(task_probs, labels, truth["language"].to_numpy())
    summary["by_source"] = metrics.group_metrics(task_probs, labels, truth["source"].to_numpy())
    top = metrics.top_label_calibration(task_probs, labels, n_bins)
    per_class = {str(c): metrics.class_calibration(task_probs, labels, c, n_bins) for c in range(num_classes)}
    summary["ece_top_label"] = metrics.expected_calibration_error(top)
    summary["calibration"] = {"top_label": top, "per_class": per_class}
    return summary


def plot_calibration(summary: dict, path: str | os.PathLike) -> Path:
    """Reliability diagram (per class + top label) and the confidence histogram, PNG via matplotlib's Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from arena_dist.io import atomic_path

    names = ["model_a", "model_b", "tie"]
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(10, 4.5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    for cls, bins in summary["calibration"]["per_class"].items():
        points = [(b["mean_predicted"], b["observed"]) for b in bins if b["n"]]
        if points:
            ax.plot(*zip(*points), marker="o", label=f"P({names[int(cls)]})")
    top = [(b["mean_predicted"], b["observed"]) for b in summary["calibration"]["top_label"] if b["n"]]
    if top:
        ax.plot(*zip(*top), marker="s", color="black", label="top label")
    ax.set(xlabel="predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1),
           title=f"log loss {summary['log_loss']:.4f}, acc {summary['accuracy']:.3f}, ECE {summary['ece_top_label']:.3f}")
    ax.legend(loc="upper left", fontsize=8)
    top_bins = summary["calibration"]["top_label"]
    hist.bar([(b["lo"] + b["hi"]) / 2 for b in top_bins], [b["n"] for b in top_bins],
             width=1 / len(top_bins) * 0.9)
    hist.set(xlabel="confidence of the predicted class", ylabel="rows", xlim=(0, 1), title=f"n = {summary['n']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def write_report(summary: dict, output_dir: str | os.PathLike) -> dict[str, Path]:
    """metrics.json, by_language.csv, by_source.csv and calibration.png (when probabilities exist)."""
    from arena_dist.io import atomic_path, atomic_write_json

    output_dir = Path(output_dir)
    written = {"metrics": atomic_write_json(output_dir / "metrics.json", summary)}
    for column in ("language", "source"):
        target = output_dir / f"by_{column}.csv"
        with atomic_path(target) as tmp:
            pd.DataFrame(summary[f"by_{column}"], columns=["group", "n", "log_loss", "accuracy"]).rename(
                columns={"group": column}).to_csv(tmp, index=False, float_format="%.6f")
        written[f"by_{column}"] = target
    if summary.get("calibration"):
        written["calibration"] = plot_calibration(summary, output_dir / "calibration.png")
    return written


def format_table(rows: list[dict], title: str) -> str:
    lines = [f"{title:<16} {'n':>7} {'log_loss':>9} {'accuracy':>9}"]
    for row in rows:
        ll = "-" if row["log_loss"] is None else f"{row['log_loss']:.4f}"
        lines.append(f"{row['group'][:16]:<16} {row['n']:>7} {ll:>9} {row['accuracy']:>9.4f}")
    return "\n".join(lines)
