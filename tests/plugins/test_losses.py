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


def _unfused_reference(final: torch.Tensor, aux: list[torch.Tensor], target: torch.Tensor,
                       detach: bool) -> torch.Tensor:
    """UnFuSeD's stage-3 loss written out (LAPE src/upstream/unfused/upstream_expert.py):
    CE(final) + 0.7 sum CE(aux_i) + 0.3 sum KL(p_final || p_aux_i) (batchmean, T=1)
    + 0.003 sum mean(2 - 2 cos(aux_i, final)); ``detach`` stops the last two at the final exit."""
    rows = torch.arange(len(target))
    teacher = final.detach() if detach else final
    p = teacher.softmax(-1)
    total = -final.log_softmax(-1)[rows, target].mean()
    for logits in aux:
        log_q = logits.log_softmax(-1)
        cos = (logits * teacher).sum(-1) / (logits.norm(dim=-1) * teacher.norm(dim=-1))
        total = total + 0.7 * -log_q[rows, target].mean()
        total = total + 0.3 * (p * (p.log() - log_q)).sum() / len(target)
        total = total + 0.003 * (2 - 2 * cos).mean()
    return total


@pytest.mark.parametrize("detach", [False, True])
def test_multi_exit_gradients_match_the_reference_formula(detach: bool) -> None:
    torch.manual_seed(0)
    final = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    aux = [torch.randn(6, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    target = torch.randint(0, 4, (6,))
    loss, _ = MultiExitDistillationLoss(detach_teacher=detach)(final, aux, target)
    expected = _unfused_reference(final, aux, target, detach)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    grads = torch.autograd.grad(loss, [final, *aux])
    for got, want in zip(grads, torch.autograd.grad(expected, [final, *aux])):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # detached, the final exit keeps only its own CE gradient (softmax - one-hot) / B
    ce_grad = (final.detach().float().softmax(-1) - F.one_hot(target, 4)) / 6
    assert torch.allclose(grads[0].float(), ce_grad, atol=1e-6) == detach


def test_multi_exit_final_exit_gradient_hand_computed() -> None:
    # One sample, one auxiliary exit, nothing detached (the reference). With p, q the softmaxes of
    # the final and auxiliary logits z, a and KL = sum p (log p - log q):
    # dCE/dz = p - e_y;  dKL/dz = p * (log p - log q - KL);  d(2 - 2 cos)/dz = -2 (a/|a| - cos z/|z|) / |z|.
    z, a = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 1.0, 0.5])
    final = z.clone().unsqueeze(0).requires_grad_()
    loss, _ = MultiExitDistillationLoss()(final, [a.unsqueeze(0)], torch.tensor([0]))
    (grad,) = torch.autograd.grad(loss, final)
    p, q = z.softmax(0), a.softmax(0)
    kl = (p * (p.log() - q.log())).sum()
    cos = (z @ a) / (z.norm() * a.norm())
    expected = (p - torch.tensor([1.0, 0.0, 0.0])) + 0.3 * p * (p.log() - q.log() - kl)
    expected = expected - 0.003 * 2 * (a / a.norm() - cos * z / z.norm()) / z.norm()
    torch.testing.assert_close(grad[0], expected)


def test_multi_exit_bf16_is_float32() -> None:
    final = torch.randn(4, 3, requires_grad=True)
    aux = torch.randn(4, 3, requires_grad=True)
    target = torch.tensor([0, 1, 2, 0])
    loss, parts = MultiExitDistillationLoss()(final.bfloat16(), [aux.bfloat16()], target)
    assert loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in parts.values())
    loss.backward()
    assert final.grad is not None and aux.grad is not None
