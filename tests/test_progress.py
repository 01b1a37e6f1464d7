"""The console progress printer (arena_dist.progress) in a log: whole lines with rows/s and ETA, no carriage-return
spam; the label stage's status.json keeps its keys."""

import io
import json
import time

from arena_dist.progress import progress_bar


def test_in_a_log_each_refresh_is_one_line_with_rate_and_eta():
    log = io.StringIO()
    bar = progress_bar("[synth] pool", 3000, every_s=0.05, stream=log)
    for _ in range(3):
        time.sleep(0.06)
        bar.update(1000)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) >= 3 and all(line.startswith("[synth] pool: ") for line in lines)
    assert lines[-1].startswith("[synth] pool: 3,000/3,000 rows (100%), ") and " rows/s, ETA " in lines[-1]


def test_short_work_with_a_delay_prints_nothing():
    log = io.StringIO()
    bar = progress_bar("source", 10, delay_s=30, stream=log)
    bar.update(10)
    bar.close()
    assert log.getvalue() == ""


def test_label_progress_status_file_and_console(tmp_path):
    from arena_dist.label.batching import PaddingStats
    from arena_dist.label.progress import Progress

    log = io.StringIO()
    progress = Progress(tmp_path / "status.json", "t1", 2, 200, print_every_s=0.01, stream=log)
    progress.skipped(100)
    progress.update("loading teacher", force=True)
    time.sleep(0.02)
    progress.committed(100, PaddingStats())
    progress.update("finalized", force=True)
    status = json.loads((tmp_path / "status.json").read_text())
    assert set(status) == {"teacher_id", "phase", "shards_done", "shards_total", "shards_skipped", "rows_done",
                           "rows_total", "rows_per_s", "eta_s", "elapsed_s", "retries", "padding_ratio",
                           "updated_unix"}
    assert status["phase"] == "finalized" and status["shards_done"] == 2 and status["rows_done"] == 200
    last = log.getvalue().splitlines()[-1]
    assert last.startswith("[label t1]: 200/200 rows (100%)") and "finalized, shards 2/2" in last
