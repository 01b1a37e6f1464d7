"""The one console progress printer: a tqdm bar (count, rows/s, ETA) that stays readable in logs.

On a terminal it is tqdm's usual bar. Anywhere else (`ray job submit` logs, Slurm output files, a pipe) tqdm would
write every refresh as a carriage-return overwrite, one endless line in a log file; there each refresh becomes one
whole line, at most every `every_s` seconds.
"""

from __future__ import annotations

import sys

LOG_FORMAT = "{desc}: {n:,}/{total:,} {unit} ({percentage:.0f}%), {speed}, ETA {remaining}{postfix}"
LOG_FORMAT_NO_TOTAL = "{desc}: {n:,} {unit}, {speed}{postfix}"


class LineStream:
    """A file for tqdm that writes each refresh as its own line (carriage returns and blank writes dropped)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _log_bar_class():
    from tqdm import tqdm

    class LogBar(tqdm):
        """tqdm with `{speed}` for the log format: `1,234.5 rows/s` (tqdm's own rate has no space and no commas)."""

        @property
        def format_dict(self):
            values = super().format_dict
            done = values["n"] - (values.get("initial") or 0)  # rows counted as already done are not speed
            rate = values.get("rate") or (done / values["elapsed"] if values.get("elapsed") else None)
            values["speed"] = f"{rate:,.1f} {values['unit']}/s" if rate else f"? {values['unit']}/s"
            return values

    return LogBar


def progress_bar(desc: str, total: int | None = None, unit: str = "rows", every_s: float = 5.0, stream=None,
                 initial: int = 0, delay_s: float = 0.0):
    """A tqdm bar on `stream` (default stdout, where the stages print everything else). Close it (or use it as a
    context manager) to print the final line. With `delay_s`, nothing at all is printed for work that ends sooner
    (short sources stay quiet)."""
    from tqdm import tqdm

    stream = stream or sys.stdout
    terminal = bool(getattr(stream, "isatty", lambda: False)())
    if terminal:
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream, mininterval=0.5,
                    dynamic_ncols=True, delay=delay_s)
    return _log_bar_class()(
        total=total, desc=desc, unit=unit, initial=initial, file=LineStream(stream), mininterval=every_s,
        delay=delay_s,
        maxinterval=max(every_s, 10.0), miniters=1, dynamic_ncols=False, ascii=True,
        bar_format=LOG_FORMAT if total else LOG_FORMAT_NO_TOTAL)


class ShardProgress:
    """Progress of a run over input shards (label, generate): shards and rows done / total, rows/s, ETA, on the
    console (`progress_bar`) and in an atomic status.json that the report and monitoring read. Rates cover rows
    processed by this run (shards skipped as already done do not count). A stage adds its own counters through
    `extra_status` and `postfix`."""

    def __init__(self, status_path, label: str, shards_total: int, rows_total: int, print_every_s: float = 5.0,
                 stream=None):
        import time
        from pathlib import Path

        self.status_path = Path(status_path)
        self.label = label
        self.shards_total, self.rows_total = shards_total, rows_total
        self.shards_done = self.shards_skipped = self.rows_done = self.rows_processed = 0
        self.retries = 0
        self.started = time.monotonic()
        self.print_every_s, self.stream = print_every_s, stream
        self.bar = None  # started at the first update, after the shards already done were counted (not in rows/s)
        self.phase = "starting"

    def skipped(self, rows: int) -> None:
        self.shards_done += 1
        self.shards_skipped += 1
        self.rows_done += rows

    def _committed(self, rows: int) -> None:
        self.shards_done += 1
        self.rows_done += rows
        self.rows_processed += rows

    def retried(self) -> None:
        self.retries += 1

    def elapsed(self) -> float:
        import time

        return time.monotonic() - self.started

    def extra_status(self, elapsed: float) -> dict:
        return {}

    def postfix(self, status: dict) -> str:
        return ""

    def snapshot(self) -> dict:
        import time

        elapsed = self.elapsed()
        rate = self.rows_processed / elapsed if elapsed > 0 else 0.0
        eta = (self.rows_total - self.rows_done) / rate if rate > 0 else None
        return {"phase": self.phase, "shards_done": self.shards_done, "shards_total": self.shards_total,
                "shards_skipped": self.shards_skipped, "rows_done": self.rows_done, "rows_total": self.rows_total,
                "rows_per_s": round(rate, 2), "eta_s": None if eta is None else round(eta, 1),
                "elapsed_s": round(elapsed, 1), "retries": self.retries, **self.extra_status(elapsed),
                "updated_unix": round(time.time(), 3)}

    def update(self, phase: str | None = None, force: bool = False) -> dict:
        """Write status.json; the console line at most every `print_every_s` (now with `force`; the final one when
        the phase is "finalized")."""
        from arena_dist.io import atomic_write_json

        if phase:
            self.phase = phase
        status = self.snapshot()
        atomic_write_json(self.status_path, status)
        if self.bar is None:
            self.bar = progress_bar(self.label, self.rows_total, every_s=self.print_every_s, stream=self.stream,
                                    initial=self.rows_done)
        self.bar.set_postfix_str(f"{self.phase}, shards {self.shards_done}/{self.shards_total}{self.postfix(status)}, "
                                 f"retries {self.retries}", refresh=False)
        self.bar.update(self.rows_done - self.bar.n)
        if self.phase == "finalized":
            self.bar.close()
        elif force:
            self.bar.refresh()
        return status
