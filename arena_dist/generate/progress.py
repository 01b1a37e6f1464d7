"""Progress of a generation run: the shared shard progress (arena_dist.progress.ShardProgress) plus generated
tokens/s."""

from __future__ import annotations

import os

from arena_dist.progress import ShardProgress


class GenerateProgress(ShardProgress):
    def __init__(self, status_path: str | os.PathLike, shards_total: int, rows_total: int,
                 print_every_s: float = 5.0, stream=None):
        super().__init__(status_path, "[generate]", shards_total, rows_total, print_every_s, stream)
        self.new_tokens = 0

    def committed(self, rows: int, new_tokens: int) -> None:
        self._committed(rows)
        self.new_tokens += new_tokens

    def extra_status(self, elapsed: float) -> dict:
        return {"new_tokens_per_s": round(self.new_tokens / elapsed, 1) if elapsed else 0}

    def postfix(self, status: dict) -> str:
        return f", {status['new_tokens_per_s']} tokens/s"
