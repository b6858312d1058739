"""SSL losses against hand-computed values, invariants and figures from lightly."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabel.plugins.losses import BarlowTwinsLoss, DINOLoss, NegativeCosineSimilarity, NTXentLoss, VICRegLoss


def _pair() -> tuple[Tensor, Tensor]:
    """A fixed, seed-free pair of (6, 5) batches."""
    grid = torch.arange(30, dtype=torch.float32).reshape(6, 5)
    return torch.sin(grid), torch.cos(0.7 * grid)


def _dino_views() -> tuple[list[Tensor], list[Tensor]]:
    """Two teacher (global) views and four student views (2 global + 2 local) of a (3, 7) batch."""
    grid = torch.arange(21, dtype=torch.float32).reshape(3, 7)
    return [torch.sin(grid * (k + 1)) for k in range(2)], [torch.cos(grid * (k + 1) * 0.3) for k in range(4)]


# --- NT-Xent -----------------------------------------------------------------------------------


def test_ntxent_hand_computed_2x2() -> None:
    out0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out1 = torch.tensor([[3.0, 4.0], [-1.0, 1.0]])
    t = 0.5
    views = [[float(x) / math.hypot(*v) for x in v] for v in out0.tolist() + out1.tolist()]  # a0, a1, b0, b1
    n = 2
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        sims = {k: sum(p * q for p, q in zip(views[i], views[k])) / t for k in range(2 * n) if k != i}
        total += -math.log(math.exp(sims[positive]) / sum(math.exp(s) for s in sims.values()))
    assert NTXentLoss(temperature=t)(out0, out1).item() == pytest.approx(total / (2 * n), rel=1e-6)


def test_ntxent_identical_orthogonal_views_closed_form() -> None:
    # each anchor: its positive at cosine 1, the two other candidates at cosine 0
    x = torch.eye(2)
    assert NTXentLoss(0.5)(x, x.clone()).item() == pytest.approx(math.log(1 + 2 * math.exp(-2.0)), rel=1e-6)


def test_ntxent_identical_views_score_lower_than_random_views() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    loss = NTXentLoss(0.2)
    assert loss(x, x.clone()).item() < loss(x, y).item()


def test_ntxent_gather_distributed_is_a_no_op_in_one_process() -> None:
    a, b = _pair()
    assert NTXentLoss(gather_distributed=True)(a, b).item() == NTXentLoss()(a, b).item()


# --- negative cosine similarity ------------------------------------------------------------------


def test_negative_cosine_of_identical_and_opposite_vectors() -> None:
    x = torch.tensor([[1.0, 2.0, -3.0], [0.5, 0.0, 4.0]])
    loss = NegativeCosineSimilarity()
    assert loss(x, 3 * x).item() == pytest.approx(-1.0, abs=1e-6)
    assert loss(x, -x).item() == pytest.approx(1.0, abs=1e-6)
    assert NegativeCosineSimilarity(dim=0)(x.T, -x.T).item() == pytest.approx(1.0, abs=1e-6)


# --- Barlow Twins --------------------------------------------------------------------------------


def test_barlow_twins_is_zero_for_identity_cross_correlation() -> None:
    # columns of a 4x4 Hadamard matrix without the constant one: mean 0, variance 1, orthogonal
    z = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]])
    assert BarlowTwinsLoss()(z, z.clone()).item() == pytest.approx(0.0, abs=1e-8)


def test_barlow_twins_matches_loops() -> None:
    a, b = _pair()
    n, d, lam = a.shape[0], a.shape[1], 0.1

    def standardise(z: Tensor) -> list[list[float]]:
        cols = []
        for j in range(d):
            col = [float(z[i, j]) for i in range(n)]
            mean = sum(col) / n
            var = sum((v - mean) ** 2 for v in col) / n  # biased, eps 1e-5, as BatchNorm1d
            cols.append([(v - mean) / math.sqrt(var + 1e-5) for v in col])
        return cols

    za, zb = standardise(a), standardise(b)
    expected = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(za[i][k] * zb[j][k] for k in range(n)) / n
            expected += (1 - c) ** 2 if i == j else lam * c**2
    assert BarlowTwinsLoss(lambda_param=lam)(a, b).item() == pytest.approx(expected, rel=1e-5)


# --- VICReg --------------------------------------------------------------------------------------


def test_vicreg_matches_direct_formula() -> None:
    a, b = _pair()
    n, d, eps = a.shape[0], a.shape[1], 1e-4
    a64, b64 = a.double(), b.double()
    invariance = ((a64 - b64) ** 2).mean()

    def variance(z: Tensor) -> Tensor:
        std = torch.sqrt(((z - z.mean(0)) ** 2).sum(0) / (n - 1) + eps)
        return torch.clamp(1 - std, min=0).mean()

    def covariance(z: Tensor) -> Tensor:
        zc = z - z.mean(0)
        cov = zc.T @ zc / (n - 1)
        return sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d

    variance_term = 0.5 * (variance(a64) + variance(b64))
    expected = 2.0 * invariance + 3.0 * variance_term + 0.5 * (covariance(a64) + covariance(b64))
    got = VICRegLoss(lambda_param=2.0, mu_param=3.0, nu_param=0.5, eps=eps)(a, b)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


# --- DINO ----------------------------------------------------------------------------------------


def test_dino_skips_same_view_pairs() -> None:
    teacher, student = _dino_views()
    loss_fn = DINOLoss(7, teacher_temp=0.05)
    terms = []
    for t, q in enumerate(teacher):
        for s, x in enumerate(student):
            if s == t:  # the same global crop seen by both networks
                continue
            terms.append((-F.softmax(q / 0.05, -1) * F.log_softmax(x / 0.1, -1)).sum(-1).mean().item())
    assert len(terms) == 2 * 4 - 2
    assert loss_fn(teacher, student).item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_dino_centre_is_an_ema_of_the_teacher_batch_mean() -> None:
    teacher, student = _dino_views()
    loss_fn = DINOLoss(7, center_momentum=0.8)
    first = loss_fn(teacher, student)
    mean = torch.stack(teacher).mean(dim=(0, 1))
    assert torch.allclose(loss_fn.center.flatten(), 0.2 * mean, atol=1e-7)
    assert first.item() == pytest.approx(DINOLoss(7)(teacher, student).item(), rel=1e-6)  # old (zero) centre used
    shifted = [t + 1.0 for t in teacher]
    loss_fn.update_center(shifted)
    assert torch.allclose(loss_fn.center.flatten(), 0.8 * 0.2 * mean + 0.2 * (mean + 1.0), atol=1e-6)
    assert "center" in loss_fn.state_dict()


def test_dino_teacher_temperature_warm_up() -> None:
    loss_fn = DINOLoss(7, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=31)
    assert loss_fn.teacher_temperature(0) == pytest.approx(0.04)
    assert loss_fn.teacher_temperature(15) == pytest.approx(0.055)
    assert loss_fn.teacher_temperature(30) == pytest.approx(0.07)
    assert loss_fn.teacher_temperature(100) == pytest.approx(0.07)
    assert DINOLoss(7, 0.01, 0.07, warmup_teacher_temp_epochs=0).teacher_temperature(0) == pytest.approx(0.07)
    teacher, student = _dino_views()
    by_epoch = DINOLoss(7, 0.04, 0.07, 31)(teacher, student, epoch=15)
    by_temp = DINOLoss(7, 0.04, 0.07, 31)(teacher, student, teacher_temp=0.055)
    assert by_epoch.item() == pytest.approx(by_temp.item(), rel=1e-6)


# --- figures from lightly ------------------------------------------------------------------------


def test_losses_match_lightly_figures() -> None:
    # Figures from lightly 1.6.0 (lightly/loss/*, torch 2.14 CPU, float32), run outside this project
    # on the same inputs; lightly's code is not used here.
    a, b = _pair()
    assert NTXentLoss()(a, b).item() == pytest.approx(2.5808265209198, rel=1e-5)
    assert NTXentLoss(0.1)(a, b).item() == pytest.approx(7.286755084991455, rel=1e-5)
    assert NegativeCosineSimilarity()(a, b).item() == pytest.approx(-0.19839732348918915, rel=1e-5)
    assert BarlowTwinsLoss()(a, b).item() == pytest.approx(3.310910224914551, rel=1e-5)
    assert VICRegLoss()(a, b).item() == pytest.approx(27.0605411529541, rel=1e-5)
    teacher, student = _dino_views()
    dino = DINOLoss(7, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=5)
    assert dino(teacher, student, epoch=2).item() == pytest.approx(8.055392265319824, rel=1e-5)
    assert dino(teacher, student, epoch=9).item() == pytest.approx(8.36642074584961, rel=1e-5)  # centre updated
    lightly_centre = [0.09212172031402588, 0.06695852428674698, 0.0024430695921182632, -0.006386726163327694,
                      -0.07976998388767242, -0.07913027703762054, 0.06411852687597275]
    assert torch.allclose(dino.center.flatten(), torch.tensor(lightly_centre), atol=1e-6)


# --- mixed precision and argument checks ---------------------------------------------------------


def _dino_bf16(a: Tensor, b: Tensor) -> Tensor:
    return DINOLoss(5)([a, b], [b, a, a * 0.5])


@pytest.mark.parametrize("loss", [NTXentLoss(), NegativeCosineSimilarity(), BarlowTwinsLoss(), VICRegLoss(),
                                  _dino_bf16], ids=["ntxent", "negative_cosine", "barlow_twins", "vicreg", "dino"])
def test_float32_scalar_under_bf16_autocast(loss: nn.Module | Callable[[Tensor, Tensor], Tensor]) -> None:
    a, b = _pair()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(a.bfloat16().requires_grad_(), b.bfloat16())
    assert out.dtype == torch.float32 and out.dim() == 0 and torch.isfinite(out)
    out.backward()


@pytest.mark.parametrize(("build", "match"), [
    (lambda: NTXentLoss(temperature=0.0), "temperature must be > 0"),
    (lambda: NTXentLoss(memory_bank_size=4096), "memory banks are not supported"),
    (lambda: NegativeCosineSimilarity(eps=0.0), "eps must be > 0"),
    (lambda: BarlowTwinsLoss(lambda_param=-1.0), "lambda_param must be >= 0"),
    (lambda: VICRegLoss(mu_param=-1.0), "mu_param"),
    (lambda: VICRegLoss(eps=0.0), "eps must be > 0"),
    (lambda: DINOLoss(0), "output_dim must be >= 1"),
    (lambda: DINOLoss(8, student_temp=0.0), "student_temp"),
    (lambda: DINOLoss(8, warmup_teacher_temp_epochs=-1), "warmup_teacher_temp_epochs"),
    (lambda: DINOLoss(8, center_momentum=1.5), r"center_momentum must be in \[0, 1\]"),
])
def test_bad_constructor_arguments_raise(build: Callable[[], nn.Module], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_forward_inputs_raise() -> None:
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"must both be \(N, D\)"):
        NTXentLoss()(x, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="N > 1"):
        BarlowTwinsLoss()(x[:1], x[:1])
    with pytest.raises(ValueError, match="N > 1"):
        VICRegLoss()(x[:1], x[:1])
    dino = DINOLoss(3)
    with pytest.raises(ValueError, match="at least one cross-view pair"):
        dino([x], [x])
    with pytest.raises(ValueError, match=r"every view must be \(B, 3\)"):
        dino([x], [x, torch.zeros(4, 5)])
    with pytest.raises(ValueError, match="teacher_temp must be > 0"):
        dino([x], [x, x], teacher_temp=0.0)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        dino.teacher_temperature(-1)
