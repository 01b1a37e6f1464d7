"""The one thing predict's planning needs from whatever computes probabilities: a `Scorer`.

`score(member, sequences)` -> (probabilities rows x num_labels in the given order, PaddingStats). `member` indexes the
ensemble's members (one export, or one fold adapter on a shared base). Token ids come from `encode(member, records,
swap)`, since members may use different tokenizers. Two implementations: in this process (`predict.infer`), and one
replica per device in worker processes (`predict.replicas`), which the planner cannot tell apart.

A scorer is built from a picklable factory (a module-level function plus plain arguments), so a worker process can
build its own copy of the same members.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np


class Scorer(Protocol):
    def num_members(self) -> int: ...

    def num_labels(self, member: int) -> int: ...

    def encode(self, member: int, records: Sequence[dict], swap: bool) -> list[list[int]]: ...

    def score(self, member: int, sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, Any]: ...

    def close(self) -> None: ...
