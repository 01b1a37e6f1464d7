import math

import pytest
import torch

from arena_dist.train.losses import (IGNORE_LABEL, LossWeights, distillation_loss,
                                     temper_probabilities)


def test_ce_counts_only_rows_with_a_hard_label():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, -5.0, 0.0]])
    labels = torch.tensor([0, IGNORE_LABEL, 2])
    loss, parts = distillation_loss(logits, labels, None, None, LossWeights(w_ce=1.0, w_kl=0.0))
    expected = (-torch.log_softmax(logits[0], -1)[0] - torch.log_softmax(logits[2], -1)[2]) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["n_hard"] == 2


def test_kl_counts_only_rows_with_a_soft_label_and_nan_placeholders_are_harmless():
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.3, 0.2, 0.1]], requires_grad=True)
    teacher = torch.tensor([[0.7, 0.2, 0.1], [float("nan")] * 3])
    mask = torch.tensor([True, False])
    loss, parts = distillation_loss(logits, None, teacher, mask, LossWeights(w_ce=0.0, w_kl=1.0))
    p = teacher[0]
    q = torch.softmax(logits[0].detach(), -1)
    expected = float((p * (p / q).log()).sum())
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[1] == 0)  # the row without a soft label gets no gradient


def test_temperature_scales_by_t_squared_and_tempers_the_teacher():
    logits = torch.tensor([[1.0, 0.5, -1.0]])
    teacher = torch.tensor([[0.6, 0.3, 0.1]])
    t = 2.0
    loss, _ = distillation_loss(logits, None, teacher, None, LossWeights(w_ce=0.0, w_kl=1.0, temperature=t))
    pt = teacher[0] ** (1 / t)
    pt = pt / pt.sum()
    qt = torch.softmax(logits[0] / t, -1)
    expected = t * t * float((pt * (pt / qt).log()).sum())
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert torch.allclose(temper_probabilities(teacher, 1.0), teacher)


def test_cosine_term_and_weighted_sum():
    logits = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    labels = torch.tensor([1, 0])
    teacher = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    w = LossWeights(w_ce=0.5, w_kl=0.25, w_cos=2.0)
    loss, parts = distillation_loss(logits, labels, teacher, None, w)
    q = torch.softmax(logits, -1)
    cos = torch.nn.functional.cosine_similarity(q, teacher, dim=-1)
    assert parts["cos"] == pytest.approx(float((1 - cos).mean()), rel=1e-6)
    assert parts["cos"] > 0
    assert loss.item() == pytest.approx(0.5 * parts["ce"] + 0.25 * parts["kl"] + 2.0 * parts["cos"], rel=1e-6)
    # uniform teacher vs uniform student: KL of row 0 is 0; row 1: -log q[0]
    assert parts["kl"] == pytest.approx(float(-torch.log(q[1, 0])) / 2, rel=1e-5)


def test_batch_without_any_target_gives_zero_not_nan():
    logits = torch.randn(3, 3, requires_grad=True)
    labels = torch.full((3,), IGNORE_LABEL)
    loss, parts = distillation_loss(logits, labels, torch.rand(3, 3), torch.zeros(3, dtype=torch.bool), LossWeights(1, 1, 1))
    assert loss.item() == 0.0 and not math.isnan(loss.item())
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_losses_plug_into_the_loop_on_collated_targets():
    """The loop calls `loss(logits, targets)` with what `collate` made: the teacher's cross-entropy and the
    student's distillation loss agree where they should."""
    from arena_dist.train.data import Example, collate, split_targets
    from arena_dist.train.losses import CrossEntropy, Distillation

    torch.manual_seed(0)
    logits = torch.randn(3, 3, requires_grad=True)
    hard = split_targets(collate([Example([1], 0), Example([2], 2), Example([3], 1)], 0))[1]
    ce, parts = CrossEntropy()(logits, hard)
    assert set(parts) == {"loss"} and parts["loss"] == pytest.approx(float(ce.detach()))
    same, parts = Distillation(LossWeights(w_ce=1.0, w_kl=0.0))(logits, hard)
    assert float(same.detach()) == pytest.approx(float(ce.detach())) and {"loss", "ce", "kl", "cos"} <= set(parts)
    mixed = split_targets(collate([Example([1], 0), Example([2], None, [0.2, 0.7, 0.1]), Example([3], 1)], 0))[1]
    loss, parts = Distillation(LossWeights(w_ce=1.0, w_kl=1.0))(logits, mixed)
    assert parts["kl"] > 0 and parts["loss"] == pytest.approx(parts["ce"] + parts["kl"], rel=1e-5)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
