"""Prompt layout for the classifier: chat templates, the comparison instruction, label modes.

The whole comparison goes into ONE user message of the model family's chat template, followed by the assistant
header, so the classifier reads the last token:

    <user header> {instruction}\n\n[{extra_text}\n\n]
    #Prompt1\n{prompt}\n##Model A\n{response_a}\n##Model B\n{response_b}\n
    #Prompt2\n ...                                   (kept turns, numbered from 1)
    Which is better? A, B or tie <end of user><assistant header>

Pure Python: no tokenizer or torch imports here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from arena_dist.config import StrictModel
from arena_dist.data.records import LABEL_TIE, Record
from arena_dist.errors import InputError

TemplateName = Literal["llama3", "chatml", "gemma2"]
LabelMode = Literal["3class", "2class"]
TruncationSide = Literal["left", "right", "middle"]

DEFAULT_INSTRUCTION = (
    "Two AI assistants answered the same conversation. Judge which response the user preferred."
)
OPTIONS = {
    "3class": "Which is better? A, B or tie",
    "2class": "Which is better? A or B",
}
# The words the options line offers, in class order: a verbaliser head (arena_dist.models.verbalizer) reads the causal
# LM's next-token logits for them.
ANSWER_WORDS = {"3class": ("A", "B", "tie"), "2class": ("A", "B")}


@dataclass(frozen=True)
class ChatTemplate:
    """The text around the single user message; `markers` are the special tokens it relies on."""

    name: str
    prefix: str  # start of text + user header
    suffix: str  # end of the user message + assistant header
    markers: tuple[str, ...]


TEMPLATES: dict[str, ChatTemplate] = {
    "llama3": ChatTemplate(
        "llama3",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    "chatml": ChatTemplate(
        "chatml",
        "<|im_start|>user\n",
        "<|im_end|>\n<|im_start|>assistant\n",
        ("<|im_start|>", "<|im_end|>"),
    ),
    "gemma2": ChatTemplate(
        "gemma2",
        "<bos><start_of_turn>user\n",
        "<end_of_turn>\n<start_of_turn>model\n",
        ("<bos>", "<start_of_turn>", "<end_of_turn>"),
    ),
}


def turn_prompt_marker(turn_number: int) -> str:
    return f"#Prompt{turn_number}\n"


MODEL_A_MARKER = "\n##Model A\n"
MODEL_B_MARKER = "\n##Model B\n"
TURN_END = "\n"


class SegmentShares(StrictModel):
    """Target shares of the token budget when a single turn must be cut (water-filled, see packing)."""

    prompt: float = Field(0.2, gt=0, le=1)
    response_a: float = Field(0.4, gt=0, le=1)
    response_b: float = Field(0.4, gt=0, le=1)

    def as_list(self) -> list[float]:
        return [self.prompt, self.response_a, self.response_b]


class FormatConfig(StrictModel):
    template: TemplateName = "llama3"
    max_length: int = Field(1024, ge=64)
    label_mode: LabelMode = "3class"
    truncation: TruncationSide = "middle"  # left: drop the start, right: drop the end, middle: keep head and tail
    segment_shares: SegmentShares = SegmentShares()
    min_share: float = Field(0.1, ge=0, le=1)
    instruction: str = DEFAULT_INSTRUCTION

    @model_validator(mode="after")
    def _shares_fit(self) -> "FormatConfig":
        shares = self.segment_shares.as_list()
        if sum(shares) > 1 + 1e-9:
            raise ValueError(f"segment_shares must sum to at most 1 (got {sum(shares):.3g})")
        if min(shares) < self.min_share:
            raise ValueError(f"each of segment_shares must be >= min_share={self.min_share} (got {min(shares)})")
        return self

    @property
    def chat_template(self) -> ChatTemplate:
        return TEMPLATES[self.template]

    @property
    def options_line(self) -> str:
        return OPTIONS[self.label_mode]


def num_labels(mode: LabelMode) -> int:
    return 3 if mode == "3class" else 2


def usable_in_mode(record: Record, mode: LabelMode) -> bool:
    """False for a tie in 2-class mode (callers filter these out before encoding); unlabelled rows are usable."""
    return not (mode == "2class" and record.get("label") == LABEL_TIE)


def label_in_mode(record: Record, mode: LabelMode) -> int | None:
    """The training label of a record: 0 = A, 1 = B, 2 = tie (3-class only); None when unlabelled."""
    label = record.get("label")
    if label is None:
        return None
    label = int(label)
    if label not in range(num_labels(mode)):
        if mode == "2class" and label == LABEL_TIE:
            raise InputError(f"record {record['id']}: tie label in 2class mode (filter with usable_in_mode first)")
        raise InputError(f"record {record['id']}: label {label} is not valid in {mode} mode")
    return label
