"""Training data position, batches and evaluation slices. Plain integers only: no distributed handles here.

The global sample order does not depend on the world size: epoch `e` is a seeded permutation of all training
records, global step `s` consumes the next `global_batch` of it, and rank `r` of `W` takes its contiguous share of
that global batch. A checkpoint therefore only needs the global step (plus the checks below) to resume exactly, on
the same or on a different world size. Language weights (`data.language_weights`) change the order within each epoch,
never which samples an epoch holds.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from arena_dist.data.records import Record
from arena_dist.data.store import rank_bounds
from arena_dist.errors import ConfigError, InputError
from arena_dist.train.config import SwapMode

IGNORE_LABEL = -100  # a row without a hard label (arena_dist.train.losses uses the same value)


class GlobalOrder:
    """Seeded per-epoch permutation of the training samples, cut into global batches (the last partial batch is
    dropped). `swap_augment`: "none"; "random" (each sample once per epoch, A/B exchanged with probability 1/2); or
    "both" (each sample twice per epoch, once in each order, so an epoch is 2x as many steps).

    `language_weights` (with `languages`, one per sample): each epoch is still a permutation of every sample, but a
    weighted random one, so the samples of heavier languages tend to come earlier in the epoch and none is dropped
    (a run cut short by `max_steps` or a time limit has then mostly seen the prioritised languages). It is drawn as
    Efraimidis-Spirakis sampling without replacement of the whole epoch: key_i = u_i ** (1 / w_i), sorted descending,
    here in its equivalent log form (exponential clocks E_i / w_i sorted ascending, which does not underflow for
    small weights). Languages without a weight get `default_language_weight`. numpy offers no weighted shuffle, hence
    the few lines here. The order stays a pure function of (seed, epoch, weights, languages); without weights it is
    the plain seeded permutation, unchanged."""

    def __init__(self, num_samples: int, global_batch: int, seed: int, swap_augment: SwapMode = "none",
                 languages: Sequence[str] | None = None, language_weights: Mapping[str, float] | None = None,
                 default_language_weight: float = 1.0):
        if num_samples < global_batch:
            raise InputError(f"{num_samples} training records are fewer than one global batch of {global_batch}")
        self.num_samples, self.global_batch, self.seed = num_samples, global_batch, seed
        self.swap_augment = swap_augment
        self.epoch_length = num_samples * (2 if self.swap_augment == "both" else 1)
        self.steps_per_epoch = self.epoch_length // global_batch
        self.language_weights = ({language: float(weight) for language, weight in sorted(language_weights.items())}
                                 if language_weights else None)
        self.default_language_weight = float(default_language_weight) if self.language_weights else None
        self.sample_weights = None if self.language_weights is None else self._sample_weights(languages)
        self.language_counts = None if self.language_weights is None else dict(
            sorted(Counter(languages).items(), key=lambda item: (-item[1], item[0])))
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _sample_weights(self, languages: Sequence[str] | None) -> np.ndarray:
        """Every weight > 0, one language per sample -> each sample's weight."""
        for language, weight in (*self.language_weights.items(), ("default", self.default_language_weight)):
            if not weight > 0:  # also refuses NaN
                key = "default_language_weight" if language == "default" else f"language_weights.{language}"
                raise ConfigError(f"data.{key} is {weight!r}: a language weight must be > 0")
        if languages is None or len(languages) != self.num_samples:
            raise ValueError(f"language_weights need one language per sample ({self.num_samples}), got "
                             f"{None if languages is None else len(languages)}")
        return np.array([self.language_weights.get(language, self.default_language_weight) for language in languages],
                        dtype=np.float64)

    def _permutation(self, rng: np.random.Generator) -> np.ndarray:
        """Positions 0 .. epoch_length-1 in epoch order (position p is sample p % num_samples, swapped when
        p >= num_samples): uniform without weights (the order runs had before weights existed), else weighted."""
        if self.sample_weights is None:
            return rng.permutation(self.epoch_length)
        weights = np.tile(self.sample_weights, self.epoch_length // self.num_samples)
        return np.argsort(rng.standard_exponential(self.epoch_length) / weights, kind="stable")

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(sample index, swapped?) for every position of the epoch."""
        if epoch not in self._cache:
            rng = np.random.default_rng([self.seed, epoch])
            order = self._permutation(rng)
            if self.swap_augment == "both":
                # Both orders of every sample in the same epoch: whatever the model learns from position alone
                # cancels over an epoch, so the gradient goes to the A-vs-B content (a random-init teacher leaves
                # the class prior much sooner this way: bench/results/synth_learnability_findings.md).
                samples, swaps = order % self.num_samples, order >= self.num_samples
            else:
                coins = rng.random(self.num_samples) < 0.5 if self.swap_augment == "random" else None
                samples = order
                swaps = coins[order] if coins is not None else np.zeros(self.num_samples, bool)
            self._cache = {epoch: (samples, swaps)}  # one epoch at a time is all a run needs
        return self._cache[epoch]

    def language_summary(self) -> str:
        """Samples per weighted language and for all the others, with their weights (one short log line)."""
        counts = self.language_counts or {}
        parts = [f"{language}={counts.get(language, 0):,} (weight {weight:g})"
                 for language, weight in (self.language_weights or {}).items()]
        others = {language: n for language, n in counts.items() if language not in (self.language_weights or {})}
        if others:
            parts.append(f"{len(others)} other language{'s' if len(others) > 1 else ''}={sum(others.values()):,} "
                         f"(weight {self.default_language_weight:g})")
        return ", ".join(parts)

    def position(self, step: int) -> dict:
        """The data position after `step` completed optimizer steps (saved in checkpoints)."""
        return {
            "global_step": step,
            "epoch": step // self.steps_per_epoch,
            "step_in_epoch": step % self.steps_per_epoch,
            "samples_consumed": step * self.global_batch,
            "num_samples": self.num_samples,
            "global_batch": self.global_batch,
            "seed": self.seed,
            "swap_augment": self.swap_augment,
            "language_weights": self.language_weights,
            "default_language_weight": self.default_language_weight,
        }

    def check_position(self, position: dict) -> None:
        """A checkpoint's data position must describe this same order, or the resume would not be exact."""
        mine = self.position(int(position["global_step"]))
        for key in ("num_samples", "global_batch", "seed", "swap_augment"):
            if key in position and position[key] != mine[key]:
                raise ConfigError(f"checkpoint data position has {key}={position[key]!r} but this run has "
                                  f"{mine[key]!r}: resume with the same data and training.global_batch / seed / "
                                  "data.swap_augment")
        for key in ("language_weights", "default_language_weight"):  # absent: a checkpoint from before weights
            if position.get(key) != mine[key]:
                raise ConfigError(f"checkpoint data position has {key}={position.get(key)!r} but this run has "
                                  f"{mine[key]!r}: the sample order would differ; resume with the same "
                                  "data.language_weights and data.default_language_weight")

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(record indices, swap flags) of global step `step` (0-based)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        samples, swaps = self._epoch(epoch)
        window = slice(within * self.global_batch, (within + 1) * self.global_batch)
        return samples[window], swaps[window]

    def rank_share(self, step: int, rank: int, world_size: int) -> tuple[np.ndarray, np.ndarray]:
        indices, swaps = self.batch(step)
        start, end = rank_bounds(len(indices), rank, world_size)
        return indices[start:end], swaps[start:end]


def total_steps(order: GlobalOrder, epochs: int, max_steps: int | None) -> int:
    steps = order.steps_per_epoch * epochs
    return min(steps, max_steps) if max_steps else steps


def extra_text(record: Record, kind: str, swapped: bool) -> str | None:
    """Teacher-only side information, in the row's own A/B order."""
    if kind == "none":
        return None
    model_a, model_b = record.get("model_a") or "unknown", record.get("model_b") or "unknown"
    if swapped:
        model_a, model_b = model_b, model_a
    return f"Model A is {model_a}. Model B is {model_b}."


@dataclass
class Sample:
    """A training or evaluation row: a record (its `label` may be None) and the teacher's probabilities, if any."""

    record: Record
    soft: list[float] | None = None  # (A, B[, tie]) in the record's own order


@dataclass
class Example:
    input_ids: list[int]
    label: int | None
    soft: list[float] | None = None


def swap_soft(soft: list[float] | None) -> list[float] | None:
    """Teacher probabilities for the swapped comparison: A and B exchange, tie stays."""
    return None if soft is None else [soft[1], soft[0], *soft[2:]]


class Encoder:
    """Samples -> token ids + targets with the run's template; A/B swap per example (labels and soft labels
    follow). `require_label`: every row must have a hard label (the teacher)."""

    def __init__(self, tokenizer, fmt, extra_inputs: str = "none", require_label: bool = True):
        self.tokenizer, self.fmt, self.extra_inputs = tokenizer, fmt, extra_inputs
        self.require_label = require_label

    def encode(self, samples: Sequence[Sample], swaps: Sequence[bool]) -> list[Example]:
        from arena_dist.formatting.encode import encode_records

        out: list[Example | None] = [None] * len(samples)
        for flag in (False, True):
            picked = [i for i, s in enumerate(swaps) if bool(s) == flag]
            if not picked:
                continue
            group = [samples[i].record for i in picked]
            extras = [extra_text(r, self.extra_inputs, flag) for r in group]
            rows = encode_records(group, self.tokenizer, self.fmt, swap=flag,
                                  extra_texts=extras if self.extra_inputs != "none" else None)
            for i, row in zip(picked, rows):
                if row.label is None and self.require_label:
                    raise InputError(f"record {row.id}: no label (training needs labelled records)")
                soft = samples[i].soft
                out[i] = Example(row.input_ids, None if row.label is None else int(row.label),
                                 swap_soft(soft) if flag else soft)
        return out  # type: ignore[return-value]


def collate(examples: Sequence[Example], pad_token_id: int) -> dict:
    """Right-padded batch tensors (the classifiers read the last non-pad token) and the targets (`targets`): `labels`
    (IGNORE_LABEL where a row has none), plus `soft` and `soft_mask` when any row has a soft label."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids, dtype=torch.long)
        mask[row, : len(example.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, **targets(examples)}


def targets(examples: Sequence[Example]) -> dict:
    """Per-row targets of a micro-batch (padded or packed): hard `labels` (IGNORE_LABEL where a row has none) and,
    when any row has one, `soft` probabilities with their `soft_mask`."""
    import torch

    batch = {"labels": torch.tensor([IGNORE_LABEL if e.label is None else e.label for e in examples],
                                    dtype=torch.long)}
    softs = [e.soft for e in examples]
    if any(s is not None for s in softs):
        width = len(next(s for s in softs if s is not None))
        batch["soft"] = torch.tensor([s if s is not None else [0.0] * width for s in softs], dtype=torch.float32)
        batch["soft_mask"] = torch.tensor([s is not None for s in softs], dtype=torch.bool)
    return batch


TARGETS = ("labels", "soft", "soft_mask")


def split_targets(batch: dict) -> tuple[dict, dict]:
    """(model inputs, targets) of a collated batch."""
    return ({k: v for k, v in batch.items() if k not in TARGETS}, {k: v for k, v in batch.items() if k in TARGETS})


def micro_batches(indices: Sequence[int], micro_batch: int) -> list[list[int]]:
    return [list(indices[i:i + micro_batch]) for i in range(0, len(indices), micro_batch)]


def eval_plan(num_records: int, rank: int, world_size: int, micro_batch: int) -> list[tuple[list[int], bool]]:
    """This rank's evaluation micro-batches as (record indices, real?).

    Under ZeRO-3 every forward is collective, so every rank runs the same number of forwards: ranks with a shorter
    slice add filler batches (a repeat of record 0) whose outputs are discarded.
    """
    start, end = rank_bounds(num_records, rank, world_size)
    longest = math.ceil(num_records / world_size)
    batches = [(list(range(i, min(i + micro_batch, end))), True) for i in range(start, end, micro_batch)]
    needed = math.ceil(longest / micro_batch)
    batches += [([0], False)] * (needed - len(batches))
    return batches
