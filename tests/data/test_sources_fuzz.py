"""Fuzz every source kind with damaged files through `arena-dist prepare`.

Small valid files of each kind (LMSYS csv, WSDM parquet, pairwise JSONL in each style, pool parquet and JSONL) are
truncated, byte-flipped, re-encoded (latin-1, UTF-16, gzip), given shuffled or renamed columns, duplicated and
shuffled line by line, with a seeded `random.Random`. Every case must end in one of two ways: exit 2 with one line
naming the file, or success where every source has read = kept + duplicates + quarantined and kept > 0. Any other
exception, a traceback, or a silent zero fails the test with the case that caused it.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from prepare_fixtures import LMSYS_HEADER, binarized_row, lmsys_row, pairwise_row, ultrafeedback_row

from arena_dist.cli import main
from arena_dist.data.store import load_manifest

SEED = 20261121
CASES = 120  # per kind: 1,200 prepare runs in all, about 12 s on an idle 2-core machine
ROWS = 10

TEXTS = ["café au lait", "naïve question", "Größe?", "emoji 😀 ok", "plain ascii", "日本語のテキスト",
         "ñandú", "Ørsted", "crème brûlée", "Ελληνικά"]


def _text(i: int, what: str) -> str:
    return f"{what} {i}: {TEXTS[i % len(TEXTS)]}"


# ------------------------------------------------------------------------------------------------- valid files
def lmsys_bytes() -> bytes:
    """As train.csv: JSON-list cells holding real UTF-8 text (not \\u escapes)."""
    cell = lambda turns: json.dumps(turns, ensure_ascii=False)  # noqa: E731
    rows = [lmsys_row(i, cell([_text(i, "q"), _text(i, "follow-up")]), cell([_text(i, "a1"), None]),
                      cell([_text(i, "b1"), "x"]), winner=[(1, 0, 0), (0, 1, 0), (0, 0, 1)][i % 3])
            for i in range(ROWS)]
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(LMSYS_HEADER)
    writer.writerows(rows)
    return handle.getvalue().encode("utf-8")


def parquet_bytes(rows: list[dict]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def wsdm_rows() -> list[dict]:
    return [{"id": f"w{i}", "prompt": _text(i, "prompt"), "response_a": _text(i, "left"),
             "response_b": _text(i, "right"), "winner": ("model_a", "model_b")[i % 2], "model_a": "m1", "model_b": "m2",
             "language": "German"}
            for i in range(ROWS)]


def pool_rows() -> list[dict]:
    return [{"id": f"p{i}", "prompt": [_text(i, "t1"), _text(i, "t2")], "response_a": [_text(i, "x1"), "x2"],
             "response_b": [_text(i, "y1"), "y2"]} for i in range(ROWS)]


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def pairwise_rows(style: str) -> list[dict]:
    rows = []
    for i in range(ROWS):
        history = [("Human", _text(i, "hello")), ("Assistant", _text(i, "hi")), ("Assistant", "more"),
                   ("Human", _text(i, "question"))]
        rows.append(pairwise_row(style, history, _text(i, "good"), _text(i, "bad"), id=f"r{i}"))
    return rows



def rated_rows() -> list[dict]:
    return [ultrafeedback_row(_text(i, "instruction"), [("m1", _text(i, "good"), 8.0), ("m2", _text(i, "bad"), 3.5)])
            for i in range(ROWS)]


def scored_rows() -> list[dict]:
    return [binarized_row(_text(i, "prompt"), _text(i, "chosen"), _text(i, "rejected"), 7.0, 2.0, f"s{i}")
            for i in range(ROWS)]


def conversation_rows() -> list[dict]:
    return [{"id": f"c{i}", "messages": [{"role": "user", "content": _text(i, "ask")},
                                         {"role": "assistant", "content": _text(i, "reply")}]} for i in range(ROWS)]

# kind name -> (source kind, file name, valid bytes, is parquet)
KINDS = {
    "lmsys_csv": ("lmsys_csv", "train.csv", lmsys_bytes, False),
    "wsdm_parquet": ("wsdm_parquet", "train.parquet", lambda: parquet_bytes(wsdm_rows()), True),
    "pairwise_transcript": ("pairwise_jsonl", "hh.jsonl", lambda: jsonl_bytes(pairwise_rows("transcript")), False),
    "pairwise_prompt": ("pairwise_jsonl", "pairs.jsonl", lambda: jsonl_bytes(pairwise_rows("prompt")), False),
    "pairwise_messages": ("pairwise_jsonl", "msgs.jsonl",
                          lambda: jsonl_bytes(pairwise_rows("messages_with_prompt")), False),
    "pool_parquet": ("pool", "pool.parquet", lambda: parquet_bytes(pool_rows()), True),
    "pool_jsonl": ("pool", "pool.jsonl", lambda: jsonl_bytes(pool_rows()), False),
    "rated_jsonl": ("rated_completions", "uf.jsonl", lambda: jsonl_bytes(rated_rows()), False),
    "scored_parquet": ("scored_pairs", "prefs.parquet", lambda: parquet_bytes(scored_rows()), True),
    "conversations_jsonl": ("conversations", "chat.jsonl", lambda: jsonl_bytes(conversation_rows()), False),
}


# -------------------------------------------------------------------------------------------------- mutations
# Each takes (rng, data, is_parquet) and returns new bytes, or None when it does not apply to the kind.
def truncate(rng, data, is_parquet):
    return data[: rng.randrange(len(data))]


def flip_bytes(rng, data, is_parquet):
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def random_bytes(rng, data, is_parquet):
    out = bytearray(data)
    start = rng.randrange(len(out))
    out[start : start + rng.randint(1, 16)] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(out)


def latin1(rng, data, is_parquet):
    return None if is_parquet else data.decode("utf-8").encode("latin-1", "replace")


def utf16(rng, data, is_parquet):
    return None if is_parquet else data.decode("utf-8").encode("utf-16")


def gzipped(rng, data, is_parquet):
    return gzip.compress(data, mtime=0)


def gzip_truncated(rng, data, is_parquet):
    packed = gzip.compress(data, mtime=0)
    return packed[: rng.randrange(len(packed))]


def _permuted_parquet(rng, data, apply):
    """The parquet file with `apply(table, shuffled column names)` written back (reorder or rename)."""
    table = pq.read_table(io.BytesIO(data))
    names = table.column_names[:]
    rng.shuffle(names)
    sink = io.BytesIO()
    pq.write_table(apply(table, names), sink)
    return sink.getvalue()


def shuffle_columns(rng, data, is_parquet):
    """The same rows with the columns (keys) in another order: must read exactly as before."""
    if is_parquet:
        return _permuted_parquet(rng, data, lambda table, names: table.select(names))
    text = data.decode("utf-8")
    if text.startswith("{"):
        lines = []
        for line in text.splitlines():
            row = json.loads(line)
            keys = list(row)
            rng.shuffle(keys)
            lines.append(json.dumps({key: row[key] for key in keys}, ensure_ascii=False))
        return ("\n".join(lines) + "\n").encode("utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    order = list(range(len(rows[0])))
    rng.shuffle(order)
    handle = io.StringIO(newline="")
    csv.writer(handle).writerows([[row[i] for i in order] for row in rows])
    return handle.getvalue().encode("utf-8")


def shuffle_header(rng, data, is_parquet):
    """Column names permuted, data left in place: values under the wrong names."""
    if is_parquet:
        return _permuted_parquet(rng, data, lambda table, names: table.rename_columns(names))
    text = data.decode("utf-8", "surrogateescape")
    if text.startswith("{"):
        return None
    header, _, rest = text.partition("\r\n")
    names = header.split(",")
    rng.shuffle(names)
    return (",".join(names) + "\r\n" + rest).encode("utf-8", "surrogateescape")


def shuffle_lines(rng, data, is_parquet):
    if is_parquet:
        return None
    lines = data.splitlines(keepends=True)
    head, body = (lines[:1], lines[1:]) if not data.startswith(b"{") else ([], lines)
    body = body + rng.sample(body, k=min(len(body), 3))  # some duplicated
    rng.shuffle(body)
    return b"".join(head + body)


def binary_columns(rng, data, is_parquet):
    """Parquet with latin-1 bytes where text belongs (binary, not string, columns)."""
    if not is_parquet:
        return None
    table = pq.read_table(io.BytesIO(data))
    rows = table.to_pylist()
    for row in rows:
        for key, value in row.items():
            if isinstance(value, str):
                row[key] = value.encode("latin-1", "replace")
    return parquet_bytes(rows)


def uncompressed(rng, data, is_parquet):
    """Parquet without compression or dictionary pages: byte flips then reach the values themselves."""
    if not is_parquet:
        return None
    sink = io.BytesIO()
    pq.write_table(pq.read_table(io.BytesIO(data)), sink, compression="none", use_dictionary=False)
    return sink.getvalue()


MUTATIONS = {
    "truncate": truncate, "flip_bytes": flip_bytes, "random_bytes": random_bytes, "latin1": latin1, "utf16": utf16,
    "gzip": gzipped, "gzip_truncated": gzip_truncated, "shuffle_columns": shuffle_columns,
    "shuffle_header": shuffle_header, "shuffle_lines": shuffle_lines, "binary_columns": binary_columns,
    "uncompressed": uncompressed,
}


# Mutations that parse the file: applied first in a plan, to the valid file (or after another structural one).
STRUCTURAL = ("shuffle_columns", "shuffle_header", "binary_columns", "shuffle_lines", "uncompressed", "latin1", "utf16")


def cases(kind: str, rng: random.Random):
    """(name, bytes): every mutation once, then random pairs of mutations, all from the kind's valid file."""
    _, _, make, is_parquet = KINDS[kind]
    valid = make()
    plans = [[name] for name in MUTATIONS]
    while len(plans) < CASES:
        plan = sorted(rng.sample(sorted(MUTATIONS), k=2), key=lambda name: name not in STRUCTURAL)
        if is_parquet and "uncompressed" not in plan and rng.random() < 0.5:
            plan.insert(0, "uncompressed")  # most damage to compressed pages only fails decompression
        plans.append(plan)
    for plan in plans:
        data, applied = valid, []
        for name in plan:
            if name in STRUCTURAL and applied and applied[-1] not in STRUCTURAL[:5]:
                continue  # latin-1 / UTF-16 bytes are not parsed again
            mutated = MUTATIONS[name](rng, data, is_parquet) if data else None
            if mutated is not None:
                data = mutated
                applied.append(name)
        if applied:
            yield "+".join(applied), data


# ------------------------------------------------------------------------------------------------------ checks
def expected(plan: str, is_parquet: bool) -> str | None:
    """What a single deterministic mutation must give: "ok", an error text, or None (either outcome)."""
    if "+" in plan:
        return None
    if plan in ("shuffle_columns", "shuffle_lines", "uncompressed") or (plan == "gzip" and not is_parquet):
        return "ok"
    return {"utf16": "set encoding: utf-16", "latin1": "not valid utf-8 at byte offset",
            "gzip": "gzip-compressed, not a parquet file", "binary_columns": "holds bytes"}.get(plan)


def run_prepare(tmp_path: Path, kind: str, data: bytes, capsys) -> tuple[int, str, Path]:
    source_kind, file_name, _, _ = KINDS[kind]
    path = tmp_path / file_name
    path.write_bytes(data)
    config = {"output_dir": str(tmp_path / "dataset"), "num_shards": 1, "num_folds": 2, "force": True,
              "sources": [{"name": "src", "kind": source_kind, "path": str(path)}]}
    config_path = tmp_path / "prepare.yaml"
    config_path.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    rc = main(["prepare", "--config", str(config_path)])
    return rc, capsys.readouterr().err, path


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_damaged_files_stop_with_one_line_or_count_every_row(kind, tmp_path, capsys):
    rng = random.Random(f"{SEED}/{kind}")
    is_parquet = KINDS[kind][3]
    outcomes = {"ok": 0, "error": 0}
    for plan, data in cases(kind, rng):
        try:
            rc, err, path = run_prepare(tmp_path, kind, data, capsys)
        except Exception as exc:  # noqa: BLE001 - the point: no exception but InputError/ConfigError may escape
            pytest.fail(f"{kind} {plan}: {type(exc).__name__}: {exc}")
        want = expected(plan, is_parquet)
        if rc == 2:
            outcomes["error"] += 1
            assert err.count("\n") == 1 and str(path) in err, f"{kind} {plan}: {err!r}"
            assert want != "ok", f"{kind} {plan} should read: {err!r}"
            assert want is None or want in err, f"{kind} {plan}: {err!r}"
            continue
        assert rc == 0, f"{kind} {plan}: exit {rc}"
        outcomes["ok"] += 1
        assert want in (None, "ok"), f"{kind} {plan} should fail with {want!r}"
        for name, counts in load_manifest(tmp_path / "dataset")["sources"].items():
            assert counts["read"] == counts["kept"] + counts["duplicates"] + counts["quarantined"], (plan, counts)
            assert counts["kept"] > 0, (plan, counts)
            if want == "ok":  # duplicated lines repeat an id: quarantined as duplicate_id
                assert counts["kept"] == ROWS and counts["quarantined"] == counts["reasons"].get("duplicate_id", 0)
    assert outcomes["ok"] and outcomes["error"], outcomes  # the cases reach both ends
