"""predict's test-file reader: an empty, corrupt, truncated or wrong-format test file is one line naming the file."""

import pandas as pd
import pytest

from arena_dist.cli import main
from arena_dist.errors import InputError
from arena_dist.predict.testfile import read_test_file

LMSYS_HEADER = b"id,prompt,response_a,response_b\n"
LMSYS_ROW = b'1,"[""hi""]","[""a""]","[""b""]"\n'


def wsdm_bytes(tmp_path) -> bytes:
    pd.DataFrame({"id": ["a", "b"], "prompt": ["p", "q"], "response_a": ["x", "y"],
                  "response_b": ["z", "w"]}).to_parquet(tmp_path / "good.parquet")
    return (tmp_path / "good.parquet").read_bytes()


def bad_test_files(tmp_path) -> dict:
    good = wsdm_bytes(tmp_path)
    return {
        "zero.csv": b"", "zero.parquet": b"", "noise.csv": bytes(range(128, 256)) * 16,
        "noise.parquet": bytes(range(256)) * 16, "truncated.parquet": good[: len(good) // 2],
        "parquet_named.csv": good, "header_only.csv": LMSYS_HEADER, "wrong_columns.csv": b"id,text\n1,hello\n",
        "truncated.csv": LMSYS_HEADER + LMSYS_ROW + b'2,"[""hi""]","[""a',
        "nul.csv": LMSYS_HEADER + LMSYS_ROW.replace(b"hi", b"h\0i"),
    }


@pytest.mark.parametrize("name", [
    "zero.csv", "zero.parquet", "noise.csv", "noise.parquet", "truncated.parquet", "parquet_named.csv",
    "header_only.csv", "wrong_columns.csv", "truncated.csv", "nul.csv"])
def test_unusable_test_files_are_one_line_input_errors(name, tmp_path):
    files = bad_test_files(tmp_path)
    path = tmp_path / name
    path.write_bytes(files[name])
    with pytest.raises(InputError) as err:
        read_test_file(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_predict_cli_exits_2_on_a_corrupt_test_file(tmp_path, capsys):
    path = tmp_path / "test.parquet"
    path.write_bytes(bytes(range(256)) * 16)
    assert main(["predict", "--set", f"test_file={path}", "--set", f"output_dir={tmp_path / 'out'}",
                 "--set", f"models=[{{export_path: '{tmp_path / 'no_model'}'}}]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"arena-dist predict: {path}: ")
