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
