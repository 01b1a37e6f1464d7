"""Progress of a labelling run: shards done / total, rows/s, ETA — on the console (arena_dist.progress: a tqdm
bar, one line per refresh in logs) and in an atomic status.json that the report and monitoring read."""

from __future__ import annotations

import os
import time
from pathlib import Path

from arena_dist.io import atomic_write_json
from arena_dist.label.batching import PaddingStats
from arena_dist.progress import progress_bar


class Progress:
    """Counts committed shards; `rows_per_s` covers rows scored by this run (shards skipped as done do not count)."""

    def __init__(self, status_path: str | os.PathLike, teacher_id: str, shards_total: int, rows_total: int,
                 print_every_s: float = 5.0, stream=None):
        self.status_path = Path(status_path)
        self.teacher_id = teacher_id
        self.shards_total = shards_total
        self.rows_total = rows_total
        self.shards_done = self.shards_skipped = self.rows_done = self.rows_scored = 0
        self.retries = 0
        self.padding = PaddingStats()
        self.started = time.monotonic()
        self.print_every_s = print_every_s
        self.stream = stream
        self.bar = None  # started at the first update, after the shards already done were counted (not in rows/s)
        self.phase = "starting"

    def skipped(self, rows: int) -> None:
        self.shards_done += 1
        self.shards_skipped += 1
        self.rows_done += rows

    def committed(self, rows: int, padding: PaddingStats) -> None:
        self.shards_done += 1
        self.rows_done += rows
        self.rows_scored += rows
        self.padding = self.padding + padding

    def retried(self) -> None:
        self.retries += 1

    def snapshot(self) -> dict:
        elapsed = time.monotonic() - self.started
        rate = self.rows_scored / elapsed if elapsed > 0 else 0.0
        remaining = self.rows_total - self.rows_done
        eta = remaining / rate if rate > 0 else None
        return {
            "teacher_id": self.teacher_id,
            "phase": self.phase,
            "shards_done": self.shards_done,
            "shards_total": self.shards_total,
            "shards_skipped": self.shards_skipped,
            "rows_done": self.rows_done,
            "rows_total": self.rows_total,
            "rows_per_s": round(rate, 2),
            "eta_s": None if eta is None else round(eta, 1),
            "elapsed_s": round(elapsed, 1),
            "retries": self.retries,
            "padding_ratio": round(self.padding.ratio, 4),
            "updated_unix": round(time.time(), 3),
        }

    def update(self, phase: str | None = None, force: bool = False) -> dict:
        """Write status.json; the console line at most every `print_every_s` (now with `force`; the final one when
        the phase is "finalized")."""
        if phase:
            self.phase = phase
        status = self.snapshot()
        atomic_write_json(self.status_path, status)
        if self.bar is None:
            self.bar = progress_bar(f"[label {self.teacher_id}]", self.rows_total, every_s=self.print_every_s,
                                    stream=self.stream, initial=self.rows_done)
        self.bar.set_postfix_str(f"{self.phase}, shards {self.shards_done}/{self.shards_total}, padding "
                                 f"{status['padding_ratio']:.3f}, retries {self.retries}", refresh=False)
        self.bar.update(self.rows_done - self.bar.n)
        if self.phase == "finalized":
            self.bar.close()
        elif force:
            self.bar.refresh()
        return status
