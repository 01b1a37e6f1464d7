"""A module-level `Scorer` factory over tiny exports for the replica tests and the predict bench: each member is an
export loaded with predict's `load_model` and scored with the label stage's `score_token_ids`, as predict's
in-process scorer does.

`die_flag`: a file path. The first replica to score while it does not exist yet creates it, scores its first
token-budget batch and kills itself with SIGKILL (as the kernel's out-of-memory killer would); every other replica
then finds the file and scores normally.
"""

from __future__ import annotations

import os
import signal

from arena_dist.predict.infer import load_model


def claim(path: str) -> bool:
    """True for exactly one caller across processes: the one that creates `path`."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class ExportScorer:
    def __init__(self, export_paths, max_tokens: int, max_rows: int | None = None, die_flag: str | None = None):
        self.members = [load_model(str(path)) for path in export_paths]
        self.max_tokens, self.max_rows, self.die_flag = max_tokens, max_rows, die_flag

    def num_members(self) -> int:
        return len(self.members)

    def num_labels(self, member: int) -> int:
        return self.members[member].num_labels

    def encode(self, member: int, records, swap: bool) -> list[list[int]]:
        from arena_dist.formatting.encode import encode_records

        loaded = self.members[member]
        return [row.input_ids for row in encode_records(records, loaded.tokenizer, loaded.fmt, swap=swap)]

    def score(self, member: int, sequences):
        from arena_dist.label.batching import token_budget_batches
        from arena_dist.label.scoring import score_token_ids

        model = self.members[member].model
        if self.die_flag and sequences and claim(self.die_flag):
            first = token_budget_batches([len(s) for s in sequences], self.max_tokens, self.max_rows)[0]
            score_token_ids(model, [sequences[i] for i in first], self.max_tokens, self.max_rows)
            os.kill(os.getpid(), signal.SIGKILL)
        return score_token_ids(model, sequences, self.max_tokens, self.max_rows)

    def close(self) -> None:
        self.members = []


def build_export_scorer(export_paths, max_tokens: int = 4096, max_rows: int | None = None,
                        die_flag: str | None = None) -> ExportScorer:
    return ExportScorer(export_paths, max_tokens, max_rows, die_flag)
