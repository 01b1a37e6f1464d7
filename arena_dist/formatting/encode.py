"""Records -> token ids for the classifier: template, turn packing, truncation, labels, A/B swap.

Everything is assembled in token ids: each text segment is tokenised once (batched through the fast tokenizer),
fixed pieces (template, instruction, markers, options) once per call, then concatenated, so the result is never
longer than `fmt.max_length`. Conversation texts are tokenised with `split_special_tokens=True`: a literal
"<|eot_id|>" typed by a user stays plain text and cannot forge template structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from arena_dist.data.records import Record, swap_record
from arena_dist.errors import ConfigError, InputError
from arena_dist.formatting.packing import allocate_budgets, recent_turns_that_fit, truncate
from arena_dist.formatting.templates import (
    MODEL_A_MARKER,
    MODEL_B_MARKER,
    TURN_END,
    FormatConfig,
    label_in_mode,
    turn_prompt_marker,
)


@dataclass
class EncodedRow:
    id: str
    input_ids: list[int]
    label: int | None  # in the row's own A/B order (swapped when `swapped`)
    swapped: bool
    turns_total: int = 0
    turns_kept: int = 0
    truncated: bool = False  # a turn was cut (turns dropped whole do not count)


class _Pieces:
    """Token ids of the fixed parts of the layout for one tokenizer and format (computed once per call)."""

    def __init__(self, tokenizer, fmt: FormatConfig):
        template = fmt.chat_template
        for marker in template.markers:
            ids = tokenizer.encode(marker, add_special_tokens=False)
            if len(ids) != 1:
                raise ConfigError(
                    f"format.template={template.name}: tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} "
                    f"does not have {marker} as one token (wrong template for this model family?)"
                )
        self._tokenizer = tokenizer
        self.head = self._special(template.prefix + fmt.instruction + "\n\n")
        self.tail = self._special(fmt.options_line + template.suffix)
        self.model_a = self._plain(MODEL_A_MARKER)
        self.model_b = self._plain(MODEL_B_MARKER)
        self.turn_end = self._plain(TURN_END)
        self._prompt_markers: dict[int, list[int]] = {}

    def _special(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False)

    def _plain(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)

    def prompt_marker(self, turn_number: int) -> list[int]:
        if turn_number not in self._prompt_markers:
            self._prompt_markers[turn_number] = self._plain(turn_prompt_marker(turn_number))
        return self._prompt_markers[turn_number]

    def overhead(self, turn_number: int) -> int:
        return len(self.prompt_marker(turn_number)) + len(self.model_a) + len(self.model_b) + len(self.turn_end)


def _batch_encode(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _turn_count(record: Record) -> int:
    n = len(record["prompt"])
    if n == 0 or len(record["response_a"]) != n or len(record["response_b"]) != n:
        raise InputError(
            f"record {record['id']}: needs >= 1 turn and equal turn counts "
            f"(prompt {n}, response_a {len(record['response_a'])}, response_b {len(record['response_b'])})"
        )
    return n


def _raise_for_bad_text(rows: Sequence[Record], extras: Sequence[str]) -> None:
    """The tokenizer rejected the batch: name the record, column and turn of the first text it cannot take."""
    for row, extra in zip(rows, extras):
        cells = [("extra_text", 0, extra)] + [
            (column, turn, text) for column in ("prompt", "response_a", "response_b")
            for turn, text in enumerate(row[column])
        ]
        for column, turn, text in cells:
            if text is None:
                continue
            if not isinstance(text, str):
                raise InputError(f"record {row['id']}: {column}[{turn}]: expected text, got {type(text).__name__}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InputError(
                    f"record {row['id']}: {column}[{turn}]: not encodable as UTF-8 ({exc.reason} at {exc.start})"
                ) from None


def _assemble(record: Record, turns: list[tuple[list[int], list[int], list[int]]], extra: list[int],
              pieces: _Pieces, fmt: FormatConfig, swapped: bool) -> EncodedRow:
    fixed = len(pieces.head) + len(extra) + len(pieces.tail)
    budget = fmt.max_length - fixed
    if budget < pieces.overhead(1):
        what = "extra_text" if extra else "the instruction and template"
        raise (InputError if extra else ConfigError)(
            f"record {record['id']}: format.max_length={fmt.max_length} leaves no room for a turn after {what} "
            f"({fixed} tokens)"
        )
    content = [len(p) + len(a) + len(b) for p, a, b in turns]
    overheads = [pieces.overhead(i + 1) for i in range(len(turns))]
    kept = recent_turns_that_fit(content, overheads, budget)
    truncated = False
    if kept == 0:  # the last turn alone is too long: cut it segment by segment
        kept, truncated = 1, True
        p, a, b = turns[-1]
        sizes = allocate_budgets([len(p), len(a), len(b)], budget - overheads[0],
                                 fmt.segment_shares.as_list(), fmt.min_share)
        selected = [tuple(truncate(seg, n, fmt.truncation) for seg, n in zip((p, a, b), sizes))]
    else:
        selected = turns[len(turns) - kept:]
    ids = list(pieces.head) + list(extra)
    for number, (p, a, b) in enumerate(selected, start=1):
        ids += pieces.prompt_marker(number) + p + pieces.model_a + a + pieces.model_b + b + pieces.turn_end
    ids += pieces.tail
    assert len(ids) <= fmt.max_length, (record["id"], len(ids), fmt.max_length)
    return EncodedRow(id=record["id"], input_ids=ids, label=label_in_mode(record, fmt.label_mode), swapped=swapped,
                      turns_total=len(turns), turns_kept=kept, truncated=truncated)


def encode_records(
    records: Sequence[Record],
    tokenizer,
    fmt: FormatConfig,
    swap: bool = False,
    extra_texts: Sequence[str | None] | None = None,
) -> list[EncodedRow]:
    """Encode many records at once (one batched tokenizer call for all their texts).

    swap=True encodes every record with A and B exchanged (label swapped, tie stays). `extra_texts[i]` (optional,
    e.g. model names for a teacher) goes right after the instruction; it is never truncated and counts in the budget.
    A tie in 2class mode is an InputError naming the record (filter with `usable_in_mode` first).
    """
    if extra_texts is not None and len(extra_texts) != len(records):
        raise ValueError(f"{len(records)} records but {len(extra_texts)} extra_texts")
    pieces = _Pieces(tokenizer, fmt)
    rows = [swap_record(r) if swap else r for r in records]
    texts: list[str] = []
    for row in rows:
        _turn_count(row)
        for p, a, b in zip(row["prompt"], row["response_a"], row["response_b"]):
            texts += [p or "", a or "", b or ""]
    extras = [e + "\n\n" if e else "" for e in (extra_texts or [None] * len(rows))]
    try:
        extra_ids = _batch_encode(tokenizer, [e for e in extras if e])
        encoded = _batch_encode(tokenizer, texts)
    except (TypeError, ValueError):
        _raise_for_bad_text(rows, extras)
        raise

    out: list[EncodedRow] = []
    cursor, next_extra = 0, iter(extra_ids)
    for row, extra in zip(rows, extras):
        n = len(row["prompt"])
        turns = [tuple(encoded[cursor + 3 * j: cursor + 3 * j + 3]) for j in range(n)]
        cursor += 3 * n
        out.append(_assemble(row, turns, next(next_extra) if extra else [], pieces, fmt, swap))
    return out


def encode_record(record: Record, tokenizer, fmt: FormatConfig, swap: bool = False,
                  extra_text: str | None = None) -> EncodedRow:
    return encode_records([record], tokenizer, fmt, swap=swap, extra_texts=[extra_text])[0]


def render_text(record: Record, fmt: FormatConfig, tokenizer, swap: bool = False,
                extra_text: str | None = None) -> str:
    """The model input as text (decoded ids, special tokens shown): for humans and debugging."""
    row = encode_record(record, tokenizer, fmt, swap=swap, extra_text=extra_text)
    return tokenizer.decode(row.input_ids, skip_special_tokens=False)


def segment_markers(tokenizer, fmt: FormatConfig) -> dict:
    """Token sequences that open each part of the layout, for models with segment embeddings
    (`arena_dist.models.segments`): "a" / "b" open the responses; "reset" (the prompt marker without its turn number,
    the start of the closing question) opens everything else. Exactly the ids `encode_records` writes, because the
    pieces are tokenised on their own and concatenated."""
    pieces = _Pieces(tokenizer, fmt)
    first, second = pieces.prompt_marker(1), pieces.prompt_marker(2)
    prefix_length = next((i for i, (x, y) in enumerate(zip(first, second)) if x != y), min(len(first), len(second)))
    prompt_prefix = first[:prefix_length]
    if not prompt_prefix:
        raise ConfigError(f"model.segment_embeddings: tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} merges "
                          "the turn number into the first token of the prompt marker; turn off segment_embeddings")
    return {"a": list(pieces.model_a), "b": list(pieces.model_b), "reset": [list(prompt_prefix), list(pieces.tail[:3])]}
