"""Readers for rated completion sets, scored chosen/rejected pairs and conversation files (parquet or JSONL).

- `rated_completions`: UltraFeedback's layout, one prompt (`instruction`) with N `completions`, each
  `{model, response, overall_score, ...}`. The source's `pairing` rule picks the pairs (`arena_dist.data.pairing`);
  one row gives one record per pair, with the ids `<source>/<row id>/<i>-<j>` (completion indices).
- `scored_pairs`: UltraFeedback binarized, `prompt`, `chosen`, `rejected` (text or message lists), `score_chosen`,
  `score_rejected`, `prompt_id`. The winner is the higher score (the file's chosen/rejected naming is not trusted);
  equal scores give a tie in 3-class mode.
- `conversations`: one list of messages per row (`[{role, content}]` or ShareGPT's `[{from, value}]`) and nothing to
  compare: the first user turn becomes a prompt in the `prompts` split, the input of response generation.

Both rated kinds put the winner in A, like `pairwise_jsonl`, so the pipeline balances A/B the same way, and the
same two completions give the same record whatever the file shape.
"""

from __future__ import annotations

import math
from typing import Any

from arena_dist.data.pairing import pair_of, select_pairs
from arena_dist.data.records import LABEL_A, LABEL_TIE, SPLIT_PROMPTS, Record, swap_record
from arena_dist.data.sources import (
    BAD_CONVERSATION, BAD_VALUE, EMPTY_RESPONSE, MISSING_PROMPT, MISSING_SCORE, NO_PAIR, TOO_FEW_COMPLETIONS,
    PairwiseJsonlReader, Quarantined, SourceConfig, SourceReader, TableRows, reject_bad_line, merge_turns,
    parse_messages,
)


def score_value(value: Any, field: str) -> float:
    """A score as a float: a number or a numeric string; anything else (null, NaN, a bool) is a missing score."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Quarantined(MISSING_SCORE, f"{field}: no score ({value!r:.40})")
    try:
        score = float(value)
    except ValueError:
        raise Quarantined(MISSING_SCORE, f"{field}: not a number ({value!r:.40})") from None
    if not math.isfinite(score):
        raise Quarantined(MISSING_SCORE, f"{field}: {score}")
    return score


class RatedCompletionsReader(TableRows, SourceReader):
    required = ("prompt", "completions")
    optional = ("id", "language")
    default_columns = {"prompt": "instruction"}
    balance_sides = True

    def __init__(self, config: SourceConfig):
        super().__init__(config)
        self.reads_labels = True  # labelled by construction
        self.open_rows(self.required)

    def completions(self, row: dict) -> tuple[list[str], list[str | None], list[float]]:
        """(responses, models, scores) of a row's completions, every one checked."""
        pairing = self.config.pairing
        completions = row["completions"]
        if not isinstance(completions, list):
            raise Quarantined(BAD_VALUE, f"completions: expected a list, got {type(completions).__name__}")
        if len(completions) < 2:
            raise Quarantined(TOO_FEW_COMPLETIONS, f"{len(completions)} completion(s), a pair needs two")
        responses, models, scores = [], [], []
        for i, completion in enumerate(completions):
            field = f"completions[{i}]"
            if not isinstance(completion, dict):
                raise Quarantined(BAD_VALUE, f"{field}: expected an object, got {type(completion).__name__}")
            response = self.text(completion.get(pairing.response_key), f"{field}.{pairing.response_key}").strip()
            if not response:
                raise Quarantined(EMPTY_RESPONSE, f"{field}: empty {pairing.response_key}")
            responses.append(response)
            models.append(self.text(completion.get(pairing.model_key), f"{field}.{pairing.model_key}").strip() or None)
            scores.append(score_value(completion.get(pairing.score_key), f"{field}.{pairing.score_key}"))
        return responses, models, scores

    def convert(self, row_number: int, row: Any) -> list[Record]:
        reject_bad_line(row)
        prompt = self.text(row["prompt"], "prompt").strip()
        responses, models, scores = self.completions(row)
        pairs = select_pairs(scores, self.config.pairing)
        if not pairs:
            pairing = self.config.pairing
            raise Quarantined(NO_PAIR, f"scores {scores} give no pair under {pairing.rule} (min_gap {pairing.min_gap:g}"
                                       f", ties {pairing.ties})")
        base_id = self.checked_id(row["id"] if "id" in row else row_number)
        records = []
        for pair in pairs:
            first, second = sorted((pair.winner, pair.loser))
            record = self.record(row, f"{base_id}/{first}-{second}", [prompt], [responses[pair.winner]],
                                 [responses[pair.loser]], LABEL_TIE if pair.tie else LABEL_A)
            record["model_a"], record["model_b"] = models[pair.winner], models[pair.loser]
            records.append(record)
        return records


class ScoredPairsReader(TableRows, PairwiseJsonlReader):
    required = ("chosen", "rejected", "score_chosen", "score_rejected")
    optional = ("id", "prompt", "model_a", "model_b", "language")
    default_columns = {"id": "prompt_id"}

    def __init__(self, config: SourceConfig):
        SourceReader.__init__(self, config)
        self.reads_labels = True  # labelled by construction
        self.open_rows(self.required)

    def convert(self, row_number: int, row: Any) -> Record:
        reject_bad_line(row)
        scores = [score_value(row[field], field) for field in ("score_chosen", "score_rejected")]
        pair = pair_of(0, 1, scores, self.config.pairing)
        if pair is None:
            pairing = self.config.pairing
            raise Quarantined(NO_PAIR, f"scores {scores} give no pair (min_gap {pairing.min_gap:g}, "
                                       f"ties {pairing.ties})")
        record = PairwiseJsonlReader.convert(self, row_number, row)  # chosen in A
        if pair.tie:
            self.set_label(record, LABEL_TIE)
        elif pair.winner == 1:  # the file's "rejected" scored higher: the scores decide, and the winner goes in A
            record = swap_record(record)
            self.set_label(record, LABEL_A)
        return record


class ConversationsReader(TableRows, SourceReader):
    required = ("messages",)
    optional = ("id", "language")

    def __init__(self, config: SourceConfig):
        super().__init__(config)
        self.output_split = SPLIT_PROMPTS
        self.open_rows(self.required)

    @staticmethod
    def role_messages(value: Any) -> list[dict]:
        """{role, content} messages without system messages; ShareGPT's {from, value} are renamed."""
        if not isinstance(value, list):
            raise Quarantined(BAD_CONVERSATION, f"messages: expected a list of messages, got {type(value).__name__}")
        messages = []
        for item in value:
            if isinstance(item, dict) and "role" not in item and "from" in item:
                item = {"role": item["from"], "content": item.get("value")}
            if isinstance(item, dict) and str(item.get("role", "")).lower() == "system":
                continue
            messages.append(item)
        return messages

    def convert(self, row_number: int, row: Any) -> Record:
        reject_bad_line(row)
        turns = merge_turns(parse_messages(self.role_messages(row["messages"]), "messages"))
        users = [self.text(text, "messages") for role, text in turns if role == "user"]
        if not users:
            raise Quarantined(BAD_CONVERSATION, "no user turn")
        if not users[0].strip():
            raise Quarantined(MISSING_PROMPT, "the first user turn is empty")
        source_id = self.checked_id(row["id"] if "id" in row else row_number)
        return Record(id=f"{self.config.name}/{source_id}", source=self.config.name, prompt=[users[0]],
                      response_a=[], response_b=[], model_a=None, model_b=None,
                      language=self.optional_text(row, "language") or self.config.language, label=None, fold=0,
                      source_label=None)
