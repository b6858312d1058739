"""Losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fewlabel.plugins.losses import MultiExitDistillationLoss, deepcluster_v2_loss


def test_deepcluster_loss_hand_computed() -> None:
    scores = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.5, 0.0]])]
    targets = [torch.tensor([0]), torch.tensor([2])]
    # head 1: -log(e^10 / (e^10 + 1)); head 2: -log(1 / (2 + e^5)), both at T = 0.1
    expected = (math.log1p(math.exp(-10.0)) + math.log(2 + math.exp(5.0))) / 2
    assert deepcluster_v2_loss(scores, targets, 0.1).item() == pytest.approx(expected, rel=1e-5)


def test_deepcluster_loss_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="one assignment per head"):
        deepcluster_v2_loss([torch.zeros(1, 2)], [], 0.1)
    with pytest.raises(ValueError, match="temperature"):
        deepcluster_v2_loss([torch.zeros(1, 2)], [torch.zeros(1, dtype=torch.long)], 0.0)


def test_multi_exit_loss_hand_computed() -> None:
    final = torch.tensor([[2.0, 0.0]])
    aux = [torch.tensor([[0.0, 1.0]])]
    target = torch.tensor([0])
    loss, parts = MultiExitDistillationLoss(0.7, 0.3, 0.003)(final, aux, target)
    p = torch.softmax(final, -1)
    ce = -math.log(p[0, 0].item())
    q = torch.softmax(aux[0], -1)
    aux_ce = -math.log(q[0, 0].item())
    kl = float((p * (p.log() - q.log())).sum())
    cos = float(F.cosine_similarity(final, aux[0]))
    feature = 2 - 2 * cos
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert parts["aux_ce"].item() == pytest.approx(aux_ce, rel=1e-5)
    assert parts["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert parts["feature"].item() == pytest.approx(feature, rel=1e-5)
    assert loss.item() == pytest.approx(ce + 0.7 * aux_ce + 0.3 * kl + 0.003 * feature, rel=1e-5)


def test_multi_exit_identical_exits_have_zero_distillation_terms() -> None:
    logits = torch.randn(8, 5)
    target = torch.randint(0, 5, (8,))
    _, parts = MultiExitDistillationLoss()(logits, [logits.clone(), logits.clone()], target)
    assert parts["kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert parts["feature"].item() == pytest.approx(0.0, abs=1e-6)
    assert parts["aux_ce"].item() == pytest.approx(2 * parts["ce"].item(), rel=1e-5)


def test_multi_exit_teacher_is_detached_and_bf16_is_float32() -> None:
    final = torch.randn(4, 3, requires_grad=True)
    aux = torch.randn(4, 3, requires_grad=True)
    target = torch.tensor([0, 1, 2, 0])
    loss_fn = MultiExitDistillationLoss(aux_ce_weight=0.0)
    loss, parts = loss_fn(final.bfloat16(), [aux.bfloat16()], target)
    assert loss.dtype == torch.float32
    # the final exit's gradient comes from its own CE only
    (grad,) = torch.autograd.grad(parts["ce"].new_tensor(0) + loss, final)
    (grad_ce,) = torch.autograd.grad(F.cross_entropy(final.bfloat16().float(), target), final)
    assert torch.allclose(grad, grad_ce, atol=1e-2)
