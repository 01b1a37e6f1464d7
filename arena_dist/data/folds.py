"""Leak-free folds: every record with the same normalised prompt lands in the same fold.

fold = stable hash of the normalised prompt (all turns, NFKC + case-fold + whitespace collapse) mod K, salted with
the seed so another seed gives another split. Near-duplicate prompts that normalise equal can never straddle folds.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from arena_dist.data.normalize import hash64, prompt_key


def fold_of(prompt: Sequence[str], num_folds: int, seed: int = 0) -> int:
    return fold_of_key(prompt_key(prompt), num_folds, seed)


def fold_of_key(key: str, num_folds: int, seed: int = 0) -> int:
    """Fold of an already normalised prompt key (`normalize.prompt_key`)."""
    if num_folds < 1:
        raise ValueError(f"num_folds must be >= 1, got {num_folds}")
    return hash64(key, salt=f"fold{seed}") % num_folds


def fold_filter(folds: Iterable[int] | None, exclude_folds: Iterable[int] | None):
    """A predicate on fold numbers: in `folds` (all when None) and not in `exclude_folds`."""
    keep = None if folds is None else {int(f) for f in folds}
    drop = set() if exclude_folds is None else {int(f) for f in exclude_folds}

    def accept(fold: int) -> bool:
        return (keep is None or fold in keep) and fold not in drop

    return accept
