"""Progress of a labelling run: shards done / total, rows/s, ETA — printed and in an atomic status.json."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from arena_dist.io import atomic_write_json
from arena_dist.label.batching import PaddingStats


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
        self.last_print = 0.0
        self.stream = stream or sys.stdout
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
        if phase:
            self.phase = phase
        status = self.snapshot()
        atomic_write_json(self.status_path, status)
        now = time.monotonic()
        if force or now - self.last_print >= self.print_every_s:
            self.last_print = now
            eta = "?" if status["eta_s"] is None else f"{status['eta_s']:.0f}s"
            print(
                f"[label {self.teacher_id}] {status['phase']}: shards {self.shards_done}/{self.shards_total} "
                f"rows {self.rows_done}/{self.rows_total} {status['rows_per_s']:.1f} rows/s ETA {eta} "
                f"padding {status['padding_ratio']:.3f} retries {self.retries}",
                file=self.stream, flush=True,
            )
        return status
