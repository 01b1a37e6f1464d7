"""Global sample order, rank shares, evaluation plans: world-size independent and exactly resumable."""

import numpy as np
import pytest

from arena_dist.errors import ConfigError, InputError
from arena_dist.train.data import GlobalOrder, eval_plan, extra_text, micro_batches, total_steps


def test_global_batches_cover_each_epoch_once():
    order = GlobalOrder(num_samples=50, global_batch=8, seed=1)
    assert order.steps_per_epoch == 6
    first_epoch = np.concatenate([order.batch(s)[0] for s in range(6)])
    assert len(set(first_epoch.tolist())) == 48  # drop_last: 2 samples sit out this epoch
    second = np.concatenate([order.batch(s)[0] for s in range(6, 12)])
    assert not np.array_equal(first_epoch, second)  # reshuffled per epoch


def test_rank_shares_do_not_depend_on_world_size():
    order = GlobalOrder(64, 8, seed=5, swap_augment="random")
    for step in (0, 3, 9):
        whole, swaps = order.batch(step)
        for world in (1, 2, 4):
            parts = [order.rank_share(step, r, world) for r in range(world)]
            assert np.array_equal(np.concatenate([p[0] for p in parts]), whole)
            assert np.array_equal(np.concatenate([p[1] for p in parts]), swaps)


def test_swap_augment_is_seeded_and_balanced():
    order = GlobalOrder(4000, 8, seed=2, swap_augment="random")
    flags = np.concatenate([order.batch(s)[1] for s in range(order.steps_per_epoch)])
    assert 0.45 < flags.mean() < 0.55
    again = GlobalOrder(4000, 8, seed=2, swap_augment="random")
    assert np.array_equal(again.batch(7)[1], order.batch(7)[1])
    assert not GlobalOrder(4000, 8, seed=2).batch(0)[1].any()


def test_swap_both_shows_every_sample_once_in_each_order_per_epoch():
    order = GlobalOrder(50, 8, seed=3, swap_augment="both")
    assert order.steps_per_epoch == 12  # 100 (sample, order) pairs per epoch, drop_last
    pairs = [(int(i), bool(s)) for step in range(12) for i, s in zip(*order.batch(step))]
    assert len(set(pairs)) == len(pairs) == 96
    full = GlobalOrder(48, 8, seed=3, swap_augment="both")
    pairs = {(int(i), bool(s)) for step in range(full.steps_per_epoch) for i, s in zip(*full.batch(step))}
    assert pairs == {(i, s) for i in range(48) for s in (False, True)}
    for world in (1, 2, 4):  # rank shares stay world-size independent
        parts = [full.rank_share(5, r, world) for r in range(world)]
        assert np.array_equal(np.concatenate([p[0] for p in parts]), full.batch(5)[0])
        assert np.array_equal(np.concatenate([p[1] for p in parts]), full.batch(5)[1])


def test_swap_augment_is_a_mode_and_part_of_the_position():
    from pydantic import ValidationError

    from arena_dist.train.config import DataSettings

    with pytest.raises(ValidationError):  # one spelling: the mode's name, never a boolean
        DataSettings(dataset_dir="d", swap_augment=True)
    order = GlobalOrder(64, 8, seed=0, swap_augment="random")
    with pytest.raises(ConfigError, match="swap_augment"):
        GlobalOrder(64, 8, seed=0, swap_augment="both").check_position(order.position(3))


def test_position_roundtrip_and_mismatch():
    order = GlobalOrder(64, 8, seed=0)
    position = order.position(11)
    assert position["epoch"] == 1 and position["step_in_epoch"] == 3 and position["samples_consumed"] == 88
    order.check_position(position)
    with pytest.raises(ConfigError, match="global_batch"):
        GlobalOrder(64, 16, seed=0).check_position(position)


def test_total_steps_and_too_small_data():
    order = GlobalOrder(64, 8, seed=0)
    assert total_steps(order, epochs=3, max_steps=None) == 24
    assert total_steps(order, epochs=3, max_steps=10) == 10
    with pytest.raises(InputError, match="fewer than one global batch"):
        GlobalOrder(5, 8, seed=0)


@pytest.mark.parametrize("records,world,micro", [(10, 2, 2), (7, 2, 2), (3, 4, 1), (9, 3, 4)])
def test_eval_plan_same_forward_count_and_full_coverage(records, world, micro):
    plans = [eval_plan(records, r, world, micro) for r in range(world)]
    assert len({len(p) for p in plans}) == 1  # every rank runs the same number of (collective) forwards
    real = sorted(i for p in plans for batch, is_real in p if is_real for i in batch)
    assert real == list(range(records))


def test_micro_batches_and_extra_text():
    assert micro_batches([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    record = {"model_a": "gpt-4", "model_b": None}
    assert extra_text(record, "none", False) is None
    assert extra_text(record, "model_names", False) == "Model A is gpt-4. Model B is unknown."
    assert extra_text(record, "model_names", True) == "Model A is unknown. Model B is gpt-4."


def test_collate_pads_and_carries_every_target():
    from arena_dist.train.data import IGNORE_LABEL, Example, collate, split_targets, swap_soft

    assert swap_soft([0.7, 0.2, 0.1]) == [0.2, 0.7, 0.1] and swap_soft(None) is None
    batch = collate([Example([5, 6, 7], 1, None), Example([8], None, [0.2, 0.5, 0.3])], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, IGNORE_LABEL]
    assert batch["soft_mask"].tolist() == [False, True] and batch["soft"][1].tolist() == pytest.approx([0.2, 0.5, 0.3])
    inputs, targets = split_targets(batch)
    assert set(inputs) == {"input_ids", "attention_mask"} and set(targets) == {"labels", "soft", "soft_mask"}
    assert "soft" not in collate([Example([1], 0)], 0)  # hard labels only: no soft targets at all
