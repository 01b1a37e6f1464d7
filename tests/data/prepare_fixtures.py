"""Small input files in the real source formats, written by the tests (malformed rows are written explicitly)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

LMSYS_HEADER = ["id", "model_a", "model_b", "prompt", "response_a", "response_b",
                "winner_model_a", "winner_model_b", "winner_tie"]


def lmsys_row(row_id, prompt, response_a, response_b, winner=(1, 0, 0), model_a="gpt-4", model_b="llama-2"):
    """One LMSYS row; list arguments are JSON-encoded (as in train.csv), strings are written as they are."""
    cell = lambda value: value if isinstance(value, str) else json.dumps(value)  # noqa: E731
    return [row_id, model_a, model_b, cell(prompt), cell(response_a), cell(response_b), *winner]


def write_csv(path: Path, rows: list[list], header: list[str] = LMSYS_HEADER) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    """Dicts are JSON-encoded; strings are written as raw lines (to write malformed lines)."""
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def good_lmsys_rows(n: int, start: int = 0) -> list[list]:
    return [
        lmsys_row(i, [f"question {i}"], [f"answer a {i}"], [f"answer b {i}"], winner=[(1, 0, 0), (0, 1, 0), (0, 0, 1)][i % 3])
        for i in range(start, start + n)
    ]


def pool_rows(n: int, start: int = 0) -> list[dict]:
    return [
        {"id": f"p{i}", "prompt": f"pool prompt {i % max(1, n // 3)}", "response_a": f"left {i}", "response_b": f"right {i}"}
        for i in range(start, start + n)
    ]


def quarantine_entries(dataset_dir: Path, source: str) -> list[dict]:
    path = Path(dataset_dir) / "quarantine" / f"{source}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


PAIRWISE_STYLES = ("transcript", "prompt", "messages", "messages_with_prompt")


def pairwise_row(style: str, history: list[tuple[str, str]], chosen: str, rejected: str, **extra) -> dict:
    """One chosen/rejected row for the conversation `history` ([(speaker, text)], speaker "Human" or "Assistant",
    ending with a Human turn) in one of the pairwise styles: full transcripts in chosen/rejected; an explicit
    transcript prompt ending in "Assistant:" with " response" strings; message lists without or with a prompt list."""
    role = {"Human": "user", "Assistant": "assistant"}
    transcript = "".join(f"\n\n{speaker}: {text}" for speaker, text in history)
    messages = [{"role": role[speaker], "content": text} for speaker, text in history]
    if style == "transcript":
        row = {"chosen": f"{transcript}\n\nAssistant: {chosen}", "rejected": f"{transcript}\n\nAssistant: {rejected}"}
    elif style == "prompt":
        row = {"prompt": f"{transcript}\n\nAssistant:", "chosen": f" {chosen}", "rejected": f" {rejected}"}
    elif style in ("messages", "messages_with_prompt"):
        row = {"chosen": messages + [{"role": "assistant", "content": chosen}],
               "rejected": messages + [{"role": "assistant", "content": rejected}]}
        if style == "messages_with_prompt":
            row["prompt"] = messages
    else:
        raise ValueError(f"unknown pairwise style {style!r}")
    return {**extra, **row}


def ultrafeedback_row(instruction: str, completions: list[tuple[str, str, float | None]], **extra) -> dict:
    """One row of openbmb/UltraFeedback: `instruction` and `completions` [{model, response, overall_score, ...}]
    (with the annotation fields the real file carries, which the reader ignores)."""
    return {
        "source": "evol_instruct", "instruction": instruction, "models": [model for model, _, _ in completions],
        "completions": [
            {"annotations": {"helpfulness": {"Rating": "4", "Rationale": "ok"}}, "critique": "fine",
             "custom_system_prompt": "You are a helpful assistant.", "fine-grained_score": 4.0, "model": model,
             "overall_score": score, "principle": "helpfulness", "response": response}
            for model, response, score in completions
        ],
        "correct_answers": ["None"], "incorrect_answers": ["None"], **extra,
    }


def binarized_row(prompt: str, chosen: str, rejected: str, score_chosen, score_rejected, prompt_id: str) -> dict:
    """One row of HuggingFaceH4/ultrafeedback_binarized: chosen/rejected as message lists with the prompt turn."""
    user = {"content": prompt, "role": "user"}
    chosen_messages = [user, {"content": chosen, "role": "assistant"}]
    return {"prompt": prompt, "prompt_id": prompt_id, "chosen": chosen_messages,
            "rejected": [user, {"content": rejected, "role": "assistant"}], "messages": chosen_messages,
            "score_chosen": score_chosen, "score_rejected": score_rejected}
