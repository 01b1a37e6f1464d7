"""The generator pairing: two distinct models per prompt, seeded by (seed, prompt id), weighted."""

from collections import Counter

import pytest

from arena_dist.generate.pairing import pick_pair

MODELS = ["llama", "qwen", "gemma", "mistral"]
IDS = [f"conv/{i}" for i in range(2000)]


def test_two_distinct_generators_every_time_and_every_model_on_both_sides():
    pairs = [pick_pair(prompt_id, MODELS, seed=0) for prompt_id in IDS]
    assert all(a != b and a in MODELS and b in MODELS for a, b in pairs)
    sides = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    for side in sides:  # equal weights: each model about a quarter of each side
        assert set(side) == set(MODELS) and all(350 < n < 650 for n in side.values()), side


def test_the_pairing_is_seeded_by_seed_and_prompt_id_only():
    first = [pick_pair(prompt_id, MODELS, seed=7) for prompt_id in IDS[:200]]
    # same pairs in any order of asking (shards run in any order, on any actor)
    assert [pick_pair(prompt_id, MODELS, seed=7) for prompt_id in reversed(IDS[:200])] == first[::-1]
    other = [pick_pair(prompt_id, MODELS, seed=8) for prompt_id in IDS[:200]]
    assert sum(x != y for x, y in zip(first, other)) > 100


def test_weights_set_each_models_share():
    weights = [6.0, 1.0, 1.0, 0.5]
    counts = Counter(model for prompt_id in IDS for model in pick_pair(prompt_id, MODELS, weights, seed=1))
    assert counts["llama"] > 1500  # the heavy model is in almost every pair
    assert counts["llama"] > counts["qwen"] > counts["mistral"] and counts["gemma"] > counts["mistral"]


def test_two_generators_always_pair_with_each_other():
    pairs = {pick_pair(prompt_id, ["x", "y"], seed=0) for prompt_id in IDS[:100]}
    assert pairs == {("x", "y"), ("y", "x")}


def test_one_generator_is_refused():
    with pytest.raises(ValueError, match="two distinct generators"):
        pick_pair("p", ["only"])
