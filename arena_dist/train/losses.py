"""The pluggable training losses: `CrossEntropy` on hard labels (teacher) and `Distillation` (student).

A loss is called as `loss(logits, targets) -> (scalar tensor, parts)` where `targets` is what the collator made besides
the model inputs (`labels`, and `soft` / `soft_mask` when any row has a soft label) and `parts` are floats for the
progress line and the metrics ("loss" always among them).

Packed micro-batches (`arena_dist.train.packing`) hold unequal numbers of rows, so there a loss is called with
`denominators` (the global step's rows with a hard / soft label): each term is then its sum over the micro-batch's
rows divided by the step's count, and the micro-batches' losses add up to the step's per-row mean.

Distillation loss: w_ce·CE(hard) + w_kl·T²·KL(teacher ‖ student at temperature T) + w_cos·(1 − cos).

Each term is averaged over the rows that have its target only: a pool row (soft label, no hard label) adds nothing to
the CE term and does not dilute it, a competition row without a soft label adds nothing to the KL / cosine terms. A
term with no present rows in the batch is exactly 0 (never NaN), so mixed batches are safe.

Teacher targets are probabilities (the label store keeps p_mean), not logits: at temperature T they become
softmax(log p / T), which equals softmax(z / T) for the teacher's own logits z. The T² factor keeps the gradient scale
of the KL term independent of T (Hinton et al.).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from arena_dist.train.data import IGNORE_LABEL  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class LossWeights:
    w_ce: float = 1.0
    w_kl: float = 1.0
    w_cos: float = 0.0
    temperature: float = 1.0


def temper_probabilities(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(log p / T): zeros stay zeros, T = 1 is the identity (after renormalising)."""
    if temperature == 1.0:
        return probs / probs.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.softmax(torch.log(probs.clamp_min(0.0)) / temperature, dim=-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over rows where `mask` is true; 0 (with a gradient path) when no row is present."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def step_mean(values: torch.Tensor, mask: torch.Tensor, denominator: int | None) -> torch.Tensor:
    """`masked_mean`, or with `denominator` (rows of the whole step with this target) this micro-batch's share."""
    if denominator is None:
        return masked_mean(values, mask)
    return (values * mask.to(values.dtype)).sum() / max(denominator, 1)


def distillation_loss(logits: torch.Tensor, hard_labels: torch.Tensor | None, soft_targets: torch.Tensor | None,
                      soft_mask: torch.Tensor | None, weights: LossWeights,
                      denominators: dict | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Return (loss, parts). `hard_labels`: long [B], IGNORE_LABEL where missing. `soft_targets`: float [B, C] teacher
    probabilities; `soft_mask`: bool [B], false where the row has no soft label (its soft_targets row is ignored).
    `denominators` ("hard", "soft"): see the module docstring."""
    logits = logits.float()
    hard_rows, soft_rows = (denominators or {}).get("hard"), (denominators or {}).get("soft")
    batch = logits.shape[0]
    zero = logits.sum() * 0.0  # keeps the graph connected when a term is absent
    parts: dict[str, float] = {}

    ce = zero
    if hard_labels is not None and weights.w_ce:
        hard_mask = hard_labels != IGNORE_LABEL
        if hard_mask.any():
            per_row = F.cross_entropy(logits, hard_labels.clamp_min(0), reduction="none")
            ce = step_mean(per_row, hard_mask, hard_rows)
        parts["n_hard"] = float(hard_mask.sum())
    parts["ce"] = float(ce.detach())

    kl = cos = zero
    if soft_targets is not None and (weights.w_kl or weights.w_cos):
        if soft_mask is None:
            soft_mask = torch.ones(batch, dtype=torch.bool, device=logits.device)
        # Missing rows may carry NaN placeholders: replace them before any arithmetic so no NaN reaches the gradient.
        targets = torch.where(soft_mask[:, None], soft_targets.float(), torch.full_like(soft_targets.float(), 1.0))
        if soft_mask.any():
            t = weights.temperature
            if weights.w_kl:
                teacher_t = temper_probabilities(targets, t)
                student_log_t = torch.log_softmax(logits / t, dim=-1)
                per_row = (torch.xlogy(teacher_t, teacher_t) - teacher_t * student_log_t).sum(dim=-1)
                kl = step_mean(per_row, soft_mask, soft_rows) * (t * t)
            if weights.w_cos:
                teacher = targets / targets.sum(dim=-1, keepdim=True)
                per_row = 1.0 - F.cosine_similarity(torch.softmax(logits, dim=-1), teacher, dim=-1)
                cos = step_mean(per_row, soft_mask, soft_rows)
        parts["n_soft"] = float(soft_mask.sum())
    parts["kl"] = float(kl.detach())
    parts["cos"] = float(cos.detach())

    loss = weights.w_ce * ce + weights.w_kl * kl + weights.w_cos * cos
    parts["loss"] = float(loss.detach())
    return loss, parts


class CrossEntropy:
    """Mean cross-entropy on hard labels (every row must have one)."""

    def __call__(self, logits: torch.Tensor, targets: dict,
                 denominators: dict | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        if denominators is None:
            loss = F.cross_entropy(logits.float(), targets["labels"])
        else:
            loss = F.cross_entropy(logits.float(), targets["labels"], reduction="sum") / max(denominators["hard"], 1)
        return loss, {"loss": float(loss.detach())}


class Distillation:
    """`distillation_loss` with fixed weights."""

    def __init__(self, weights: LossWeights):
        self.weights = weights

    def __call__(self, logits: torch.Tensor, targets: dict,
                 denominators: dict | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        loss, parts = distillation_loss(logits, targets["labels"], targets.get("soft"), targets.get("soft_mask"),
                                        self.weights, denominators)
        return loss, {k: v for k, v in parts.items() if not k.startswith("n_")}
