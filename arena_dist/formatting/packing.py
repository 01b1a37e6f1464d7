"""Budget math for fitting a conversation into `max_length` tokens. Pure Python, works on lengths and id lists.

- Whole turns first: keep as many of the most recent turns as fit, dropping the earliest (`recent_turns_that_fit`).
- Only when the last turn alone is too long is it cut, segment by segment (prompt / response A / response B), with
  budgets from `allocate_budgets` (water-filling on target shares with a guaranteed minimum) and `truncate`.
"""

from __future__ import annotations

import math
from typing import Sequence, TypeVar

T = TypeVar("T")

_SIDES = ("left", "right", "middle")


def truncate(ids: Sequence[T], n: int, side: str) -> list[T]:
    """Keep at most `n` items. left: drop from the start (keep the end); right: drop from the end (keep the start);
    middle: drop from the middle, keeping the head (ceil(n/2)) and the tail (floor(n/2))."""
    if side not in _SIDES:
        raise ValueError(f"truncation side must be one of {_SIDES}, got {side!r}")
    if n >= len(ids):
        return list(ids)
    if n <= 0:
        return []
    if side == "left":
        return list(ids[len(ids) - n:])
    if side == "right":
        return list(ids[:n])
    head = (n + 1) // 2
    tail = n - head
    return list(ids[:head]) + (list(ids[len(ids) - tail:]) if tail else [])


def allocate_budgets(lengths: Sequence[int], budget: int, shares: Sequence[float], min_share: float) -> list[int]:
    """Split `budget` tokens among segments of the given lengths.

    Guarantees: each allocation <= its length; the sum <= budget, and == min(budget, sum(lengths)) (the whole budget
    is used when the texts are longer); each >= min(length, floor(min_share * budget)). Between those bounds it is
    water-filling on the shares: segment i targets max(floor_i, t * share_i) for the level t that spends the budget,
    so a segment shorter than its share gives the rest to the others, in proportion to their shares.
    """
    n = len(lengths)
    if n != len(shares):
        raise ValueError(f"{n} lengths but {len(shares)} shares")
    if budget < 0 or any(length < 0 for length in lengths):
        raise ValueError("budget and lengths must be >= 0")
    if any(share <= 0 for share in shares):
        raise ValueError("shares must be > 0")
    if sum(lengths) <= budget:
        return list(lengths)
    minimum = math.floor(min_share * budget)
    floors = [min(length, minimum) for length in lengths]
    if sum(floors) > budget:
        raise ValueError(f"min_share={min_share} over {n} segments exceeds the budget")

    def level(t: float) -> list[float]:
        return [min(length, max(floor, t * share)) for length, floor, share in zip(lengths, floors, shares)]

    # sum(level(t)) is continuous, piecewise linear and non-decreasing in t, from sum(floors) <= budget to
    # sum(lengths) > budget; its kinks are where a segment starts growing (floor/share) or is full (length/share).
    # Find the linear piece that crosses the budget and solve on it exactly.
    kinks = sorted({0.0} | {f / w for f, w in zip(floors, shares)} | {x / w for x, w in zip(lengths, shares)})
    lo = 0.0
    for t in kinks:
        if sum(level(t)) >= budget:
            hi = t
            break
        lo = t
    low_sum, high_sum = sum(level(lo)), sum(level(hi))
    t = hi if high_sum == low_sum else lo + (hi - lo) * (budget - low_sum) / (high_sum - low_sum)
    exact = level(t)
    alloc = [max(floor, min(length, math.floor(x))) for x, floor, length in zip(exact, floors, lengths)]
    # Hand the few tokens lost to rounding to the segments with room, largest remainder first (ties: by index).
    order = sorted(range(n), key=lambda i: (-(exact[i] - math.floor(exact[i])), i))
    left = budget - sum(alloc)
    while left > 0:
        progressed = False
        for i in order:
            if left == 0:
                break
            if alloc[i] < lengths[i]:
                alloc[i] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    while left < 0:  # float rounding overshoot (not seen in practice): take back from the largest above its floor
        i = max((j for j in range(n) if alloc[j] > floors[j]), key=lambda j: alloc[j])
        alloc[i] -= 1
        left += 1
    return alloc


def recent_turns_that_fit(content_lengths: Sequence[int], overheads: Sequence[int], budget: int) -> int:
    """How many of the most recent whole turns fit in `budget`.

    content_lengths[j]: tokens of turn j (prompt + both responses), oldest first; overheads[i]: marker tokens of the
    (i+1)-th kept turn (kept turns are numbered from 1, so the markers depend on the position, not the turn index).
    """
    n = len(content_lengths)
    if len(overheads) < n:
        raise ValueError("need one overhead per turn")
    used = 0
    for kept in range(1, n + 1):
        used += content_lengths[n - kept] + overheads[kept - 1]
        if used > budget:
            return kept - 1
    return n
