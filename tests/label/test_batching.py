import random

import pytest

from arena_dist.label.batching import (
    PaddingStats, fixed_size_batches, pad_right, padding_stats, token_budget_batches,
)


def variable_lengths(n: int, seed: int = 0) -> list[int]:
    """Lengths shaped like formatted arena rows: a long tail of long multi-turn rows."""
    rng = random.Random(seed)
    return [min(1024, int(rng.lognormvariate(5.0, 0.6))) + 8 for _ in range(n)]


def test_every_index_exactly_once_and_budget_respected():
    for seed in range(20):
        rng = random.Random(seed)
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(0, 400))]
        max_tokens = rng.choice([256, 512, 1000, 4096])
        max_rows = rng.choice([None, 3, 16])
        batches = token_budget_batches(lengths, max_tokens, max_rows)
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(len(lengths)))
        for batch in batches:
            cost = len(batch) * max(lengths[i] for i in batch)
            assert cost <= max_tokens or len(batch) == 1
            assert max_rows is None or len(batch) <= max_rows


def test_overlong_row_gets_its_own_batch():
    batches = token_budget_batches([10, 5000, 10], max_tokens=100)
    assert [1] in batches
    assert sorted(i for b in batches for i in b) == [0, 1, 2]


def test_batches_sorted_and_full():
    lengths = [50] * 10 + [100] * 10
    batches = token_budget_batches(lengths, max_tokens=500)
    # 10 rows of 50 fill a 500-token batch exactly; 100-token rows go 5 per batch.
    assert [len(b) for b in batches] == [10, 5, 5]
    assert padding_stats(lengths, batches).ratio == 1.0


def test_padding_ratio_far_below_naive():
    lengths = variable_lengths(2000)
    budget = padding_stats(lengths, token_budget_batches(lengths, max_tokens=8192))
    naive = padding_stats(lengths, fixed_size_batches(len(lengths), 16))
    assert budget.rows == naive.rows == len(lengths)
    assert budget.real_tokens == naive.real_tokens == sum(lengths)
    assert budget.ratio <= 1.1
    assert naive.ratio > 1.5 * budget.ratio


def test_deterministic():
    lengths = variable_lengths(500, seed=3)
    assert token_budget_batches(lengths, 2048) == token_budget_batches(list(lengths), 2048)


def test_stats_add_and_ratio():
    total = PaddingStats(2, 1, 10, 12, 1) + PaddingStats(1, 1, 5, 5)
    assert total.as_dict() == {"rows": 3, "batches": 2, "real_tokens": 15, "padded_tokens": 17,
                               "padding_ratio": round(17 / 15, 6), "fp32_rows": 1}
    assert PaddingStats().ratio == 1.0


def test_invalid_arguments():
    with pytest.raises(ValueError):
        token_budget_batches([1], 0)
    with pytest.raises(ValueError):
        fixed_size_batches(3, 0)


def test_pad_right():
    ids, mask = pad_right([[1, 2, 3], [4]], pad_id=0)
    assert ids == [[1, 2, 3], [4, 0, 0]]
    assert mask == [[1, 1, 1], [1, 0, 0]]
