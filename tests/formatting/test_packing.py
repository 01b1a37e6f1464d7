"""Budget math, property-style: many random cases from a seeded RNG."""

import math
import random

import pytest

from arena_dist.formatting.packing import allocate_budgets, recent_turns_that_fit, truncate


def random_shares(rng: random.Random, n: int, min_share: float) -> list[float]:
    # each >= min_share, sum <= 1 (the FormatConfig contract)
    spare = 1 - n * min_share
    cuts = sorted(rng.random() * spare * rng.choice([1, 1, 0.7]) for _ in range(n))
    parts = [b - a for a, b in zip([0] + cuts[:-1], cuts)]
    return [min_share + max(p, 1e-3) for p in parts]


@pytest.mark.parametrize("seed", range(4))
def test_allocate_budgets_properties(seed):
    rng = random.Random(seed)
    for _ in range(500):
        n = rng.choice([1, 2, 3, 3, 4])
        min_share = rng.choice([0.0, 0.05, 0.1, 0.2, 1 / (n + 1)])
        shares = random_shares(rng, n, min_share)
        budget = rng.randint(0, 600)
        lengths = [rng.choice([0, rng.randint(0, 40), rng.randint(0, 400), rng.randint(0, 3000)]) for _ in range(n)]
        alloc = allocate_budgets(lengths, budget, shares, min_share)
        case = (lengths, budget, shares, min_share, alloc)
        assert len(alloc) == n, case
        assert sum(alloc) == min(budget, sum(lengths)), case  # whole budget used when the texts are longer
        for got, length in zip(alloc, lengths):
            assert 0 <= got <= length, case
            assert got >= min(length, math.floor(min_share * budget)), case


def test_allocate_budgets_follows_shares_when_all_long():
    assert allocate_budgets([1000, 1000, 1000], 100, [0.2, 0.4, 0.4], 0.1) == [20, 40, 40]
    assert allocate_budgets([1000, 1000, 1000], 1000, [0.5, 0.25, 0.25], 0.1) == [500, 250, 250]


def test_allocate_budgets_short_segment_gives_rest_to_others():
    # the prompt needs only 5 of its 20: the other 15 go to A and B in proportion to their shares
    assert allocate_budgets([5, 1000, 1000], 100, [0.2, 0.4, 0.4], 0.1) == [5, 48, 47] or \
        allocate_budgets([5, 1000, 1000], 100, [0.2, 0.4, 0.4], 0.1) == [5, 47, 48]
    # a long prompt with a small share still keeps the minimum share
    assert allocate_budgets([1000, 1000, 1000], 100, [0.01, 0.495, 0.495], 0.1) == [10, 45, 45]


def test_allocate_budgets_everything_fits():
    assert allocate_budgets([3, 4, 5], 12, [0.2, 0.4, 0.4], 0.1) == [3, 4, 5]
    assert allocate_budgets([0, 0, 0], 0, [0.2, 0.4, 0.4], 0.1) == [0, 0, 0]


def test_allocate_budgets_rejects_bad_arguments():
    with pytest.raises(ValueError):
        allocate_budgets([1, 2], 10, [0.5], 0.1)
    with pytest.raises(ValueError):
        allocate_budgets([100, 100, 100], 10, [0.5, 0.5, 0.5], 0.5)  # minimums exceed the budget
    with pytest.raises(ValueError):
        allocate_budgets([100, 100], 10, [0.5, 0.0], 0.1)


@pytest.mark.parametrize("side", ["left", "right", "middle"])
def test_truncate_properties(side):
    rng = random.Random(7)
    for _ in range(300):
        ids = list(range(rng.randint(0, 60)))
        n = rng.randint(-2, 70)
        out = truncate(ids, n, side)
        assert len(out) == max(0, min(n, len(ids)))
        if n >= len(ids):
            assert out == ids
            continue
        if side == "left":
            assert out == ids[len(ids) - len(out):]
        elif side == "right":
            assert out == ids[:len(out)]
        else:  # head and tail kept, the middle dropped
            head = (len(out) + 1) // 2
            assert out[:head] == ids[:head]
            assert out[head:] == ids[len(ids) - (len(out) - head):]


def test_truncate_examples():
    ids = list(range(10))
    assert truncate(ids, 4, "left") == [6, 7, 8, 9]
    assert truncate(ids, 4, "right") == [0, 1, 2, 3]
    assert truncate(ids, 5, "middle") == [0, 1, 2, 8, 9]
    assert truncate(ids, 1, "middle") == [0]
    with pytest.raises(ValueError):
        truncate(ids, 4, "centre")


def test_recent_turns_that_fit():
    # turns (oldest first) cost 10, 20, 30 plus 2 marker tokens each
    assert recent_turns_that_fit([10, 20, 30], [2, 2, 2], 100) == 3
    assert recent_turns_that_fit([10, 20, 30], [2, 2, 2], 66) == 3
    assert recent_turns_that_fit([10, 20, 30], [2, 2, 2], 65) == 2  # the oldest goes first
    assert recent_turns_that_fit([10, 20, 30], [2, 2, 2], 54) == 2
    assert recent_turns_that_fit([10, 20, 30], [2, 2, 2], 53) == 1
    assert recent_turns_that_fit([10, 20, 30], [2, 2, 2], 31) == 0  # the last turn alone is too long
    # a short old turn does not get in ahead of a long recent one: only whole recent turns
    assert recent_turns_that_fit([1, 50, 30], [2, 2, 2], 40) == 1


def test_recent_turns_that_fit_random():
    rng = random.Random(3)
    for _ in range(500):
        lengths = [rng.randint(0, 50) for _ in range(rng.randint(1, 6))]
        overheads = [rng.randint(1, 5) for _ in lengths]
        budget = rng.randint(0, 200)
        k = recent_turns_that_fit(lengths, overheads, budget)
        cost = lambda j: sum(lengths[len(lengths) - j:]) + sum(overheads[:j])  # noqa: E731
        assert cost(k) <= budget
        assert k == len(lengths) or cost(k + 1) > budget
