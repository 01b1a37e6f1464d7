"""The canonical record: one comparison of two responses to the same (possibly multi-turn) prompt.

Every source is converted to this shape; every stage reads it. Texts stay as they were (after repairing encodings);
tokenised views are derived per tokenizer and never replace them.
"""

from __future__ import annotations

from typing import TypedDict

import pyarrow as pa

SCHEMA_VERSION = 1

LABEL_A, LABEL_B, LABEL_TIE = 0, 1, 2
LABEL_NAMES = ("model_a", "model_b", "tie")
UNKNOWN_LANGUAGE = "unknown"

SPLIT_TRAIN = "train"  # rows with a human (or source) label
SPLIT_POOL = "pool"  # unlabelled rows for pseudo-labelling
SPLIT_EVAL = "eval"  # labelled rows held out of training (never in a fold's training side)
SPLIT_PROMPTS = "prompts"  # prompts without responses (conversation files): the pool's input before generation


class Record(TypedDict):
    id: str  # "<source>/<id in the source>", unique in a dataset
    source: str
    prompt: list[str]  # one element per turn
    response_a: list[str]  # same number of turns as prompt
    response_b: list[str]
    model_a: str | None
    model_b: str | None
    language: str
    label: int | None  # LABEL_A / LABEL_B / LABEL_TIE, None when unlabelled
    fold: int
    # The label a labelled source gave a row it routes to the pool (the row's `label` is None there), kept so the
    # label stage's output can be compared with it; None elsewhere.
    source_label: int | None


RECORD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("prompt", pa.list_(pa.string()), nullable=False),
        pa.field("response_a", pa.list_(pa.string()), nullable=False),
        pa.field("response_b", pa.list_(pa.string()), nullable=False),
        pa.field("model_a", pa.string()),
        pa.field("model_b", pa.string()),
        pa.field("language", pa.string(), nullable=False),
        pa.field("label", pa.int8()),
        pa.field("fold", pa.int16(), nullable=False),
        pa.field("source_label", pa.int8()),
    ],
    metadata={"arena_dist.schema_version": str(SCHEMA_VERSION)},
)


def swap_record(record: Record) -> Record:
    """The same comparison with A and B exchanged; the labels follow (A <-> B, tie stays)."""
    swapped = dict(record)
    swapped["response_a"], swapped["response_b"] = record["response_b"], record["response_a"]
    swapped["model_a"], swapped["model_b"] = record["model_b"], record["model_a"]
    for key in ("label", "source_label"):
        label = record.get(key)
        if label in (LABEL_A, LABEL_B):
            swapped[key] = 1 - label
    return swapped  # type: ignore[return-value]
