"""Submission wall time and memory on paper: the arithmetic, the fit checks and the config's errors."""

from pathlib import Path

import pytest

from arena_dist.config import load_config
from arena_dist.errors import ConfigError
from arena_dist.planning.config import Config
from arena_dist.planning.hardware import GPUS
from arena_dist.planning.memory import GIB, quantised_bytes_per_param
from arena_dist.planning.models import count_params, known_model
from arena_dist.planning.submission import estimate_submission, inference_activation_bytes

GEMMA, QWEN = "google/gemma-2-9b-it", "Qwen/Qwen2.5-14B-Instruct"
NO_JOBS = ["teacher=null", "label=null", "student=null"]


def section(*sets: str, models: str = f"[{{name: {GEMMA}}}]", lengths: str = "submission.mean_tokens=1000"):
    return load_config(Config, overrides=[*NO_JOBS, f"submission.models={models}", lengths, *sets]).submission


def run_hours(model: dict) -> float:
    return model["compute_hours"] + model["dequant_hours"]


def test_compute_is_prefill_flops_over_devices_peak_and_efficiency():
    plan = estimate_submission(section("submission.padding=1.0", "submission.devices=1"))
    dims = known_model(GEMMA)
    params = count_params(dims, "classifier")
    row_flops = 1000 * (2 * params.matmul) + 2 * dims.layers * 1000**2 * dims.q_dim  # 2 Psi s + attention
    (gemma,) = plan["models"]
    assert gemma["flops"] == pytest.approx(25_000 * row_flops)
    assert gemma["compute_hours"] == pytest.approx(25_000 * row_flops / (65e12 * 0.2) / 3600)
    # every 4-bit forward of 8192 tokens dequantises the linear weights: 2.5 B each at 320 GB/s
    forwards = 25_000 * 1000 / 8192
    assert gemma["dequant_hours"] == pytest.approx(forwards * 2.5 * params.decoder_linear / 320e9 / 3600)
    assert gemma["dequant_hours"] < 0.02 * gemma["compute_hours"]  # prefill batches amortise it
    assert gemma["load_hours"] == pytest.approx(2 * params.total / 0.4e9 / 3600)
    assert plan["hours"] == pytest.approx(5 / 60 + gemma["load_hours"] + run_hours(gemma))


def test_doubling_rows_doubles_the_run_and_two_devices_halve_it():
    base = estimate_submission(section("submission.devices=1"))["models"][0]
    rows = estimate_submission(section("submission.devices=1", "submission.rows=50000"))["models"][0]
    two = estimate_submission(section("submission.devices=2"))["models"][0]
    assert run_hours(rows) == pytest.approx(2 * run_hours(base))
    assert rows["load_hours"] == base["load_hours"]
    assert run_hours(two) == pytest.approx(run_hours(base) / 2)
    assert two["load_hours"] == pytest.approx(2 * base["load_hours"])  # each replica reads the checkpoint


def test_tta_and_row_shares_scale_the_passes_and_int8_runs_at_its_stated_speed():
    models = f"[{{name: {GEMMA}}}, {{name: {QWEN}, rows_share: 0.5, tta_share: 1.0}}]"
    first, second = estimate_submission(section(models=models))["models"]
    assert second["row_passes"] == 25_000  # half the rows, both orders
    tta = estimate_submission(section("submission.models.0.tta_share=0.5", models=models))["models"][0]
    assert run_hours(tta) == pytest.approx(1.5 * run_hours(first))
    int8 = estimate_submission(section("submission.models.0.quantization=8bit", models=models))["models"][0]
    assert int8["compute_hours"] == pytest.approx(2 * first["compute_hours"]) and int8["dequant_hours"] == 0


def test_lengths_buckets_and_truncation():
    buckets = "submission.length_buckets=[{share: 0.5, tokens: 500}, {share: 0.5, tokens: 4000}]"
    plan = estimate_submission(section("submission.max_length=1500", lengths=buckets))
    assert plan["mean_tokens"] == 1000 and [b["tokens"] for b in plan["length_buckets"]] == [500, 1500]
    flat = estimate_submission(section())
    # same mean, but attention grows with s^2: the mix costs more than 1000 tokens for every row
    assert plan["models"][0]["flops"] > flat["models"][0]["flops"]


def test_int4_weights_fit_a_t4_where_16bit_14b_does_not():
    dims = known_model(QWEN)
    params = count_params(dims, "classifier")
    int4 = estimate_submission(section(models=f"[{{name: {QWEN}}}]"))["models"][0]["memory"]
    fp16_plan = estimate_submission(section(models=f"[{{name: {QWEN}, quantization: none}}]"))
    fp16 = fp16_plan["models"][0]["memory"]
    rest = params.total - params.decoder_linear  # embeddings, norms, biases, score head stay 16-bit
    largest = 5120 * 13824  # the gate/up projection, dequantised to 16 bits for each matmul
    expected = params.decoder_linear * quantised_bytes_per_param(4) + 2 * rest + 2 * largest
    assert int4["weights_gib"] == pytest.approx(expected / GIB, abs=1e-3)
    assert int4["fits"] and int4["total_gib"] < 15.0
    assert fp16["weights_gib"] == pytest.approx(2 * params.total / GIB, abs=1e-3) and not fp16["fits"]
    assert fp16["max_batch_tokens"] == 0
    assert fp16_plan["fits_budget"] and not fp16_plan["fits_memory"] and not fp16_plan["fits"]


def test_largest_batch_is_the_largest_that_fits_and_eager_and_kv_cache_cost_what_they_say():
    mem = estimate_submission(section())["models"][0]["memory"]
    at_max = estimate_submission(section(f"submission.batch_tokens={mem['max_batch_tokens']}"))["models"][0]
    above = estimate_submission(section(f"submission.batch_tokens={mem['max_batch_tokens'] + 1}"))["models"][0]
    assert at_max["memory"]["fits"] and not above["memory"]["fits"]
    dims = known_model(GEMMA)
    eager, _ = inference_activation_bytes(dims, 2048, "eager", True, 4)
    sdpa, _ = inference_activation_bytes(dims, 2048, "sdpa", True, 4)
    no_cache, _ = inference_activation_bytes(dims, 2048, "sdpa", False, 4)
    assert eager - sdpa == 8 * dims.heads * 2048
    assert sdpa - no_cache == 4 * dims.layers * dims.kv_dim
    # Gemma-2 defaults to eager (its soft-capping), so its activations grow with the longest row
    short = estimate_submission(section(lengths="submission.mean_tokens=500"))["models"][0]["memory"]
    assert mem["activations_gib"] - short["activations_gib"] == pytest.approx(
        8192 * 8 * dims.heads * 500 / GIB, abs=1e-3)


def test_fits_flips_at_the_budget_and_the_largest_shares_spend_exactly_the_margin():
    models = f"[{{name: {GEMMA}, tta_share: 0.2}}, {{name: {QWEN}, rows_share: 0.5}}]"
    plan = estimate_submission(section(models=models))
    hours = plan["hours"]
    assert estimate_submission(section(f"submission.budget_hours={hours * 1.001}", models=models))["fits"]
    over = estimate_submission(section(f"submission.budget_hours={hours * 0.999}", models=models))
    assert not over["fits"] and over["fits_memory"] and over["margin_hours"] < 0
    budget = hours + 1.0
    first, second = estimate_submission(section(f"submission.budget_hours={budget}", models=models))["models"]
    assert 0.2 < first["max_tta_share"] < 1 and 0.5 < second["max_rows_share"] < 1
    spent = estimate_submission(section(f"submission.budget_hours={budget}",
                                        f"submission.models.0.tta_share={first['max_tta_share']}", models=models))
    assert spent["hours"] == pytest.approx(budget)
    spent = estimate_submission(section(f"submission.budget_hours={budget}",
                                        f"submission.models.1.rows_share={second['max_rows_share']}", models=models))
    assert spent["hours"] == pytest.approx(budget)
    assert first["max_rows_share"] is None  # the first model scores every row


def test_a_model_given_by_size_only():
    plan = estimate_submission(section(models="[{params: 9.0e+9, quantization: 4bit}]"))
    (model,) = plan["models"]
    assert model["flops"] == pytest.approx(25_000 * 1000 * 2 * 9e9 * 1.02)
    assert model["memory"]["activations_gib"] is None and model["memory"]["max_batch_tokens"] is None
    assert model["memory"]["weights_gib"] == pytest.approx(9e9 * quantised_bytes_per_param(4) / GIB, abs=1e-3)


def test_t4_is_in_the_table_without_bf16():
    t4 = GPUS["t4-16gb"]
    assert (t4.peak_tflops_bf16, t4.memory_bandwidth_gb_s, t4.bf16) == (65.0, 320.0, False)
    assert estimate_submission(section())["dtype"] == "fp16"
    assert all(gpu.memory_bandwidth_gb_s for gpu in GPUS.values())


@pytest.mark.parametrize("sets,match", [
    (["submission.gpu=t5"], r"submission\.gpu: unknown GPU 't5'; use one of"),
    ([f"submission.models=[{{name: {GEMMA}}}, {{name: acme/x}}]"], r"submission\.models\.1\.name: unknown model"),
    (["submission.models=[{layers: 2}]"], r"submission\.models\.0: give submission\.models\.0\.name or all"),
])
def test_unknown_names_are_errors_naming_the_key(sets, match):
    with pytest.raises(ConfigError, match=match):
        estimate_submission(section(*sets))


@pytest.mark.parametrize("sets,match", [
    (["submission.mean_tokens=null", "submission.length_buckets=[{share: 0.5, tokens: 100}]"],
     r"length_buckets: the shares sum to 0\.5, not 1"),
    (["submission.mean_tokens=null"], "give one of submission.mean_tokens and submission.length_buckets"),
    ([f"submission.models=[{{name: {GEMMA}, rows_share: 0.5}}]"], r"models\.0\.rows_share: the first model"),
    ([f"submission.models=[{{name: {GEMMA}, params: 9.0e+9}}]"], "name .or dims. or params, not both"),
    (["submission.models=[]"], r"submission\.models: List should have at least 1 item"),
    (["submission.models.0.tta_share=1.5"], r"submission\.models\.0\.tta_share"),
])
def test_bad_sections_are_config_errors(sets, match):
    with pytest.raises(ConfigError, match=match):
        section(*sets)


def test_label_needs_the_teacher_and_something_must_be_planned():
    with pytest.raises(ConfigError, match="label: pseudo-labelling is planned with the teacher"):
        load_config(Config, overrides=["teacher=null"])
    with pytest.raises(ConfigError, match="nothing to plan"):
        load_config(Config, overrides=NO_JOBS)


def test_doc_quotes_the_shipped_plan():
    repo = Path(__file__).resolve().parents[2]
    config = load_config(Config, repo / "launch" / "configs" / "plan_submission_2xt4.yaml")
    plan = estimate_submission(config.submission)
    gemma, qwen = plan["models"]
    row = (f"| {gemma['hours']:.2f} h | {qwen['hours']:.2f} h | {plan['hours']:.2f} h | yes, "
           f"{plan['margin_hours']:+.2f} h |")
    doc = (repo / "docs" / "submission_estimate.md").read_text()
    assert row in doc, f"docs/submission_estimate.md is stale: {row}"
    assert f"mean {plan['mean_tokens']:.0f} tokens" in doc
    assert f"{gemma['max_tta_share']:.0%} (Gemma)" in doc and f"score is {qwen['max_rows_share']:.0%}" in doc
