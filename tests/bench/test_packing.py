"""`bench.packing`: its rows have the drawn log-normal lengths once encoded, and its smallest case runs both stages
packed (one token budget, to keep it short) and padded through the real loop and writes every figure the README
table reads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu import lmsys_like_lengths
from bench.packing import MAX_LENGTH, make_dataset, template_overhead
from bench.readme_table import rows_packing

REPO = Path(__file__).resolve().parents[2]


def test_encoded_rows_have_the_drawn_lengths(tmp_path):
    from arena_dist.data.store import read_records
    from arena_dist.formatting.encode import encode_records
    from arena_dist.formatting.templates import FormatConfig
    from arena_dist.formatting.tokenizer import load_tokenizer

    dataset = make_dataset(tmp_path, rows=48, median=400, sigma=0.9, seed=1)
    records = {r["id"]: r for r in read_records(dataset, "train", 0, 1)}
    encoded = encode_records(sorted(records.values(), key=lambda r: int(r["id"].rsplit("r", 1)[1])),
                             load_tokenizer("local"), FormatConfig(max_length=MAX_LENGTH, label_mode="2class"))
    drawn = lmsys_like_lengths(48, 1, median=400, cap=MAX_LENGTH, sigma=0.9)
    floor = template_overhead() + 6
    for want, row in zip(drawn, encoded):
        assert len(row.input_ids) == max(want, floor), (want, len(row.input_ids))
    assert max(len(row.input_ids) for row in encoded) <= MAX_LENGTH


@pytest.mark.slow
def test_smallest_case_writes_every_figure(tmp_path):
    out = tmp_path / "packing.json"
    done = subprocess.run([sys.executable, "-m", "bench.packing", "--steps", "2", "--warmup", "1", "--rows", "32",
                           "--global-batch", "8", "--micro-batch", "2", "--budgets", "1024", "--out", str(out)],
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert len(result["machine"]["load_average_at_start"]) == 3 and len(result["machine"]["load_average_at_end"]) == 3
    assert result["lengths"]["median"] == 400 and result["lengths"]["cap"] == MAX_LENGTH
    for stage, world in (("teacher", 2), ("student", 1)):
        runs = result["stages"][stage]
        padded = runs["padded"]
        assert padded["world_size"] == world and padded["real_tokens_per_s"] > 0
        assert padded["padded_over_real"] > 1.0  # the rows differ in length
        for budget in result["budgets_tokens"]:
            packed = runs[f"packed_{budget}"]
            assert packed["world_size"] == world
            assert packed["padded_over_real"] == 1.0
            assert packed["max_pack_tokens"] <= MAX_LENGTH
            assert runs["speedup_tokens_per_s"][str(budget)] == pytest.approx(
                packed["real_tokens_per_s"] / padded["real_tokens_per_s"], abs=1e-3)
            assert packed["rank_imbalance_mean"] >= 1.0
        assert runs["row_lengths"]["trained_rows"]["rows"] == 2 * 8
    assert result["budgets_tokens"] == [1024]
    assert result["stages"]["student"]["packed_1024"]["rank_imbalance_max"] == 1.0  # one rank
    assert all(cell for row in rows_packing(result) for cell in row)
