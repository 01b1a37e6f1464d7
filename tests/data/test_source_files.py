"""Sources are what they claim: gzip, Git LFS pointers, binary data, byte order marks and encodings are found by
sniffing the bytes before parsing (arena_dist.data.sniff), and every refusal is one InputError line naming the file."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prepare_fixtures import LMSYS_HEADER, good_lmsys_rows, lmsys_row, pool_rows, write_csv, write_jsonl, write_parquet

from arena_dist.cli import main
from arena_dist.config import load_config
from arena_dist.data import sniff
from arena_dist.data.sources import SourceConfig, open_source
from arena_dist.errors import ConfigError, InputError
from arena_dist.stages import prepare

LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n"
)


def records(kind, path, **extra):
    reader = open_source(SourceConfig(name="src", kind=kind, path=path, **extra))
    return reader, list(reader)


def one_line_error(kind, path, **extra) -> str:
    with pytest.raises(InputError) as err:
        records(kind, path, **extra)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message


def lmsys_text(rows) -> str:
    """An LMSYS csv as text, with real (not \\u-escaped) non-ASCII characters in the JSON cells."""
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(LMSYS_HEADER)
    for row_id, prompt, a, b in rows:
        cells = [json.dumps(value, ensure_ascii=False) for value in (prompt, a, b)]
        writer.writerow([row_id, "m1", "m2", *cells, 1, 0, 0])
    return out.getvalue()


LATIN_ROWS = [(1, ["café crème"], ["oui"], ["non"]), (2, ["naïve"], ["señor"], ["Ørsted"])]


# ------------------------------------------------------------------------------------------------------------ gzip
def test_gzip_csv_and_jsonl_read_like_the_plain_files(tmp_path):
    plain = write_csv(tmp_path / "train.csv", good_lmsys_rows(12))
    packed = tmp_path / "train.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert [o.record for o in records("lmsys_csv", packed)[1]] == [o.record for o in records("lmsys_csv", plain)[1]]
    pool = write_jsonl(tmp_path / "pool.jsonl", pool_rows(9))
    pool_gz = tmp_path / "pool.jsonl.gz"  # the pool picks its reader by the suffix under .gz
    pool_gz.write_bytes(gzip.compress(pool.read_bytes()))
    assert [o.record for o in records("pool", pool_gz)[1]] == [o.record for o in records("pool", pool)[1]]
    pairs = tmp_path / "pairs.jsonl"  # gzip is found by its magic bytes, whatever the name
    pairs.write_bytes(gzip.compress(b'{"prompt": "p", "chosen": "c", "rejected": "r"}\n'))
    assert records("pairwise_jsonl", pairs)[1][0].record["response_a"] == ["c"]


def test_gzip_around_parquet_and_damaged_gzip_are_refused(tmp_path):
    table = write_parquet(tmp_path / "t.parquet", pool_rows(4)).read_bytes()
    (tmp_path / "pool.parquet.gz").write_bytes(gzip.compress(table))
    message = one_line_error("pool", tmp_path / "pool.parquet.gz")
    assert message.endswith("gzip-compressed, not a parquet file (parquet compresses itself: gunzip it)")
    (tmp_path / "train.parquet").write_bytes(gzip.compress(table))
    assert "gzip-compressed, not a parquet file" in one_line_error("wsdm_parquet", tmp_path / "train.parquet")
    (tmp_path / "train.csv").write_bytes(gzip.compress(table))  # parquet inside a gzip, given as csv
    assert one_line_error("lmsys_csv", tmp_path / "train.csv").endswith(
        "gzip-compressed file holding a parquet file, not csv"
    )
    whole = gzip.compress(write_csv(tmp_path / "ok.csv", good_lmsys_rows(200)).read_bytes())
    (tmp_path / "cut.csv.gz").write_bytes(whole[: len(whole) // 2])
    assert "damaged gzip file (Compressed file ended" in one_line_error("lmsys_csv", tmp_path / "cut.csv.gz")


# ------------------------------------------------------------------------------------------------ LFS and binary
@pytest.mark.parametrize("kind,name", [("lmsys_csv", "train.csv"), ("wsdm_parquet", "train.parquet"),
                                       ("pairwise_jsonl", "hh.jsonl"), ("pool", "pool.parquet")])
def test_git_lfs_pointers_say_to_fetch_the_file(tmp_path, kind, name):
    (tmp_path / name).write_text(LFS_POINTER)
    assert one_line_error(kind, tmp_path / name).endswith(
        ": a Git LFS pointer, not the data: fetch the real file (git lfs pull)"
    )


def test_binary_data_as_a_text_kind_names_what_it_looks_like(tmp_path):
    write_parquet(tmp_path / "train.csv", pool_rows(3))
    assert one_line_error("lmsys_csv", tmp_path / "train.csv").endswith(": a parquet file, not csv")
    (tmp_path / "pool.jsonl").write_bytes(b"PK\x03\x04" + bytes(100))
    assert "a zip archive (unzip it first), not JSONL" in one_line_error("pool", tmp_path / "pool.jsonl")
    (tmp_path / "hh.jsonl").write_bytes(b'{"chosen": "a", "rejected": "b"}\n\x00\x01\x02\x03garbage\n')
    assert "NUL bytes in the first 64 KiB: binary data, not JSONL" in one_line_error("pairwise_jsonl",
                                                                                    tmp_path / "hh.jsonl")
    (tmp_path / "le.csv").write_bytes(lmsys_text(LATIN_ROWS).encode("utf-16-le"))  # UTF-16 without a BOM
    assert "UTF-16 text without a byte order mark (set encoding: utf-16-le)" in one_line_error(
        "lmsys_csv", tmp_path / "le.csv"
    )


def test_parquet_sources_need_the_par1_magic_at_both_ends(tmp_path):
    write_jsonl(tmp_path / "pool.parquet", pool_rows(3))
    assert "not a parquet file (no PAR1 magic; it looks like text (csv or JSONL?))" in one_line_error(
        "pool", tmp_path / "pool.parquet"
    )
    (tmp_path / "empty.parquet").write_bytes(b"")
    message = one_line_error("wsdm_parquet", tmp_path / "empty.parquet")
    assert message.endswith(": empty file (0 bytes), not a parquet file")
    data = write_parquet(tmp_path / "full.parquet", pool_rows(50)).read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) - 100])
    assert one_line_error("pool", tmp_path / "cut.parquet").endswith(
        "truncated or damaged parquet file (no PAR1 magic at the end)"
    )


def test_parquet_text_stored_as_bytes_is_one_error(tmp_path):
    rows = [{k: v.encode() for k, v in row.items()} for row in pool_rows(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet")
    assert "column 'id' holds bytes (binary), not text" in one_line_error("pool", tmp_path / "pool.parquet")


def test_undecodable_parquet_values_are_one_error(tmp_path):
    """A damaged string value: pyarrow raises UnicodeDecodeError while converting, which used to escape."""
    sink = io.BytesIO()
    rows = [{**row, "prompt": f"café {i}"} for i, row in enumerate(pool_rows(5))]
    pq.write_table(pa.Table.from_pylist(rows), sink, compression="none", use_dictionary=False,
                   write_statistics=False)
    data = bytearray(sink.getvalue())
    data[data.index("café 2".encode()) + 3] = 0xFF  # the first byte of "é"
    (tmp_path / "pool.parquet").write_bytes(bytes(data))
    assert "cannot read after row 0 ('utf-8' codec can't decode byte 0xff" in one_line_error(
        "pool", tmp_path / "pool.parquet"
    )


# ------------------------------------------------------------------------------------------------ BOMs, encodings
def test_utf8_bom_is_dropped_in_jsonl_and_csv(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(codecs.BOM_UTF8 + write_jsonl(tmp_path / "plain.jsonl", pool_rows(3)).read_bytes())
    _, rows = records("pool", pool)
    assert [o.reason for o in rows] == [None, None, None] and rows[0].record["id"] == "src/p0"
    lm = tmp_path / "train.csv"
    lm.write_bytes(codecs.BOM_UTF8 + write_csv(tmp_path / "plain.csv", good_lmsys_rows(2)).read_bytes())
    assert [o.record["id"] for o in records("lmsys_csv", lm)[1]] == ["src/0", "src/1"]


def test_utf16_needs_the_encoding_option(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(lmsys_text(LATIN_ROWS).encode("utf-16"))
    assert one_line_error("lmsys_csv", path).endswith(
        "starts with a UTF-16 byte order mark but is read as utf-8; set encoding: utf-16 for this source"
    )
    _, rows = records("lmsys_csv", path, encoding="utf-16")
    assert [o.record["prompt"] for o in rows] == [["café crème"], ["naïve"]]
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(write_jsonl(tmp_path / "p.jsonl", pool_rows(2)).read_text().encode("utf-16"))
    assert [o.record["id"] for o in records("pool", pool, encoding="UTF16")[1]] == ["src/p0", "src/p1"]


def test_non_utf8_text_stops_with_the_byte_offset_and_reads_with_its_encoding(tmp_path):
    """Used to be read with every non-ASCII character replaced by U+FFFD, counted as repaired surrogates."""
    raw = lmsys_text(LATIN_ROWS).encode("cp1252")
    path = tmp_path / "train.csv"
    path.write_bytes(raw)
    message = one_line_error("lmsys_csv", path)
    first_bad = raw.index("é".encode("cp1252"))
    assert f"not valid utf-8 at byte offset {first_bad:,} (bytes e9 20" in message
    assert "set this source's encoding (e.g. encoding: cp1252 or latin-1)" in message
    reader, rows = records("lmsys_csv", path, encoding="cp1252")
    assert [o.record["prompt"] + o.record["response_a"] + o.record["response_b"] for o in rows] == [
        ["café crème", "oui", "non"], ["naïve", "señor", "Ørsted"]
    ]
    assert reader.repaired_surrogates == 0
    jsonl = tmp_path / "pool.jsonl"
    jsonl.write_bytes(b'{"prompt": "caf\xe9", "response_a": "a", "response_b": "b"}\n')
    assert "not valid utf-8 at byte offset 15 " in one_line_error("pool", jsonl)
    assert records("pool", jsonl, encoding="latin-1")[1][0].record["prompt"] == ["café"]
    gz = tmp_path / "pool2.jsonl"
    gz.write_bytes(gzip.compress(jsonl.read_bytes()))
    assert "not valid utf-8 at byte offset 15 of the decompressed data" in one_line_error("pool", gz)


def test_byte_offset_is_exact_across_chunks(tmp_path, monkeypatch):
    """The decoder holds back an incomplete character between chunks; the offset still points at the bad byte."""
    monkeypatch.setattr(sniff, "CHUNK", 7)
    for prefix in range(0, 12):
        data = b"a" * prefix + "é€".encode() + b"\xc3(" + b"z" * 5  # a split 2- and 3-byte char, then a bad pair
        path = tmp_path / "x.jsonl"
        path.write_bytes(data)
        with pytest.raises(InputError, match=rf"byte offset {prefix + 5} \(bytes c3 28"):
            sniff.check_text(path, "utf-8", "JSONL")
    path.write_bytes(b"abc\xe2\x82")  # truncated in the middle of the last character
    with pytest.raises(InputError, match=r"byte offset 3 \(bytes e2 82: unexpected end of data\)"):
        sniff.check_text(path, "utf-8", "JSONL")


def test_json_escaped_lone_surrogates_in_valid_utf8_are_still_repaired(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"prompt": "caf\\u00e9 \\ud83d", "response_a": "\\u00fc", "response_b": "b"}\n', "utf-8")
    reader, rows = records("pool", path)
    assert rows[0].record["prompt"] == ["café \ufffd"] and reader.repaired_surrogates == 1


def test_encoding_option_is_validated_in_the_config(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown text encoding 'klingon'"):
        SourceConfig(name="x", kind="pool", path=tmp_path / "p.jsonl", encoding="klingon")
    with pytest.raises(ValueError, match="unknown text encoding 'rot13'"):  # a codec, but not a text encoding
        SourceConfig(name="x", kind="pool", path=tmp_path / "p.jsonl", encoding="rot13")
    with pytest.raises(ValueError, match="parquet text is always UTF-8"):
        SourceConfig(name="x", kind="wsdm_parquet", path=tmp_path / "t.parquet", encoding="cp1252")
    assert SourceConfig(name="x", kind="pool", path=tmp_path / "p.parquet", encoding="UTF8").encoding == "UTF8"
    config = tmp_path / "prepare.yaml"
    config.write_text(f"output_dir: {tmp_path / 'ds'}\nsources:\n"
                      f"  - {{name: a, kind: lmsys_csv, path: {tmp_path / 'a.csv'}, encoding: latin-2000}}\n")
    with pytest.raises(ConfigError, match=r"sources\.0\.encoding: .*unknown text encoding 'latin-2000'"):
        load_config(prepare.Config, config)
    assert main(["prepare", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(config) in err and "encoding" in err


def test_cli_prints_one_line_naming_the_file(tmp_path, capsys):
    path = tmp_path / "train.csv"
    path.write_bytes(lmsys_text(LATIN_ROWS).encode("latin-1"))
    config = tmp_path / "prepare.yaml"
    config.write_text(f"output_dir: {tmp_path / 'ds'}\nsources:\n  - {{name: a, kind: lmsys_csv, path: {path}}}\n")
    assert main(["prepare", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"arena-dist prepare: {path}: not valid utf-8 at byte offset ") and err.count("\n") == 1
    assert not (tmp_path / "ds").exists()
    assert main(["prepare", "--config", str(config), "--set", "sources.0.encoding=latin-1"]) == 0
    assert "a: read=2 = kept 2" in capsys.readouterr().out


def test_lmsys_cell_with_a_huge_json_integer_is_quarantined(tmp_path):
    """json.loads raises a plain ValueError (int digit limit) for it, which used to escape as a traceback."""
    path = write_csv(tmp_path / "train.csv", [lmsys_row(1, "[" + "1" * 5000 + "]", ["a"], ["b"]),
                                              lmsys_row(2, ["q"], ["a"], ["b"])])
    _, rows = records("lmsys_csv", path)
    assert rows[0].reason == "bad_json" and "4300 digits" in rows[0].detail and rows[1].record
    jsonl = write_jsonl(tmp_path / "pool.jsonl", ['{"prompt": ' + "9" * 5000 + ', "response_a": "a"}',
                                                  {"prompt": "p", "response_a": "a", "response_b": "b"}])
    _, rows = records("pool", jsonl)
    assert rows[0].reason == "bad_row" and rows[1].record
