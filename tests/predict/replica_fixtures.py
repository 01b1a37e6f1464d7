"""A scorer that dies: predict's `LocalScorer` whose first scoring replica kills itself mid-call, for the replica
pool's kill test.

`die_flag`: a file path. The first replica to score while it does not exist yet creates it, scores its first
token-budget batch and kills itself with SIGKILL (as the kernel's out-of-memory killer would); every other replica
then finds the file and scores normally.
"""

from __future__ import annotations

import os
import signal

from arena_dist.predict.infer import LocalScorer


def claim(path: str) -> bool:
    """True for exactly one caller across processes: the one that creates `path`."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def members(*export_paths) -> list[dict]:
    """Predict's member dicts for plain float32 exports."""
    return [{"export_path": str(path), "dtype": "float32", "quantization": "auto", "trust_remote_code": False,
             "base_path": None} for path in export_paths]


class DyingScorer(LocalScorer):
    def __init__(self, member_specs, max_tokens: int, die_flag: str):
        super().__init__(member_specs, max_tokens)
        self.die_flag = die_flag

    def score(self, member: int, sequences):
        from arena_dist.label.batching import token_budget_batches

        if sequences and claim(self.die_flag):
            first = token_budget_batches([len(s) for s in sequences], self.max_tokens, self.max_rows)[0]
            super().score(member, [sequences[i] for i in first])
            os.kill(os.getpid(), signal.SIGKILL)
        return super().score(member, sequences)


def build_dying_scorer(member_specs, max_tokens: int, die_flag: str) -> DyingScorer:
    return DyingScorer(member_specs, max_tokens, die_flag)
