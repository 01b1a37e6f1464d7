"""Length-sorted, token-budget batching (pure Python: no torch).

A padded batch costs `rows x longest row` tokens of compute, whatever the real lengths are. Notebooks usually cut
fixed-size batches in dataset order, so a batch of short rows pays for its one long row. Here the rows are sorted by
length and packed greedily: a batch takes the next row while `(rows + 1) x longest <= max_tokens`. Neighbours in the
sorted order have nearly the same length, so padded tokens / real tokens stays close to 1.0, and the batch size adapts
to the length (many short rows, few long ones) so memory per batch stays bounded by `max_tokens`.

Used by the label stage and by predict (any inference over encoded rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class PaddingStats:
    """Real tokens vs tokens actually computed (rows x longest row per batch); rows recomputed in float32."""

    rows: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    fp32_rows: int = 0

    @property
    def ratio(self) -> float:
        """padded tokens / real tokens: 1.0 means no padding at all."""
        return self.padded_tokens / self.real_tokens if self.real_tokens else 1.0

    def __add__(self, other: "PaddingStats") -> "PaddingStats":
        return PaddingStats(
            self.rows + other.rows, self.batches + other.batches,
            self.real_tokens + other.real_tokens, self.padded_tokens + other.padded_tokens,
            self.fp32_rows + other.fp32_rows,
        )

    def as_dict(self) -> dict:
        return {
            "rows": self.rows, "batches": self.batches, "real_tokens": self.real_tokens,
            "padded_tokens": self.padded_tokens, "padding_ratio": round(self.ratio, 6), "fp32_rows": self.fp32_rows,
        }


def token_budget_batches(
    lengths: Sequence[int], max_tokens: int, max_rows: int | None = None
) -> list[list[int]]:
    """Indices into `lengths`, grouped into batches of at most `max_tokens` padded tokens (and `max_rows` rows).

    Rows are taken in ascending length (ties by index, so the result is deterministic). A single row longer than
    `max_tokens` forms a batch of its own rather than being dropped: every index appears in exactly one batch.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
    if max_rows is not None and max_rows <= 0:
        raise ValueError(f"max_rows must be > 0, got {max_rows}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        length = lengths[index]
        grown = max(longest, length)
        too_many_tokens = (len(current) + 1) * grown > max_tokens
        too_many_rows = max_rows is not None and len(current) >= max_rows
        if current and (too_many_tokens or too_many_rows):
            batches.append(current)
            current, grown = [], length
        current.append(index)
        longest = grown
    if current:
        batches.append(current)
    return batches


def fixed_size_batches(num_rows: int, batch_size: int) -> list[list[int]]:
    """The naive baseline: consecutive rows in their given order, `batch_size` rows per batch."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    return [list(range(start, min(start + batch_size, num_rows))) for start in range(0, num_rows, batch_size)]


def padding_stats(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> PaddingStats:
    real = padded = 0
    for batch in batches:
        batch_lengths = [lengths[i] for i in batch]
        real += sum(batch_lengths)
        padded += len(batch_lengths) * max(batch_lengths, default=0)
    return PaddingStats(rows=sum(len(b) for b in batches), batches=len(batches), real_tokens=real, padded_tokens=padded)


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """(input_ids, attention_mask) padded on the right to the longest sequence.

    Right padding keeps every real token at the same position as in an unpadded forward pass, and causal attention
    never lets a real token see the pads after it, so padded logits equal unpadded ones (up to float rounding).
    """
    width = max((len(s) for s in sequences), default=0)
    ids = [list(s) + [pad_id] * (width - len(s)) for s in sequences]
    mask = [[1] * len(s) + [0] * (width - len(s)) for s in sequences]
    return ids, mask
