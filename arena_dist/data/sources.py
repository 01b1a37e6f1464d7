"""Input sources -> canonical records, one streaming reader per format.

Each reader first sniffs its file (`arena_dist.data.sniff`: gzip, Git LFS pointers, binary data, byte order marks,
the encoding of every byte), then checks its required columns (an unusable file or a missing column is one
`InputError` naming both) and then yields one `Outcome` per row: a record, or a quarantine reason. Nothing is dropped
here: dedup, duplicate ids and the per-source limits are decided by the pipeline (`arena_dist.data.store`).

Formats: LMSYS csv (JSON-list cells), WSDM parquet, pairwise chosen/rejected JSONL (transcripts, explicit prompt, or
message lists), the unlabelled prompt pool (parquet or JSONL), and (`arena_dist.data.rated`) rated completion sets,
scored chosen/rejected pairs and conversation files. csv and JSONL may be gzip-compressed.

Where the rows go is the source's `use_as` (train, pool or eval). A labelled source routed to the pool keeps its label
in `source_label` (the row's `label` is None there), so pseudo-labels can be compared with it later.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field, field_validator, model_validator

from arena_dist.config import StrictModel
from arena_dist.data.filters import FilterConfig
from arena_dist.data.normalize import hash64, repair_text
from arena_dist.data.pairing import PairingConfig
from arena_dist.data.records import (
    LABEL_A, LABEL_B, LABEL_TIE, SPLIT_POOL, SPLIT_TRAIN, UNKNOWN_LANGUAGE, Record, swap_record,
)
from arena_dist.data.sniff import cannot_read, check_parquet, check_text, codec_name, one_line
from arena_dist.errors import InputError

SourceKind = Literal[
    "lmsys_csv", "wsdm_parquet", "pairwise_jsonl", "pool", "rated_completions", "scored_pairs", "conversations"
]
# Kinds read from parquet or JSONL, whichever the file name says.
TABLE_KINDS = ("pool", "rated_completions", "scored_pairs", "conversations")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")

# Canonical column names a source may rename with `columns: {canonical: name_in_file}`.
CANONICAL_COLUMNS = (
    "id", "prompt", "response_a", "response_b", "model_a", "model_b", "language",
    "winner_model_a", "winner_model_b", "winner_tie", "winner", "chosen", "rejected",
    "completions", "score_chosen", "score_rejected", "messages",
)

# Quarantine reasons (the manifest counts each).
BAD_ROW = "bad_row"  # not a row at all: wrong field count, JSONL line that is not a JSON object
BAD_JSON = "bad_json"  # a cell that should hold a JSON list of strings does not
BAD_VALUE = "bad_value"  # a value of the wrong type (e.g. a number where text belongs)
BAD_TRANSCRIPT = "bad_transcript"  # chosen/rejected that do not form one conversation with a differing last turn
MISSING_ID = "missing_id"
MISSING_PROMPT = "missing_prompt"
TURN_COUNT_MISMATCH = "turn_count_mismatch"
EMPTY_RESPONSE = "empty_response"
IDENTICAL_RESPONSES = "identical_responses"
INVALID_LABEL = "invalid_label"
DUPLICATE_ID = "duplicate_id"
MISSING_SCORE = "missing_score"  # a completion (or chosen/rejected) without a numeric score
TOO_FEW_COMPLETIONS = "too_few_completions"  # a rated set with fewer than two completions
NO_PAIR = "no_pair"  # no two completions satisfy the pairing rule (score gap, ties in 2-class mode)
BAD_CONVERSATION = "bad_conversation"  # a conversation without a user turn, or not a list of messages


class SourceConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)  # id prefix and `source` tag
    kind: SourceKind
    path: Path
    # Where the rows go: train (labelled), pool (unlabelled; a labelled source keeps its label in source_label) or
    # eval (labelled, held out). Default: pool for kinds pool and conversations, train otherwise.
    use_as: Literal["train", "pool", "eval"] | None = None
    columns: dict[str, str] = Field(default_factory=dict)  # canonical column -> its name in the file
    language: str = UNKNOWN_LANGUAGE  # used when the file has no language column (or the cell is empty)
    # Text encoding of a csv / JSONL source (any codec Python knows: cp1252, latin-1, utf-16, ...). Every byte is
    # checked before rows are read: a file that is not valid in it stops with the byte offset. Parquet is UTF-8.
    encoding: str = "utf-8"
    # The run stops when more than this share of the rows read is quarantined (1.0: any share is accepted).
    max_quarantine_share: float = Field(0.5, ge=0.0, le=1.0)
    # The run stops when the source gives no rows to the dataset (an empty file, or every row a duplicate or
    # quarantined) unless this is true.
    allow_empty: bool = False
    pairing: PairingConfig = Field(default_factory=PairingConfig)  # rated_completions and scored_pairs only
    filters: FilterConfig = Field(default_factory=FilterConfig)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str) -> str:
        try:
            codec_name(encoding)
        except LookupError:
            raise ValueError(f"unknown text encoding {encoding!r} (e.g. utf-8, cp1252, latin-1, utf-16)") from None
        return encoding

    @property
    def split(self) -> str:
        """The dataset split the source's rows are routed to (its resolved `use_as`)."""
        return self.use_as

    @model_validator(mode="after")
    def _defaults(self) -> "SourceConfig":
        if self.use_as is None:
            # Set without validation: an assignment would re-run this validator (validate_assignment) halfway.
            object.__setattr__(self, "use_as", SPLIT_POOL if self.kind in ("pool", "conversations") else SPLIT_TRAIN)
        if self.kind == "conversations" and self.split != SPLIT_POOL:
            raise ValueError("a conversations source gives prompts without responses: use_as must be pool")
        # Compared with the defaults, not "was it given": a resolved config spells every default out.
        if self.pairing != PairingConfig() and self.kind not in ("rated_completions", "scored_pairs"):
            raise ValueError(f"pairing applies to rated_completions and scored_pairs sources, not {self.kind}")
        unknown = sorted(set(self.columns) - set(CANONICAL_COLUMNS))
        if unknown:
            raise ValueError(f"columns: unknown canonical column {unknown[0]!r} (known: {', '.join(CANONICAL_COLUMNS)})")
        if codec_name(self.encoding) != "utf-8" and self.is_parquet:
            raise ValueError(f"encoding: {self.encoding!r} is for csv / JSONL sources; parquet text is always UTF-8")
        return self

    @property
    def is_parquet(self) -> bool:
        return self.kind == "wsdm_parquet" or (self.kind in TABLE_KINDS and data_suffix(self.path) == ".parquet")


class Quarantined(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass
class Outcome:
    row: int  # 1 = first data row (CSV: after the header; JSONL: line number; parquet: row index + 1)
    raw: Any  # the row as read (dict of canonical column -> value, or the raw line)
    record: Record | None = None  # the first (usually only) record of the row
    reason: str | None = None
    detail: str = ""
    records: list[Record] = dataclasses.field(default_factory=list)  # every record of the row (rated sets: several)

    def __post_init__(self):
        if self.record is not None and not self.records:
            self.records = [self.record]
        elif self.records and self.record is None:
            self.record = self.records[0]


# ------------------------------------------------------------------------------------------------------ text helpers
class SourceReader:
    """Base: column mapping, text repair with a counter, and the checks every format shares."""

    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    label_columns: tuple[str, ...] = ()  # required when the rows go to train or eval
    default_columns: dict[str, str] = {}  # canonical column -> its usual name in this layout (before `columns`)
    balance_sides = False  # the winner is put in A: the pipeline swaps a seeded, exactly balanced half
    output_split: str  # the split the records are written to

    def __init__(self, config: SourceConfig):
        self.config = config
        self.path = Path(config.path)
        self.repaired_surrogates = 0  # texts in which lone surrogates were replaced by U+FFFD
        self.total_rows: int | None = None  # known up front for parquet (progress ETA), None for streams
        self.output_split = config.split
        self.reads_labels = self.labelled  # a pool-routed reader sets it when the file has labels

    # --- columns
    def file_column(self, canonical: str) -> str:
        return self.config.columns.get(canonical, self.default_columns.get(canonical, canonical))

    def check_columns(self, present: list[str], required: tuple[str, ...]) -> None:
        for canonical in required:
            name = self.file_column(canonical)
            if name not in present:
                renamed = f" (mapped from {canonical!r})" if name != canonical else ""
                raise InputError(
                    f"{self.path}: missing required column {name!r}{renamed}{self.unlabelled_hint(name, present)}"
                )

    def unlabelled_hint(self, missing: str, present: list[str]) -> str:
        """A labelled source without any label column is most likely a test file: say how to read it unlabelled."""
        labels = [self.file_column(c) for c in self.label_columns]
        if missing not in labels or any(name in present for name in labels):
            return ""
        return " (no winner columns: to read the file as unlabelled, e.g. a test.csv, set use_as: pool for this source)"

    def canonical_row(self, row: dict) -> dict:
        """Keep only known columns, under canonical names."""
        names = {canonical: self.file_column(canonical) for canonical in (*self.required, *self.optional)}
        return {canonical: row[name] for canonical, name in names.items() if name in row}

    # --- texts
    def text(self, value: Any, field: str) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise Quarantined(BAD_VALUE, f"{field}: expected text, got {type(value).__name__}")
        repaired, changed = repair_text(value)
        self.repaired_surrogates += changed
        return repaired

    def turns(self, value: Any, field: str) -> list[str]:
        """A plain string is one turn; a list holds one string (or null -> "") per turn."""
        if isinstance(value, (list, tuple)):
            return [self.text(item, f"{field}[{i}]") for i, item in enumerate(value)]
        return [self.text(value, field)]

    def json_turns(self, cell: Any, field: str) -> list[str]:
        """LMSYS cell: a JSON-encoded list of strings or nulls."""
        if not isinstance(cell, str):
            raise Quarantined(BAD_JSON, f"{field}: empty cell")
        try:
            value = json.loads(cell)
        except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, or an int of > 4300 digits
            raise Quarantined(BAD_JSON, f"{field}: {_json_error(exc)}") from None
        if not isinstance(value, list):
            raise Quarantined(BAD_JSON, f"{field}: JSON {type(value).__name__}, expected a list of strings")
        for i, item in enumerate(value):
            if item is not None and not isinstance(item, str):
                raise Quarantined(BAD_JSON, f"{field}[{i}]: JSON {type(item).__name__}, expected a string or null")
        return self.turns(value, field)

    def texts(self, row: dict, parse) -> list[list[str]]:
        """prompt, response_a and response_b as turns, in that order, each read by `parse` (turns or json_turns)."""
        return [parse(row[field], field) for field in ("prompt", "response_a", "response_b")]

    def optional_text(self, row: dict, field: str) -> str | None:
        value = self.text(row.get(field), field).strip()
        return value or None

    @staticmethod
    def checked_id(source_id: Any) -> str:
        if source_id is None or (isinstance(source_id, str) and not source_id.strip()):
            raise Quarantined(MISSING_ID, "id is empty")
        if isinstance(source_id, bool) or not isinstance(source_id, (str, int, float)) or source_id != source_id:
            raise Quarantined(BAD_VALUE, f"id: expected text or a number, got {source_id!r:.40}")
        return str(source_id).strip()

    def set_label(self, record: Record, label: int) -> None:
        """Set the label a reader decided after building the record (kept as source_label on the pool side)."""
        record["source_label" if self.config.split == SPLIT_POOL else "label"] = label

    def record(self, row: dict, source_id: Any, prompt, response_a, response_b, label: int | None) -> Record:
        """Shared validation, then the canonical record (fold is set by the pipeline)."""
        source_id = self.checked_id(source_id)
        if not (len(prompt) == len(response_a) == len(response_b)):
            raise Quarantined(
                TURN_COUNT_MISMATCH, f"prompt {len(prompt)}, response_a {len(response_a)}, response_b {len(response_b)}"
            )
        if not any(turn.strip() for turn in prompt):
            raise Quarantined(MISSING_PROMPT, "every prompt turn is empty")
        for name, response in (("response_a", response_a), ("response_b", response_b)):
            if not any(turn.strip() for turn in response):
                raise Quarantined(EMPTY_RESPONSE, f"{name}: every turn is empty")
        if list(response_a) == list(response_b):
            raise Quarantined(IDENTICAL_RESPONSES, "response_a equals response_b")
        language = self.optional_text(row, "language") or self.config.language
        source_label = None
        if self.config.split == SPLIT_POOL:  # a pool row is unlabelled; the source's own label is kept aside
            label, source_label = None, label
        return Record(
            id=f"{self.config.name}/{source_id}", source=self.config.name, prompt=list(prompt),
            response_a=list(response_a), response_b=list(response_b), model_a=self.optional_text(row, "model_a"),
            model_b=self.optional_text(row, "model_b"), language=language, label=label, fold=0,
            source_label=source_label,
        )

    # --- iteration
    def rows(self) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError

    def convert(self, row_number: int, row: Any) -> Record | list[Record]:
        """One record, or a non-empty list of them (a rated set gives one per pair)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Outcome]:
        for row_number, row in self.rows():
            try:
                converted = self.convert(row_number, row)
                if isinstance(converted, list):
                    yield Outcome(row_number, row, records=converted)
                else:
                    yield Outcome(row_number, row, record=converted)
            except Quarantined as q:
                yield Outcome(row_number, row, reason=q.reason, detail=q.detail)

    @property
    def labelled(self) -> bool:
        """Labels are required (train and eval); a pool-routed source reads them only when its file has them."""
        return self.config.split != SPLIT_POOL


# ------------------------------------------------------------------------------------------------------- LMSYS csv
LMSYS_LABEL_COLUMNS = ("winner_model_a", "winner_model_b", "winner_tie")


class LmsysCsvReader(SourceReader):
    """LMSYS train.csv / test.csv. Cells of prompt/response_* are JSON lists, one string (or null) per turn."""

    required = ("id", "prompt", "response_a", "response_b")
    optional = ("model_a", "model_b", "language", *LMSYS_LABEL_COLUMNS)
    label_columns = LMSYS_LABEL_COLUMNS

    def __init__(self, config: SourceConfig):
        super().__init__(config)
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # responses can be far above the 128 KiB default
        self.text_file = check_text(self.path, config.encoding, "csv")
        with contextlib.closing(self.text_file.lines(newline="")) as lines:
            self.header = self.next_row(csv.reader(lines))
        if not self.header:
            raise InputError(f"{self.path}: empty file (no header row)")
        self.check_columns(self.header, self.required + (LMSYS_LABEL_COLUMNS if self.labelled else ()))
        self.reads_labels = all(self.file_column(name) in self.header for name in LMSYS_LABEL_COLUMNS)

    def next_row(self, reader) -> list[str] | None:
        """The next csv row (None at the end); a line the csv module cannot parse stops the run, naming it."""
        try:
            return next(reader)
        except StopIteration:
            return None
        except csv.Error as exc:
            raise InputError(f"{self.path}: line {reader.line_num}: unreadable CSV ({one_line(exc)})") from None

    def rows(self) -> Iterator[tuple[int, Any]]:
        with contextlib.closing(self.text_file.lines(newline="")) as lines:
            reader = csv.reader(lines)
            next(reader)
            for row_number, values in enumerate(iter(lambda: self.next_row(reader), None), start=1):
                if len(values) != len(self.header):
                    yield row_number, {"_fields": values}
                else:
                    yield row_number, dict(zip(self.header, values))

    def convert(self, row_number: int, row: Any) -> Record:
        if "_fields" in row:
            raise Quarantined(BAD_ROW, f"{len(row['_fields'])} fields, header has {len(self.header)}")
        row = self.canonical_row(row)
        label = self.label(row) if self.reads_labels else None
        return self.record(row, row["id"], *self.texts(row, self.json_turns), label)

    @staticmethod
    def label(row: dict) -> int:
        try:
            flags = [float(row[name]) for name in LMSYS_LABEL_COLUMNS]
        except (TypeError, ValueError):
            raise Quarantined(INVALID_LABEL, "winner columns are not numbers") from None
        if sorted(flags) != [0.0, 0.0, 1.0]:
            raise Quarantined(INVALID_LABEL, f"winner columns {flags} are not one-hot")
        return (LABEL_A, LABEL_B, LABEL_TIE)[flags.index(1.0)]


# ---------------------------------------------------------------------------------------------- parquet row streams
# What pyarrow raises besides ArrowException on a damaged file (bad lengths, UnicodeDecodeError for undecodable
# strings, huge allocations).
PARQUET_ERRORS = (OSError, ValueError, EOFError, IndexError, OverflowError, MemoryError)


class ParquetRows:
    """Mixin: stream a parquet file's rows (canonical names) with `iter_batches`."""

    batch_size = 4096

    def open_parquet(self, required: tuple[str, ...]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        check_parquet(self.path)
        try:
            # No pre-buffering and a buffered stream: pages are read as needed. With the defaults the reader keeps
            # the coalesced column chunks of every row group it has read, and memory grows with the file size.
            self.parquet = pq.ParquetFile(self.path, pre_buffer=False, buffer_size=1 << 20)
            names = self.parquet.schema_arrow.names
            self.total_rows = self.parquet.metadata.num_rows
        except PARQUET_ERRORS + (pa.ArrowException,) as exc:
            raise cannot_read(self.path, exc) from None
        self.check_columns(names, required)
        wanted = {self.file_column(c) for c in (*self.required, *self.optional)}
        self.read_columns = [name for name in names if name in wanted]
        self.check_not_binary()

    def check_not_binary(self) -> None:
        """Text stored as parquet BINARY (bytes, no string annotation) would be quarantined row by row: say so once."""
        import pyarrow as pa

        for name in self.read_columns:
            value_type = self.parquet.schema_arrow.field(name).type
            while pa.types.is_list(value_type) or pa.types.is_large_list(value_type):
                value_type = value_type.value_type
            if any(is_bytes(value_type) for is_bytes in (pa.types.is_binary, pa.types.is_large_binary,
                                                         pa.types.is_fixed_size_binary)):
                raise InputError(f"{self.path}: column {name!r} holds bytes ({value_type}), not text: write it as a "
                                 "string column")

    def rows(self) -> Iterator[tuple[int, Any]]:
        row_number = 0
        batches = self.parquet.iter_batches(batch_size=self.batch_size, columns=self.read_columns)
        while True:
            rows = self.next_rows(batches, row_number)
            if rows is None:
                return
            for row in rows:
                row_number += 1
                yield row_number, self.canonical_row(row)

    def next_rows(self, batches, row_number: int) -> list[dict] | None:
        """The next batch as Python rows (None at the end). Damaged pages, undecodable values and the like fail
        inside pyarrow with many exception types: each is one InputError naming the file and where it stopped."""
        import pyarrow as pa

        try:
            return next(batches).to_pylist()
        except StopIteration:
            return None
        except PARQUET_ERRORS + (pa.ArrowException,) as exc:
            raise InputError(f"{self.path}: cannot read after row {row_number} ({one_line(exc)})") from None


class JsonlRows:
    """Mixin: stream JSONL objects (canonical names); the first object must carry the required keys.

    Lines end at "\\n" only (a "\\r" is JSON whitespace, not a line break)."""

    def open_jsonl(self, required: tuple[str, ...]) -> None:
        self.text_file = check_text(self.path, self.config.encoding, "JSONL")
        with contextlib.closing(self.text_file.lines(newline="\n")) as lines:
            for line in lines:
                if line.strip():
                    first = None
                    with contextlib.suppress(ValueError, RecursionError):  # a bad line is quarantined as a row
                        first = json.loads(line)
                    if isinstance(first, dict):
                        self.check_columns(list(first), required)
                    break

    def rows(self) -> Iterator[tuple[int, Any]]:
        with contextlib.closing(self.text_file.lines(newline="\n")) as lines:
            for line_number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue  # blank lines are not rows
                try:
                    value = json.loads(line)
                    error = None if isinstance(value, dict) else "not a JSON object"
                except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, or an int of > 4300 digits
                    error = f"not JSON ({_json_error(exc)})"
                if error is None:
                    missing = [self.file_column(c) for c in self.required if self.file_column(c) not in value]
                    error = f"missing key {missing[0]!r}" if missing else None
                yield line_number, ({"_line": line.rstrip("\n"), "_error": error} if error is not None
                                    else self.canonical_row(value))


class TableRows(ParquetRows, JsonlRows):
    """Mixin: rows of a parquet file or a JSONL file, whichever the file name says (.parquet or .jsonl[.gz])."""

    def open_rows(self, required: tuple[str, ...]) -> None:
        self.from_parquet = data_suffix(self.path) == ".parquet"
        if self.from_parquet:
            self.open_parquet(required)
        else:
            self.open_jsonl(required)

    def rows(self) -> Iterator[tuple[int, Any]]:
        return ParquetRows.rows(self) if self.from_parquet else JsonlRows.rows(self)


def _json_error(exc: Exception) -> str:
    return getattr(exc, "msg", None) or one_line(exc)


def reject_bad_line(row: dict) -> None:
    if "_error" in row:
        raise Quarantined(BAD_ROW, row["_error"])


# ------------------------------------------------------------------------------------------------------ WSDM parquet
WSDM_WINNERS = {"model_a": LABEL_A, "model_b": LABEL_B}


class WsdmParquetReader(ParquetRows, SourceReader):
    required = ("id", "prompt", "response_a", "response_b")
    optional = ("model_a", "model_b", "language", "winner")
    label_columns = ("winner",)

    def __init__(self, config: SourceConfig):
        super().__init__(config)
        self.open_parquet(self.required + (("winner",) if self.labelled else ()))
        self.reads_labels = self.file_column("winner") in self.read_columns

    def convert(self, row_number: int, row: Any) -> Record:
        label = None
        if self.reads_labels:
            winner = row.get("winner")
            if winner not in WSDM_WINNERS:
                raise Quarantined(INVALID_LABEL, f"winner {winner!r} is not model_a or model_b")
            label = WSDM_WINNERS[winner]
        return self.record(row, row["id"], *self.texts(row, self.turns), label)


# -------------------------------------------------------------------------------------------------------------- pool
class _PoolMixin:
    required = ("prompt", "response_a", "response_b")
    optional = ("id", "model_a", "model_b", "language")

    def convert(self, row_number: int, row: Any) -> Record:
        reject_bad_line(row)
        return self.record(row, row["id"] if "id" in row else row_number, *self.texts(row, self.turns), None)


class PoolParquetReader(_PoolMixin, ParquetRows, SourceReader):
    def __init__(self, config: SourceConfig):
        SourceReader.__init__(self, config)
        self.open_parquet(self.required)


class PoolJsonlReader(_PoolMixin, JsonlRows, SourceReader):
    def __init__(self, config: SourceConfig):
        SourceReader.__init__(self, config)
        self.open_jsonl(self.required)


# ---------------------------------------------------------------------------------------------------- pairwise JSONL
_ROLE_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_ROLE_NAMES = {"human": "user", "user": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant"}


def parse_messages(value: Any, field: str) -> list[tuple[str, str]]:
    """A conversation as [(role, text)]: from a "\\n\\nHuman: …\\n\\nAssistant: …" transcript, a list of
    {role, content} messages, or a plain string (one message without markers is returned as ("text", s)).

    Every text is stripped, whatever the style, so the same comparison written as transcripts, as prompt + response
    strings (" answer" after "Assistant:") or as message lists gives the same turns."""
    if isinstance(value, list):
        messages = []
        for i, item in enumerate(value):
            if not isinstance(item, dict) or not isinstance(item.get("content"), str):
                raise Quarantined(BAD_TRANSCRIPT, f"{field}[{i}]: expected {{role, content}}")
            role = _ROLE_NAMES.get(str(item.get("role", "")).lower())
            if role is None:
                raise Quarantined(BAD_TRANSCRIPT, f"{field}[{i}]: unsupported role {str(item.get('role'))[:40]!r}")
            messages.append((role, item["content"].strip()))
        return messages
    if not isinstance(value, str):
        raise Quarantined(BAD_VALUE, f"{field}: expected text or a list of messages, got {type(value).__name__}")
    parts = _ROLE_MARKER.split(value)
    if len(parts) == 1:
        return [("text", value.strip())]
    if parts[0].strip():
        raise Quarantined(BAD_TRANSCRIPT, f"{field}: text before the first Human:/Assistant: marker")
    return [("user" if role == "Human" else "assistant", text.strip()) for role, text in zip(parts[1::2], parts[2::2])]


def merge_turns(messages: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Consecutive messages of the same speaker become one turn, their non-empty texts joined by "\\n\\n".

    Two Assistant: (or Human:) turns in a row are one turn split in two (common in scraped transcripts), not a broken
    conversation; merging them keeps the row, and every style of pairwise input merges the same way."""
    merged: list[tuple[str, str]] = []
    for role, text in messages:
        if merged and merged[-1][0] == role:
            merged[-1] = (role, "\n\n".join(part for part in (merged[-1][1], text) if part))
        else:
            merged.append((role, text))
    return merged


class PairwiseJsonlReader(JsonlRows, SourceReader):
    """chosen/rejected pairs. Chosen is put in A here (label A); the pipeline then swaps a balanced, seeded half."""

    required = ("chosen", "rejected")
    optional = ("id", "prompt", "model_a", "model_b", "language")
    balance_sides = True

    def __init__(self, config: SourceConfig):
        super().__init__(config)
        self.reads_labels = True  # labelled by construction
        self.open_jsonl(self.required)

    def conversation(self, row: dict, field: str) -> list[tuple[str, str]]:
        """chosen or rejected as the whole conversation, same-speaker turns merged. With a `prompt` field the
        response is either the whole conversation (it starts with the prompt's turns) or what follows the prompt."""
        messages = merge_turns(parse_messages(row[field], field))
        if "prompt" not in row:
            if messages and messages[0][0] == "text":
                raise Quarantined(BAD_TRANSCRIPT, f"{field}: no Human:/Assistant: turns and no prompt field")
            return messages
        prompt = parse_messages(row["prompt"], "prompt")
        prompt = merge_turns([("user", text) if role == "text" else (role, text) for role, text in prompt])
        if prompt and prompt[-1] == ("assistant", ""):
            prompt = prompt[:-1]  # "…\n\nAssistant:" prompts end with an open assistant turn
        if messages and messages[0][0] == "text":
            return merge_turns(prompt + [("assistant", messages[0][1])])
        return messages if messages[: len(prompt)] == prompt else merge_turns(prompt + messages)

    def convert(self, row_number: int, row: Any) -> Record:
        reject_bad_line(row)
        chosen = [(role, self.text(text, role)) for role, text in self.conversation(row, "chosen")]
        rejected = [(role, self.text(text, role)) for role, text in self.conversation(row, "rejected")]
        if not chosen or not rejected or chosen[-1][0] != "assistant" or rejected[-1][0] != "assistant":
            raise Quarantined(BAD_TRANSCRIPT, "chosen and rejected must both end with an assistant turn")
        if chosen[:-1] != rejected[:-1]:
            raise Quarantined(BAD_TRANSCRIPT, "chosen and rejected differ before their last assistant turn")
        history = chosen[:-1]
        if not history or history[0][0] != "user":  # merged turns alternate: only the first speaker can be wrong
            raise Quarantined(BAD_TRANSCRIPT, "the conversation does not start with a Human turn")
        chosen_last, rejected_last = chosen[-1][1], rejected[-1][1]
        if not chosen_last.strip() or not rejected_last.strip():
            which = "chosen" if not chosen_last.strip() else "rejected"
            raise Quarantined(EMPTY_RESPONSE, f"{which}: the last assistant turn is empty")
        if chosen_last == rejected_last:
            raise Quarantined(IDENTICAL_RESPONSES, "chosen equals rejected")
        prompt = [text for role, text in history if role == "user"]
        earlier = [text for role, text in history if role == "assistant"]
        source_id = row["id"] if "id" in row else row_number
        return self.record(row, source_id, prompt, earlier + [chosen_last], earlier + [rejected_last], LABEL_A)


class BalancedAssigner:
    """Puts chosen in A or B, exactly balanced: per consecutive pair of kept rows one seeded coin sends the first to
    one side and the second to the other, so |#A - #B| <= 1 whatever the rows."""

    def __init__(self, seed: int, source_name: str):
        self.seed, self.source_name, self.count = seed, source_name, 0

    def chosen_to_b(self, index: int) -> bool:
        coin = hash64(str(index // 2), salt=f"ab/{self.seed}/{self.source_name}") & 1
        return bool(coin ^ (index % 2))

    def assign(self, record: Record) -> Record:
        to_b = self.chosen_to_b(self.count)
        self.count += 1
        return swap_record(record) if to_b else record


# ------------------------------------------------------------------------------------------------------------ factory
def open_source(config: SourceConfig) -> SourceReader:
    """Open a source and check its columns (InputError naming file and column when unusable)."""
    path = Path(config.path)
    if not path.is_file():
        raise InputError(f"{path}: cannot read (no such file)" if not path.exists() else f"{path}: not a file")
    from arena_dist.data.rated import ConversationsReader, RatedCompletionsReader, ScoredPairsReader

    readers = {"lmsys_csv": LmsysCsvReader, "wsdm_parquet": WsdmParquetReader, "pairwise_jsonl": PairwiseJsonlReader,
               "rated_completions": RatedCompletionsReader, "scored_pairs": ScoredPairsReader,
               "conversations": ConversationsReader}
    suffix = data_suffix(path)
    if config.kind in TABLE_KINDS and suffix not in (".parquet", *JSONL_SUFFIXES):
        what = "a pool" if config.kind == "pool" else f"a {config.kind} source"
        raise InputError(f"{path}: {what} must be .parquet or .jsonl (or .jsonl.gz) (source {config.name!r})")
    if config.kind in readers:
        return readers[config.kind](config)
    return PoolParquetReader(config) if suffix == ".parquet" else PoolJsonlReader(config)



def data_suffix(path: str | Path) -> str:
    """The suffix naming the format, under a compression suffix: pool.jsonl.gz -> .jsonl."""
    suffixes = [suffix.lower() for suffix in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def raw_as_strings(raw: Any) -> Any:
    """A row for the quarantine file: every value as a string (lists/numbers JSON-encoded), None kept."""
    if isinstance(raw, dict):
        return {str(k): (v if v is None or isinstance(v, str) else json.dumps(v, default=str)) for k, v in raw.items()}
    return str(raw)
