"""Progress of a labelling run: the shared shard progress (arena_dist.progress.ShardProgress) plus the teacher's id
and the padding of the batches that scored its rows."""

from __future__ import annotations

import os

from arena_dist.label.batching import PaddingStats
from arena_dist.progress import ShardProgress


class Progress(ShardProgress):
    def __init__(self, status_path: str | os.PathLike, teacher_id: str, shards_total: int, rows_total: int,
                 print_every_s: float = 5.0, stream=None):
        super().__init__(status_path, f"[label {teacher_id}]", shards_total, rows_total, print_every_s, stream)
        self.teacher_id = teacher_id
        self.padding = PaddingStats()

    def committed(self, rows: int, padding: PaddingStats) -> None:
        self._committed(rows)
        self.padding = self.padding + padding

    def extra_status(self, elapsed: float) -> dict:
        return {"teacher_id": self.teacher_id, "padding_ratio": round(self.padding.ratio, 4)}

    def postfix(self, status: dict) -> str:
        return f", padding {status['padding_ratio']:.3f}"
