"""`bench.gpu`, the one-GPU benchmark: its dry run (a tiny fp32 model on the CPU) goes through every case on the
project's own training and scoring code and writes numbers for each; the time budget skips cases with a reason."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu import CASES, lmsys_like_lengths, main

REPO = Path(__file__).resolve().parents[2]


def test_lengths_are_lmsys_like():
    lengths = lmsys_like_lengths(4000, 0, median=400, cap=2048)
    ordered = sorted(lengths)
    assert 350 < ordered[len(ordered) // 2] < 450
    assert max(lengths) == 2048 and min(lengths) >= 8  # the long tail is cut at the cap


def test_a_case_that_does_not_fit_the_budget_is_skipped_with_the_reason(tmp_path):
    out = tmp_path / "gpu.json"
    result = main(["--dry-run", "--budget-s", "0", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert set(result["cases"]) == set(CASES)
    for case in result["cases"].values():
        assert case["status"] == "skipped" and case["reason"].startswith("time budget")
    assert result["comparisons"] == {}


@pytest.mark.slow
def test_dry_run_measures_every_case(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--dry-run", "--budget-s", "3000", "--out", str(out)],
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] is True and result["peak_flops_per_s"] is None
    cases = result["cases"]
    assert set(cases) == set(CASES)
    assert all(case["status"] == "ok" for case in cases.values()), cases

    packed, padded = cases["teacher_zero3_packed"], cases["teacher_zero3_padded"]
    for teacher in (packed, padded):
        assert teacher["zero_stage"] == 3 and teacher["steps_timed"] >= 1
        assert teacher["step_s_median"] > 0 and teacher["real_tokens_per_s"] > 0 and teacher["matmul_params"] > 0
    assert packed["padding_ratio"] == 1.0 and padded["padding_ratio"] > 1.0  # varied lengths: padding costs
    assert packed["micro_batch_tokens"] and padded["micro_batch_tokens"] is None

    label = cases["label_prefill"]
    assert label["real_tokens"] > 0 and label["real_tokens_per_s"] > 0 and 1.0 <= label["padding_ratio"] < 1.5

    bf16, four = cases["student_bf16_lora"], cases["student_4bit_lora"]
    assert four["quantization"] == "4bit" and bf16["quantization"] == "none"
    assert four["step_s_median"] > 0 and bf16["step_s_median"] > 0
    assert 0 < four["trainable_params"] < four["total_params"]  # LoRA: the base is frozen
    assert four["weight_bytes"] < bf16["weight_bytes"]
    assert set(result["comparisons"]) == {"teacher_packed_over_padded_real_tokens_per_s",
                                          "student_4bit_over_bf16_step_time", "student_4bit_over_bf16_weight_bytes"}
