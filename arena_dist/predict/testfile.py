"""Competition test files -> canonical records, one per test row, in file order.

Reuses the prepare stage's readers (LMSYS csv with JSON-list cells, WSDM parquet), but a test row is never
quarantined: every test id needs a prediction. A row the readers would quarantine (a cell that is not a JSON list,
unequal turn counts, identical or empty responses) is kept leniently — each cell as one turn of plain text — and
counted. Duplicate or empty ids are refused: a submission needs every test id exactly once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from arena_dist.data.records import Record
from arena_dist.errors import InputError

SOURCE_NAME = "test"


def detect_competition(path: str | os.PathLike, competition: str = "auto") -> Literal["lmsys", "wsdm"]:
    if competition != "auto":
        return competition  # type: ignore[return-value]
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "lmsys"
    if suffix == ".parquet":
        return "wsdm"
    raise InputError(f"{path}: cannot tell the competition from the extension {suffix!r} (set competition)")


def _lenient_turns(value) -> list[str]:
    if value is None:
        return [""]
    if isinstance(value, (list, tuple)):
        return ["" if v is None else str(v) for v in value] or [""]
    return [str(value)]


def read_test_file(path: str | os.PathLike, competition: str = "auto") -> tuple[list[str], list[Record], dict]:
    """-> (test ids as written in the file, records in the same order, counts)."""
    from arena_dist.data.sources import LmsysCsvReader, SourceConfig, WsdmParquetReader

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: test file not found")
    competition = detect_competition(path, competition)
    kind = "lmsys_csv" if competition == "lmsys" else "wsdm_parquet"
    config = SourceConfig(name=SOURCE_NAME, kind=kind, path=path, use_as="pool")
    reader = LmsysCsvReader(config) if competition == "lmsys" else WsdmParquetReader(config)
    ids: list[str] = []
    records: list[Record] = []
    lenient: dict[str, int] = {}
    seen: set[str] = set()
    for outcome in reader:
        raw = outcome.raw if isinstance(outcome.raw, dict) else {}
        raw_id = raw.get(reader.file_column("id"))
        test_id = "" if raw_id is None else str(raw_id).strip()
        if "_fields" in raw or not test_id:
            raise InputError(f"{path}: row {outcome.row}: no usable id (a test row cannot be skipped)")
        if test_id in seen:
            raise InputError(f"{path}: row {outcome.row}: duplicate id {test_id!r}")
        seen.add(test_id)
        record = outcome.record
        if record is None:
            lenient[outcome.reason] = lenient.get(outcome.reason, 0) + 1
            row = reader.canonical_row(raw)
            prompt = [" ".join(_lenient_turns(row.get("prompt")))]
            record = Record(id=f"{SOURCE_NAME}/{test_id}", source=SOURCE_NAME, prompt=prompt,
                            response_a=[" ".join(_lenient_turns(row.get("response_a")))],
                            response_b=[" ".join(_lenient_turns(row.get("response_b")))],
                            model_a=None, model_b=None, language=str(row.get("language") or "unknown"),
                            label=None, fold=0)
        ids.append(test_id)
        records.append(record)
    if not ids:
        raise InputError(f"{path}: the test file has no rows")
    counts = {"rows": len(ids), "lenient_rows": sum(lenient.values()), "lenient_reasons": lenient,
              "repaired_surrogates": reader.repaired_surrogates, "competition": competition}
    return ids, records, counts
