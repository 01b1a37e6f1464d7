"""Student training rows: competition rows with hard labels, pool rows with teacher soft labels, joined by id.

A student example is a record plus its targets: `label` (hard, may be None) and `soft` (teacher probabilities in the
student's class layout, may be None). The mix:
- competition (train split) rows keep their hard label; with `soft_on_hard_rows` they also get the teacher's soft
  label when the store has one;
- pool rows carry only a soft label; a pool row the store does not cover has no target at all and is left out and
  counted (`pool_without_soft_label`);
- in a 2-class student a tie row has no usable hard label: with a soft label it stays as a soft-only row, else it is
  left out and counted (`ties_dropped_2class`).
Counts add up: rows read = rows used + every counted exclusion.

Soft labels from a teacher with another class layout are adapted: 3 → 2 drops the tie mass and renormalises A/B,
2 → 3 adds a zero tie column.

Order, swaps and resume are the training loop's (`arena_dist.train.data.GlobalOrder`), as for the teacher.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from arena_dist.data.records import LABEL_TIE, Record
from arena_dist.train.data import Sample

@dataclass
class MixCounts:
    train_rows: int = 0
    pool_rows: int = 0
    hard_rows: int = 0  # examples with a hard label
    soft_rows: int = 0  # examples with a soft label
    pool_without_soft_label: int = 0
    ties_dropped_2class: int = 0
    used: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def adapt_soft_label(probs: Sequence[float], num_labels: int) -> list[float]:
    p = np.asarray(probs, dtype=np.float64)
    if len(p) == num_labels:
        out = p
    elif len(p) == 3 and num_labels == 2:
        out = p[:2]
    elif len(p) == 2 and num_labels == 3:
        out = np.append(p, 0.0)
    else:
        raise ValueError(f"soft label with {len(p)} classes cannot feed a {num_labels}-class student")
    total = out.sum()
    if not np.isfinite(out).all() or total <= 0:
        raise ValueError(f"soft label {list(probs)} is not a probability vector")
    return (out / total).tolist()


def mix_examples(
    train_records: Sequence[Record],
    pool_records: Sequence[Record],
    soft: dict[str, Sequence[float]] | None,
    num_labels: int,
    soft_on_hard_rows: bool,
) -> tuple[list[Sample], MixCounts]:
    from arena_dist.errors import InputError

    counts = MixCounts(train_rows=len(train_records), pool_rows=len(pool_records))
    examples: list[Sample] = []

    def soft_for(record_id: str):
        if soft is None or record_id not in soft:
            return None
        try:
            return adapt_soft_label(soft[record_id], num_labels)
        except ValueError as exc:
            raise InputError(f"soft label of record {record_id}: {exc}") from None

    for record in train_records:
        target = soft_for(record["id"]) if soft_on_hard_rows else None
        if num_labels == 2 and record["label"] == LABEL_TIE:
            if target is None:
                counts.ties_dropped_2class += 1
                continue
            record = {**record, "label": None}
        examples.append(Sample(record, target))
    for record in pool_records:
        target = soft_for(record["id"])
        if target is None:
            counts.pool_without_soft_label += 1
            continue
        examples.append(Sample({**record, "label": None}, target))
    counts.used = len(examples)
    counts.hard_rows = sum(ex.record["label"] is not None for ex in examples)
    counts.soft_rows = sum(ex.soft is not None for ex in examples)
    assert counts.train_rows + counts.pool_rows == (
        counts.used + counts.pool_without_soft_label + counts.ties_dropped_2class)
    return examples, counts
