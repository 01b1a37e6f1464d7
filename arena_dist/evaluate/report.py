"""Load a predictions file and an answers file, join them by id, compute the metrics, write tables and a PNG.

Predictions: the LMSYS submission shape (`id, winner_model_a, winner_model_b, winner_tie`, csv or parquet; predict
also writes this shape as `probabilities.parquet` for every competition), or a WSDM submission (`id, winner`: hard
predictions, so accuracy only). Probabilities are checked as the competition checks them (finite, in [0, 1], each
row summing to 1 within 1e-6), never repaired: a broken prediction must be seen, not scored.
Answers: one of `winner_model_a/winner_model_b/winner_tie` one-hot columns (LMSYS, each exactly 0 or 1, one 1 per
row), `winner` in {model_a, model_b, tie} (WSDM), or `label` (0/1/2, a canonical record's label); optional `language`,
`source`, and the true probabilities `p_a, p_b[, p_tie]` the synthetic generator writes (then the Bayes log loss of
the same rows and the share of the achievable gain the predictions capture are reported too). The source of a row is
its `source` column, else the prefix of a canonical id ("<source>/<id>"), else "all".
Rows are counted from 1 after a csv header. Every refusal is one InputError naming the file, the column and the row.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from arena_dist.classes import from_p_a, to_classes
from arena_dist.errors import InputError
from arena_dist.evaluate import metrics
from arena_dist.predict.submission import LMSYS_COLUMNS, SUM_TOLERANCE, read_table

WINNER_TO_LABEL = {"model_a": 0, "model_b": 1, "tie": 2}
WINNER_COLUMNS = LMSYS_COLUMNS[1:]
TIE = 2


def read_rows(path: str | os.PathLike) -> pd.DataFrame:
    """read_table plus what every evaluate input needs: an `id` column and at least one row."""
    frame = read_table(path)
    if "id" not in frame.columns:
        raise InputError(f"{path}: column 'id' is missing (columns: {', '.join(map(str, frame.columns[:8]))})")
    if frame.empty:
        raise InputError(f"{path}: no rows")
    return frame.reset_index(drop=True)


def row_ref(frame: pd.DataFrame, index: int) -> str:
    return f"row {index + 1} (id {frame['id'].iloc[index]!r})"


def numbers(frame: pd.DataFrame, columns: list[str], path) -> np.ndarray:
    """The columns as float64 [N, len(columns)]; an empty or non-numeric cell is refused, naming column and row."""
    out = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            cell = frame[column].iloc[i]
            what = "is empty" if pd.isna(cell) else f"is not a number (got {cell!r})"
            raise InputError(f"{path}: column {column!r} {row_ref(frame, i)} {what}")
        out[:, j] = values.to_numpy(dtype=np.float64)
    return out


def check_probabilities(probs: np.ndarray, frame: pd.DataFrame, path, columns: list[str]) -> None:
    """The competition's rules for a row of probabilities: finite, each in [0, 1], summing to 1 within 1e-6."""
    rules = [(~np.isfinite(probs).all(axis=1), "are not all finite"),
             (((probs < 0) | (probs > 1)).any(axis=1), "must each lie in [0, 1]"),
             (np.abs(probs.sum(axis=1) - 1.0) > SUM_TOLERANCE, f"must sum to 1 (within {SUM_TOLERANCE:g})")]
    for bad, rule in rules:
        if bad.any():
            i = int(np.argmax(bad))
            shown = ", ".join(f"{c}={v:.6g}" for c, v in zip(columns, probs[i]))
            raise InputError(f"{path}: {row_ref(frame, i)}: probabilities {rule}, got {shown}")


def load_predictions(path: str | os.PathLike) -> tuple[pd.Series, np.ndarray | None, np.ndarray | None]:
    """-> (ids, probs [N, 3] or None, hard labels [N] or None)."""
    frame = read_rows(path)
    if set(WINNER_COLUMNS) <= set(frame.columns):
        probs = numbers(frame, WINNER_COLUMNS, path)
        check_probabilities(probs, frame, path, WINNER_COLUMNS)
        return frame["id"], probs, None
    if "winner" in frame.columns:
        return frame["id"], None, winners_to_labels(frame, path)
    raise InputError(f"{path}: need columns {WINNER_COLUMNS} (probabilities) or 'winner' "
                     f"(columns: {', '.join(map(str, frame.columns[:8]))})")


def winners_to_labels(frame: pd.DataFrame, path) -> np.ndarray:
    winners = frame["winner"]
    unknown = ~winners.isin(WINNER_TO_LABEL.keys()).to_numpy()
    if unknown.any():
        i = int(np.argmax(unknown))
        raise InputError(f"{path}: column 'winner' {row_ref(frame, i)} is {winners.iloc[i]!r}, not one of "
                         f"{', '.join(WINNER_TO_LABEL)}")
    return winners.map(WINNER_TO_LABEL).to_numpy(dtype=np.int64)


def answer_labels(frame: pd.DataFrame, path) -> np.ndarray:
    """0/1/2 per row from the one-hot winner columns, `winner` or `label`, each checked exactly: a half-filled
    one-hot row or a label 3 has no single answer, and argmax would quietly pick one."""
    if set(WINNER_COLUMNS) <= set(frame.columns):
        onehot = numbers(frame, WINNER_COLUMNS, path)
        bad = ~np.isin(onehot, (0.0, 1.0)).all(axis=1) | (onehot.sum(axis=1) != 1)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"{path}: {row_ref(frame, i)}: winner columns must be one-hot (each 0 or 1, one 1), "
                             f"got {', '.join(f'{v:g}' for v in onehot[i])}")
        return onehot.argmax(axis=1)
    if "winner" in frame.columns:
        return winners_to_labels(frame, path)
    if "label" in frame.columns:
        labels = numbers(frame, ["label"], path)[:, 0]
        bad = ~np.isin(labels, (0.0, 1.0, 2.0))
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"{path}: column 'label' {row_ref(frame, i)} is {labels[i]:g}, not 0, 1 or 2")
        return labels.astype(np.int64)
    raise InputError(f"{path}: need the answer in {WINNER_COLUMNS}, 'winner' or 'label' "
                     f"(columns: {', '.join(map(str, frame.columns[:8]))})")


def true_probabilities(frame: pd.DataFrame, path) -> pd.DataFrame | None:
    """p_a, p_b, p_tie when the answers carry them (p_a alone: WSDM, P(B) = 1 - P(A)), checked like predictions."""
    if "p_a" not in frame.columns:
        return None
    if "p_b" in frame.columns:
        columns = ["p_a", "p_b", "p_tie"] if "p_tie" in frame.columns else ["p_a", "p_b"]
        probs = numbers(frame, columns, path)
    else:  # WSDM answers carry P(A) alone
        columns, probs = ["p_a", "1 - p_a"], from_p_a(numbers(frame, ["p_a"], path))
    check_probabilities(probs, frame, path, columns)
    return pd.DataFrame(probs if len(columns) == 3 else to_classes(probs, 3), columns=["p_a", "p_b", "p_tie"])


def load_answers(path: str | os.PathLike) -> pd.DataFrame:
    """-> frame with id, label, language, source and (when present) p_true [p_a, p_b, p_tie] columns."""
    frame = read_rows(path)
    out = pd.DataFrame({"id": frame["id"].astype(str), "label": answer_labels(frame, path)})
    if out["id"].duplicated().any():
        raise InputError(f"{path}: duplicate id {out['id'][out['id'].duplicated()].iloc[0]!r}")
    out["language"] = frame["language"].fillna("unknown").astype(str) if "language" in frame.columns else "unknown"
    out["source"] = (frame["source"].fillna("unknown").astype(str) if "source" in frame.columns
                     else [i.split("/", 1)[0] if "/" in i else "all" for i in out["id"]])
    true = true_probabilities(frame, path)
    return out if true is None else pd.concat([out, true], axis=1)


def choose_num_classes(num_classes: int | None, labels: np.ndarray, probs: np.ndarray | None,
                       hard: np.ndarray | None, truth: pd.DataFrame, ids: np.ndarray, predictions, answers) -> int:
    """None (auto): 3 when any answer is a tie or any prediction puts mass on tie, else 2. An explicit 2 with ties
    on either side is refused: dropping the tie mass and renormalising scores something the predictions never said
    (and a row all on tie has no A/B reading at all)."""
    tie_answers = labels == TIE
    tie_predictions = probs[:, TIE] > SUM_TOLERANCE if probs is not None else hard == TIE
    if num_classes is None:
        return 3 if tie_answers.any() or tie_predictions.any() else 2
    if num_classes == 2 and tie_answers.any():
        raise InputError(f"{answers}: label_mode 2class, but {int(tie_answers.sum())} answer(s) are ties, e.g. id "
                         f"{truth['id'].iloc[int(np.argmax(tie_answers))]!r} (use label_mode 3class or auto)")
    if num_classes == 2 and tie_predictions.any():
        i = int(np.argmax(tie_predictions))
        what = f"winner_tie {probs[i, TIE]:.6g}" if probs is not None else "winner 'tie'"
        raise InputError(f"{predictions}: label_mode 2class, but {int(tie_predictions.sum())} prediction(s) put "
                         f"mass on tie, e.g. id {ids[i]!r} ({what}); 2-class predictions need winner_tie 0 "
                         "(use label_mode 3class or auto)")
    return num_classes


def align(ids: pd.Series, truth: pd.DataFrame, predictions) -> tuple[np.ndarray, int]:
    """-> (row of each answer in the predictions, number of predictions with no answer)."""
    pred_index = pd.Series(np.arange(len(ids)), index=ids.astype(str))
    if pred_index.index.duplicated().any():
        raise InputError(f"{predictions}: duplicate id {pred_index.index[pred_index.index.duplicated()][0]!r}")
    missing = ~truth["id"].isin(pred_index.index)
    if missing.any():
        raise InputError(f"{predictions}: {int(missing.sum())} answer id(s) have no prediction, e.g. "
                         f"{truth['id'][missing].iloc[0]!r}")
    extra = int((~pred_index.index.isin(truth["id"])).sum())
    return pred_index.loc[truth["id"]].to_numpy(), extra


def evaluate_files(predictions: str | os.PathLike, answers: str | os.PathLike, n_bins: int = 10,
                   num_classes: int | None = None) -> dict:
    """Join and score. `num_classes` None = 3 when any answer is a tie or predictions have a tie mass, else 2."""
    ids, probs, hard = load_predictions(predictions)
    truth = load_answers(answers)
    order, extra = align(ids, truth, predictions)
    labels = truth["label"].to_numpy()
    probs = None if probs is None else probs[order]
    hard = None if hard is None else hard[order]
    num_classes = choose_num_classes(num_classes, labels, probs, hard, truth, truth["id"].to_numpy(),
                                     predictions, answers)
    summary: dict = {"predictions": str(predictions), "answers": str(answers), "n": int(len(truth)),
                     "extra_predictions_ignored": extra, "num_classes": num_classes,
                     "label_counts": {str(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True))}}
    if probs is None:  # hard predictions: accuracy only (grouped as one-hot rows, whose log loss means nothing)
        summary.update(log_loss=None, accuracy=float((hard == labels).mean()))
        for column in ("language", "source"):
            summary[f"by_{column}"] = [{**row, "log_loss": None} for row in
                                       metrics.group_metrics(np.eye(3)[hard], labels, truth[column].to_numpy())]
        summary["calibration"] = None
        return summary
    task_probs = to_classes(probs, num_classes)
    summary["log_loss"] = metrics.log_loss(task_probs, labels)
    summary["accuracy"] = metrics.accuracy(task_probs, labels)
    summary["uniform_log_loss"] = math.log(num_classes)
    if "p_a" in truth.columns:
        true_probs = truth[["p_a", "p_b", "p_tie"]].to_numpy()
        no_mass = true_probs[:, :num_classes].sum(axis=1) <= 0
        if no_mass.any():
            raise InputError(f"{answers}: {row_ref(truth, int(np.argmax(no_mass)))}: true probabilities are all on "
                             f"tie, which a {num_classes}-class evaluation cannot score")
        true_probs = to_classes(true_probs, num_classes)
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


def write_metrics_json(path: Path, summary: dict) -> Path:
    """Strict JSON: a metric that cannot be computed is None (null); a NaN or Infinity that slips through is a bug
    and raises here (allow_nan=False) instead of writing bare `NaN`, which no JSON reader accepts."""
    from arena_dist.io import atomic_write_text

    return atomic_write_text(path, json.dumps(summary, indent=2, allow_nan=False) + "\n")


def write_report(summary: dict, output_dir: str | os.PathLike) -> dict[str, Path]:
    """metrics.json, by_language.csv, by_source.csv and calibration.png (when probabilities exist)."""
    from arena_dist.io import atomic_path

    output_dir = Path(output_dir)
    written = {"metrics": write_metrics_json(output_dir / "metrics.json", summary)}
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
