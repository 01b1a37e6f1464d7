"""FLOP-based time estimates: 6 Psi per token (8 with checkpointing), forward-only labelling, MFU scaling."""

import pytest

from arena_dist.errors import ConfigError
from arena_dist.planning.models import count_params, known_model
from arena_dist.planning.time import (
    epoch_estimate, forward_flops_per_token, labelling_estimate, training_flops_per_token,
)

DIMS = known_model("meta-llama/Llama-3.3-70B")
PARAMS = count_params(DIMS, "classifier")


def test_forward_flops_are_two_per_matmul_parameter_plus_attention():
    attention = 2 * DIMS.layers * 4096 * DIMS.q_dim
    assert forward_flops_per_token(DIMS, PARAMS, 4096) == 2 * PARAMS.matmul + attention
    # the attention term is small next to 2 Psi at 4k tokens for a 70B model
    assert attention / (2 * PARAMS.matmul) < 0.1


def test_training_is_six_psi_or_eight_with_checkpointing():
    fwd = forward_flops_per_token(DIMS, PARAMS, 2048)
    assert training_flops_per_token(DIMS, PARAMS, 2048, "full", False) == 3 * fwd
    assert training_flops_per_token(DIMS, PARAMS, 2048, "full", True) == 4 * fwd
    assert training_flops_per_token(DIMS, PARAMS, 2048, "qlora", False) == 2 * fwd
    with pytest.raises(ConfigError, match="method"):
        training_flops_per_token(DIMS, PARAMS, 2048, "dpo", False)


def test_epoch_hours_scale_with_gpus_and_mfu():
    kwargs = dict(tokens=1e9, seq_len=4096, method="full", checkpointing=True, peak_tflops=312.0)
    base = epoch_estimate(DIMS, PARAMS, gpus=16, mfu=0.4, **kwargs)
    assert epoch_estimate(DIMS, PARAMS, gpus=32, mfu=0.4, **kwargs)["hours"] == pytest.approx(base["hours"] / 2)
    assert epoch_estimate(DIMS, PARAMS, gpus=16, mfu=0.2, **kwargs)["hours"] == pytest.approx(base["hours"] * 2)
    expected = 1e9 * 4 * forward_flops_per_token(DIMS, PARAMS, 4096) / (16 * 312e12 * 0.4) / 3600
    assert base["hours"] == pytest.approx(expected)
    assert 60 < base["hours"] < 100  # ~8 x 70B x 1e9 / (16 x 125 TFLOP/s) ≈ 78 h


def test_labelling_doubles_with_swap_tta():
    one = labelling_estimate(DIMS, PARAMS, 1000, 1024, False, 8, 312.0, 0.3)
    two = labelling_estimate(DIMS, PARAMS, 1000, 1024, True, 8, 312.0, 0.3)
    assert two["hours"] == pytest.approx(2 * one["hours"])
    assert one["rows_per_s"] == pytest.approx(2 * two["rows_per_s"])
    assert one["total_flops"] == pytest.approx(1000 * 1024 * forward_flops_per_token(DIMS, PARAMS, 1024))


def test_mfu_must_be_a_fraction():
    with pytest.raises(ConfigError, match="mfu"):
        epoch_estimate(DIMS, PARAMS, 1e9, 4096, "full", True, 8, 312.0, 40)
