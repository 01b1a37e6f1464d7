import numpy as np
import pandas as pd
import pytest

from arena_dist.errors import SubmissionError
from arena_dist.predict.submission import (
    build_submission, check_submission, clip_and_renormalise, read_table, write_submission,
)

IDS = ["101", "102", "103"]


def good_lmsys():
    return build_submission(IDS, np.array([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]), "lmsys")


def test_good_submission_passes_and_round_trips(tmp_path):
    frame = good_lmsys()
    check_submission(frame, IDS, "lmsys")
    path = write_submission(tmp_path / "submission.csv", frame, IDS, "lmsys")
    back = read_table(path)
    assert list(back.columns) == ["id", "winner_model_a", "winner_model_b", "winner_tie"]
    assert list(back["id"]) == IDS
    check_submission(back, IDS, "lmsys")  # still valid after the csv round trip
    assert np.allclose(back.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-6)


def test_clip_and_renormalise_repairs_range_but_refuses_nan():
    fixed = clip_and_renormalise(np.array([[1.2, -0.1, 0.3], [0.2, 0.2, 0.2]]))
    assert np.allclose(fixed.sum(axis=1), 1.0) and fixed.min() >= 0 and fixed.max() <= 1
    assert np.allclose(fixed[0], [1 / 1.3, 0.0, 0.3 / 1.3])
    with pytest.raises(SubmissionError, match="NaN"):
        clip_and_renormalise(np.array([[0.2, np.nan, 0.3]]))
    with pytest.raises(SubmissionError, match="no positive"):
        clip_and_renormalise(np.array([[0.0, -1.0, 0.0]]))


def test_wrong_row_count_is_refused(tmp_path):
    frame = good_lmsys().iloc[:2]
    with pytest.raises(SubmissionError, match="2 rows but the test file has 3"):
        write_submission(tmp_path / "s.csv", frame, IDS, "lmsys")
    assert not (tmp_path / "s.csv").exists()


def test_nan_is_refused():
    frame = good_lmsys()
    frame.loc[1, "winner_tie"] = np.nan
    with pytest.raises(SubmissionError, match="NaN.*'102'"):
        check_submission(frame, IDS, "lmsys")


def test_duplicate_ids_are_refused():
    frame = good_lmsys()
    frame.loc[2, "id"] = "101"
    with pytest.raises(SubmissionError, match="duplicate id.*'101'"):
        check_submission(frame, IDS, "lmsys")


def test_missing_and_extra_ids_range_and_sums_are_refused():
    frame = good_lmsys()
    frame.loc[2, "id"] = "999"
    with pytest.raises(SubmissionError, match="missing.*'103'"):
        check_submission(frame, IDS, "lmsys")
    frame = good_lmsys()
    frame.loc[0, "winner_model_a"] = 0.9
    with pytest.raises(SubmissionError, match="sum to 1.*'101'"):
        check_submission(frame, IDS, "lmsys")
    frame = good_lmsys()
    frame.loc[0, ["winner_model_a", "winner_model_b"]] = [1.2, -0.4]
    with pytest.raises(SubmissionError, match=r"\[0, 1\]"):
        check_submission(frame, IDS, "lmsys")
    with pytest.raises(SubmissionError, match="columns"):
        check_submission(good_lmsys().drop(columns="winner_tie"), IDS, "lmsys")


def test_wsdm_submission(tmp_path):
    frame = build_submission(IDS, np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]]), "wsdm")
    assert list(frame["winner"]) == ["model_a", "model_b", "model_a"]
    write_submission(tmp_path / "submission.csv", frame, IDS, "wsdm")
    frame.loc[0, "winner"] = "tie"
    with pytest.raises(SubmissionError, match="winner must be one of"):
        check_submission(frame, IDS, "wsdm")


@pytest.mark.parametrize("name, data, message", [
    ("zero.csv", b"", "empty file"),
    ("zero.parquet", b"", "cannot read as parquet"),
    ("noise.csv", bytes(range(128, 256)) * 8, "cannot read as csv"),
    ("noise.parquet", bytes(range(256)) * 8, "cannot read as parquet"),
    ("quote.csv", b'id,winner\n"1,model_a\n', "cannot read as csv"),
    ("empty_id.csv", b"id,winner\n1,model_a\n,model_b\n", "row 2: empty id"),
])
def test_read_table_turns_unreadable_files_into_one_line(name, data, message, tmp_path):
    from arena_dist.errors import InputError

    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(InputError) as err:
        read_table(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


def test_read_table_truncated_parquet_and_directory(tmp_path):
    from arena_dist.errors import InputError

    good = write_submission(tmp_path / "s.parquet", good_lmsys(), IDS, "lmsys").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(good[: len(good) - 20])
    with pytest.raises(InputError, match="cut.parquet: cannot read as parquet"):
        read_table(tmp_path / "cut.parquet")
    (tmp_path / "dir.parquet").mkdir()
    with pytest.raises(InputError, match="dir.parquet: not a file"):
        read_table(tmp_path / "dir.parquet")
    assert list(read_table(tmp_path / "s.parquet")["id"]) == IDS
