"""Competition submissions: build, check against the rules, write atomically. Pure numpy/pandas (no torch).

LMSYS: `id, winner_model_a, winner_model_b, winner_tie`, one row per test id, each value in [0, 1], rows summing to 1.
WSDM:  `id, winner` with winner in {model_a, model_b}, one row per test id.

Model probabilities are clipped to [0, 1] and renormalised before the check; NaN/inf is never repaired (a NaN means
a broken model or pipeline and must be seen), it is refused with a SubmissionError, as are missing, extra or duplicate
ids and a wrong row count. Nothing is written unless every rule holds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd

from arena_dist.errors import SubmissionError

Competition = Literal["lmsys", "wsdm"]
LMSYS_COLUMNS = ["id", "winner_model_a", "winner_model_b", "winner_tie"]
WSDM_COLUMNS = ["id", "winner"]
WSDM_WINNERS = ("model_a", "model_b")
SUM_TOLERANCE = 1e-6


def submission_columns(competition: Competition) -> list[str]:
    return LMSYS_COLUMNS if competition == "lmsys" else WSDM_COLUMNS


def clip_and_renormalise(probs: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and make each row sum to 1. NaN/inf and all-zero rows are refused, never patched."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise SubmissionError(f"probabilities must be a 2-D array (rows x classes), got shape {probs.shape}")
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise SubmissionError(f"{int(bad.sum())} row(s) of probabilities are NaN/inf (first row index {int(np.argmax(bad))})")
    clipped = np.clip(probs, 0.0, 1.0)
    sums = clipped.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise SubmissionError(f"row {int(np.argmax(sums[:, 0] <= 0))} has no positive probability")
    return clipped / sums


def build_submission(ids: Sequence, probs: np.ndarray, competition: Competition) -> pd.DataFrame:
    """ids + class probabilities (3 columns for LMSYS; 2 or 3 for WSDM, where a tie column is ignored) -> frame."""
    probs = clip_and_renormalise(probs)
    if len(ids) != len(probs):
        raise SubmissionError(f"{len(ids)} ids but {len(probs)} rows of probabilities")
    if competition == "lmsys":
        if probs.shape[1] != 3:
            raise SubmissionError(f"LMSYS needs 3 probabilities per row (A, B, tie), got {probs.shape[1]}")
        return pd.DataFrame({"id": list(ids), "winner_model_a": probs[:, 0], "winner_model_b": probs[:, 1],
                             "winner_tie": probs[:, 2]})
    if probs.shape[1] not in (2, 3):
        raise SubmissionError(f"WSDM needs 2 (A, B) or 3 probabilities per row, got {probs.shape[1]}")
    winner = np.where(probs[:, 0] >= probs[:, 1], WSDM_WINNERS[0], WSDM_WINNERS[1])
    return pd.DataFrame({"id": list(ids), "winner": winner})


def check_submission(frame: pd.DataFrame, test_ids: Sequence, competition: Competition) -> None:
    """Raise SubmissionError naming the first broken rule; return None when the submission is valid."""
    expected_columns = submission_columns(competition)
    if list(frame.columns) != expected_columns:
        raise SubmissionError(f"columns must be {expected_columns}, got {list(frame.columns)}")
    if len(frame) != len(test_ids):
        raise SubmissionError(f"submission has {len(frame)} rows but the test file has {len(test_ids)} ids")
    ids = frame["id"].astype(str)
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise SubmissionError(f"{len(duplicated)} duplicate id(s), first {duplicated.iloc[0]!r}")
    wanted = {str(i) for i in test_ids}
    missing = wanted - set(ids)
    if missing:
        raise SubmissionError(f"{len(missing)} test id(s) missing from the submission, e.g. {sorted(missing)[0]!r}")
    extra = set(ids) - wanted
    if extra:
        raise SubmissionError(f"{len(extra)} id(s) not in the test file, e.g. {sorted(extra)[0]!r}")
    if competition == "wsdm":
        bad = ~frame["winner"].isin(WSDM_WINNERS)
        if bad.any():
            raise SubmissionError(f"winner must be one of {WSDM_WINNERS}; row {int(np.argmax(bad.to_numpy()))} is "
                                  f"{frame['winner'][bad].iloc[0]!r}")
        return
    values = frame[expected_columns[1:]].to_numpy(dtype=np.float64)
    nan_rows = ~np.isfinite(values).all(axis=1)
    if nan_rows.any():
        raise SubmissionError(f"{int(nan_rows.sum())} row(s) contain NaN/inf, first id {ids.iloc[int(np.argmax(nan_rows))]!r}")
    out_of_range = ((values < 0) | (values > 1)).any(axis=1)
    if out_of_range.any():
        raise SubmissionError(f"values must lie in [0, 1]; id {ids.iloc[int(np.argmax(out_of_range))]!r} does not")
    sums = values.sum(axis=1)
    off = np.abs(sums - 1.0) > SUM_TOLERANCE
    if off.any():
        first = int(np.argmax(off))
        raise SubmissionError(f"rows must sum to 1; id {ids.iloc[first]!r} sums to {sums[first]:.6f}")


def write_submission(path: str | os.PathLike, frame: pd.DataFrame, test_ids: Sequence, competition: Competition) -> Path:
    """Check, then write atomically (csv, or parquet when the path ends in .parquet). Nothing is written on error."""
    from arena_dist.io import atomic_path

    check_submission(frame, test_ids, competition)
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False, float_format="%.8f")
    return path


def read_table(path: str | os.PathLike, dtype_id_str: bool = True) -> pd.DataFrame:
    """A csv or parquet file as a DataFrame with `id` as strings (LMSYS ids are ints in csv, WSDM ids strings).

    Every way a file can fail to read (missing, a directory, zero bytes, random bytes, truncated, the other format
    under the extension) is an InputError naming the file: these files come from users and other tools, and a
    pandas or pyarrow traceback says nothing about which one was wrong. An empty `id` is refused here too, before
    the conversion to strings would turn it into the id "nan".
    """
    from arena_dist.errors import InputError

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    frame = _read_parquet(path) if path.suffix == ".parquet" else _read_csv(path, dtype_id_str)
    if dtype_id_str and "id" in frame.columns:
        empty = frame["id"].isna().to_numpy()
        if empty.any():
            raise InputError(f"{path}: row {int(np.argmax(empty)) + 1}: empty id")
        frame["id"] = frame["id"].astype(str)
    return frame


def _unreadable(path: Path, kind: str, exc: BaseException):
    from arena_dist.errors import InputError

    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return InputError(f"{path}: cannot read as {kind} ({reason})")


def _read_csv(path: Path, dtype_id_str: bool) -> pd.DataFrame:
    from arena_dist.errors import InputError

    try:
        return pd.read_csv(path, dtype={"id": str} if dtype_id_str else None)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty file (no header row)") from None
    except (ValueError, OSError, MemoryError) as exc:  # ParserError and UnicodeDecodeError are ValueErrors
        raise _unreadable(path, "csv", exc) from None


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow as pa

    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, ValueError, OSError, TypeError, MemoryError) as exc:
        raise _unreadable(path, "parquet", exc) from None
