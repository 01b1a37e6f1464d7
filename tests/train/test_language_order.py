"""Language weights of the training sample order: a weighted permutation per epoch, world-size independent, exactly
resumable, refused when non-positive or changed between a checkpoint and its resume."""

import numpy as np
import pytest

from arena_dist.config import load_config
from arena_dist.errors import ConfigError
from arena_dist.stages import student, teacher
from arena_dist.train.data import GlobalOrder

# 400 samples, language "a" on every other one, so position in the list says nothing about language.
LANGUAGES = ["a" if i % 2 == 0 else "b" for i in range(400)]
WEIGHTS = {"a": 10.0}  # "b" gets the default weight 1


def weighted(swap_augment="none", weights=WEIGHTS, seed=7, **extra):
    return GlobalOrder(len(LANGUAGES), 8, seed, swap_augment, LANGUAGES, weights, **extra)


def epoch_samples(order, epoch=0):
    steps = range(epoch * order.steps_per_epoch, (epoch + 1) * order.steps_per_epoch)
    return np.concatenate([order.batch(step)[0] for step in steps]), np.concatenate([order.batch(s)[1] for s in steps])


@pytest.mark.parametrize("swap_augment", ["none", "random"])
def test_every_sample_once_per_epoch_with_weights(swap_augment):
    order = weighted(swap_augment)
    for epoch in (0, 1):
        samples, _ = epoch_samples(order, epoch)
        assert sorted(samples.tolist()) == list(range(400))
    assert not np.array_equal(epoch_samples(order, 0)[0], epoch_samples(order, 1)[0])  # reshuffled per epoch


def test_swap_both_with_weights_shows_each_sample_once_in_each_order():
    samples, swaps = epoch_samples(weighted("both"))
    pairs = list(zip(samples.tolist(), swaps.tolist()))
    assert sorted(pairs) == [(i, s) for i in range(400) for s in (False, True)]


def mean_positions(samples: np.ndarray) -> tuple[float, float]:
    """Mean position in the epoch (0 = first, 1 = last) of language a's samples and of the others'."""
    position = np.arange(len(samples)) / (len(samples) - 1)
    is_a = np.array([LANGUAGES[i] == "a" for i in samples])
    return float(position[is_a].mean()), float(position[~is_a].mean())


@pytest.mark.parametrize("swap_augment", ["none", "both"])
def test_heavier_language_comes_earlier_in_the_epoch(swap_augment):
    a, other = mean_positions(epoch_samples(weighted(swap_augment))[0])
    assert a < 0.35 and other > 0.65, (a, other)  # weight 10 vs 1: a sample of a precedes one of b 10 times in 11
    a, other = mean_positions(epoch_samples(GlobalOrder(400, 8, 7, swap_augment))[0])
    assert abs(a - other) < 0.1, (a, other)  # without weights neither language is favoured
    samples = epoch_samples(weighted(swap_augment))[0]
    first_tenth = samples[: len(samples) // 10]
    assert sum(LANGUAGES[i] == "a" for i in first_tenth) >= 0.8 * len(first_tenth)  # about 10 in 11 are language a


def test_default_weight_applies_to_unlisted_languages():
    a, other = mean_positions(epoch_samples(weighted(weights={"a": 1.0}, default_language_weight=10.0))[0])
    assert other < 0.35 and a > 0.65, (a, other)


def test_without_weights_the_order_is_the_plain_seeded_permutation():
    """The order runs had before weights existed, bit for bit (languages alone change nothing)."""
    for order in (GlobalOrder(400, 8, 7), GlobalOrder(400, 8, 7, "none", LANGUAGES, None)):
        for epoch in (0, 1):
            expected = np.random.default_rng([7, epoch]).permutation(400)[: order.steps_per_epoch * 8]
            assert np.array_equal(epoch_samples(order, epoch)[0], expected)


@pytest.mark.parametrize("swap_augment", ["random", "both"])
def test_weighted_order_is_world_size_independent_and_resumes_exactly(swap_augment):
    order = weighted(swap_augment)
    steps = range(0, 2 * order.steps_per_epoch, 7)
    for step in steps:  # world size 1 and 2: the ranks' shares concatenated are the same global batch
        whole = order.rank_share(step, 0, 1)
        halves = [order.rank_share(step, rank, 2) for rank in range(2)]
        assert np.array_equal(np.concatenate([h[0] for h in halves]), whole[0])
        assert np.array_equal(np.concatenate([h[1] for h in halves]), whole[1])
    position = order.position(60)  # a checkpoint in epoch 1
    resumed = weighted(swap_augment)  # a new process: only the position carries over
    resumed.check_position(position)
    for step in range(60, 60 + order.steps_per_epoch):
        assert np.array_equal(resumed.batch(step)[0], order.batch(step)[0])
        assert np.array_equal(resumed.batch(step)[1], order.batch(step)[1])


def test_resume_with_other_weights_is_refused():
    position = weighted().position(5)
    weighted().check_position(position)
    for other in (weighted(weights={"a": 5.0}), weighted(default_language_weight=2.0), GlobalOrder(400, 8, 7)):
        with pytest.raises(ConfigError, match="language_weights"):
            other.check_position(position)
    # A checkpoint from before weights existed resumes without weights only.
    old = {k: v for k, v in GlobalOrder(400, 8, 7).position(5).items() if "language" not in k}
    GlobalOrder(400, 8, 7).check_position(old)
    with pytest.raises(ConfigError, match="language_weights"):
        weighted().check_position(old)


BASE = ["output.run_dir=x", "data.dataset_dir=d", "model.arch=llama"]


@pytest.mark.parametrize("stage", [teacher.Config, student.Config])
def test_language_weights_are_a_data_setting_and_must_be_positive(stage):
    config = load_config(stage, None, BASE + ["data.language_weights={en: 4, zh: 2.5}",
                                              "data.default_language_weight=0.5"])
    assert config.data.language_weights == {"en": 4.0, "zh": 2.5} and config.data.default_language_weight == 0.5
    assert load_config(stage, None, BASE).data.language_weights is None
    with pytest.raises(ConfigError, match=r"data\.language_weights\.zh"):
        load_config(stage, None, BASE + ["data.language_weights={en: 4, zh: 0}"])
    with pytest.raises(ConfigError, match=r"data\.language_weights\.en"):
        load_config(stage, None, BASE + ["data.language_weights.en=-1"])
    with pytest.raises(ConfigError, match=r"data\.default_language_weight"):
        load_config(stage, None, BASE + ["data.language_weights.en=2", "data.default_language_weight=0"])


def test_order_refuses_a_non_positive_weight_and_summarises_the_languages():
    with pytest.raises(ConfigError, match=r"data\.language_weights\.a"):
        weighted(weights={"a": 0.0})
    with pytest.raises(ConfigError, match="default_language_weight"):
        weighted(default_language_weight=float("nan"))
    languages = ["en"] * 5 + ["zh"] * 3 + ["de", "fr"]
    order = GlobalOrder(10, 2, 0, "none", languages, {"en": 4.0, "zh": 2.0})
    assert order.language_summary() == "en=5 (weight 4), zh=3 (weight 2), 2 other languages=2 (weight 1)"
