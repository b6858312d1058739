"""Test-time adaptation wrappers: hand-computed cases, invariants and the authors' figures."""

from __future__ import annotations

import copy
import math

import pytest
import timm.layers
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabel.plugins.tta import (
    EATA,
    SAM,
    SAR,
    T3A,
    BNAdapt,
    ModelFlags,
    Tent,
    check_model,
    check_tta_kwargs,
    collect_params,
    configure_model,
    create_tta,
    fisher_information,
    list_tta_methods,
    softmax_entropy,
)

# ----------------------------------------------------------------------------- fixed models


def reference_model() -> nn.Sequential:
    """The fixed model of the reference runs below: every value set by formula, no RNG."""
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    with torch.no_grad():
        model[0].weight.copy_(torch.sin(torch.arange(54, dtype=torch.float32)).reshape(3, 2, 3, 3))
        model[1].weight.copy_(torch.tensor([1.0, 0.5, 1.5]))
        model[1].bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        model[1].running_mean.copy_(torch.tensor([0.2, -0.1, 0.0]))
        model[1].running_var.copy_(torch.tensor([1.5, 0.7, 2.0]))
        model[5].weight.copy_(torch.cos(torch.arange(12, dtype=torch.float32)).reshape(4, 3))
        model[5].bias.copy_(torch.tensor([0.0, 0.1, -0.1, 0.2]))
    return model


def reference_inputs(k: int) -> Tensor:
    return torch.sin(0.37 * torch.arange(200, dtype=torch.float32) + k).reshape(4, 2, 5, 5) * (1 + k)


def sharp_reference_model() -> nn.Sequential:
    """The reference model with a 6x head: confident enough for EATA's and SAR's filters."""
    model = reference_model()
    with torch.no_grad():
        model[5].weight.mul_(6.0)
    return model


class ToyNorm(nn.Module):
    """``x * weight + bias``: a "norm layer" (found by name) whose gradients are easy to write down."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight + self.bias


def toy_model(weight: list[float], bias: list[float]) -> nn.Sequential:
    """logits = x * weight + bias (a frozen identity Linear first, so not every parameter trains)."""
    c = len(weight)
    model = nn.Sequential(nn.Linear(c, c), ToyNorm(c))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(c))
        model[0].bias.zero_()
        model[1].weight.copy_(torch.tensor(weight))
        model[1].bias.copy_(torch.tensor(bias))
    return configure_model(model)


def small_cnn(norm: str = "bn") -> nn.Sequential:
    torch.manual_seed(0)
    layer = {"bn": lambda c: nn.BatchNorm2d(c), "gn": lambda c: nn.GroupNorm(2, c),
             "ln": lambda c: timm.layers.LayerNorm2d(c)}[norm]
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), layer(4), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1),
                          layer(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    if norm == "bn":  # source statistics from "clean" data
        model.train()
        with torch.no_grad():
            for _ in range(20):
                model(torch.randn(32, 1, 6, 6))
    return model.eval()


def shifted_batch(n: int = 32) -> Tensor:
    torch.manual_seed(1)
    return 3.0 * torch.randn(n, 1, 6, 6) + 2.0


def state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- norm layers


def test_collect_params_finds_bn_ln_gn_and_timm_norms() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), timm.layers.LayerNorm2d(4),
        timm.layers.BatchNormAct2d(4), timm.layers.GroupNormAct(4, num_groups=2), timm.layers.RmsNorm2d(4),
        nn.LayerNorm(4, elementwise_affine=False), nn.Flatten(), nn.LayerNorm(4), nn.Linear(4, 2),
    )
    _, names = collect_params(model)
    assert names == ["1.weight", "1.bias", "2.weight", "2.bias", "3.weight", "3.bias", "4.weight", "4.bias",
                     "5.weight", "5.bias", "6.weight", "9.weight", "9.bias"]


def test_configure_model_and_flags_restore() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.LayerNorm(4), nn.Linear(4, 2))
    model.train()
    flags = ModelFlags.capture(model)
    configure_model(model)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["1.weight", "1.bias", "3.weight", "3.bias"]
    assert model[1].training and not model[1].track_running_stats
    assert not model[2].training and not model.training  # dropout stays off (unlike the reference's model.train())
    assert model[1].running_mean is not None  # buffers kept, so the state dict keeps its keys
    check_model(model)
    flags.restore(model)
    assert model.training and model[2].training and model[1].track_running_stats
    assert all(p.requires_grad for p in model.parameters())


def test_check_model_messages() -> None:
    with pytest.raises(ValueError, match="normalisation layers"):
        check_model(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="configure_model"):
        check_model(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))  # every parameter trains


# ----------------------------------------------------------------------------- Tent

# Figures from the authors' code: github DequanWang/tent, commit e9e926a668d85244c66a6d5c006efbd2b82e83e8,
# tent.py (configure_model, collect_params, check_model, Tent) run outside this project (torch 2.14.1, CPU)
# on reference_model() and reference_inputs(0), (1), (2), one step per batch, continual.
REF_SGD = {  # torch.optim.SGD(params, lr=0.5, momentum=0.9)
    "out0": [[0.16944926977157593, -0.18198060989379883, 0.28886815905570984, -0.28797245025634766],
             [0.16917499899864197, -0.18747588992118835, 0.3000229299068451, -0.30456358194351196],
             [0.19721615314483643, -0.21954524517059326, 0.33547866344451904, -0.34269601106643677],
             [0.2411816269159317, -0.26700499653816223, 0.38548287749290466, -0.3942437767982483]],
    "out2": [[0.4821658730506897, -0.5134117007255554, 0.6323801875114441, -0.6366901397705078],
             [0.48383256793022156, -0.5102638602256775, 0.6244807839393616, -0.6241971850395203],
             [0.46395978331565857, -0.4840342700481415, 0.5924192667007446, -0.5869455933570862],
             [0.4248267710208893, -0.44070926308631897, 0.5457695126533508, -0.5379047393798828]],
    "bn.weight": [1.3445931673049927, 0.7603060603141785, 1.4327808618545532],
    "bn.bias": [0.520745575428009, 0.06775066256523132, 0.2154049128293991],
    "entropy": [1.3492693901062012, 1.3241345882415771, 1.258296251296997],
}
REF_ADAM = {  # torch.optim.Adam(params, lr=1e-2)
    "out1": [[0.27308231592178345, -0.29308855533599854, 0.4052271544933319, -0.407253623008728],
             [0.25175511837005615, -0.26646173000335693, 0.3738335371017456, -0.37172168493270874],
             [0.21558327972888947, -0.23036807775497437, 0.33854061365127563, -0.33793574571609497],
             [0.17495466768741608, -0.19449594616889954, 0.30814293026924133, -0.3136208653450012]],
    "bn.weight": [1.0300490856170654, 0.5300384163856506, 1.4699575901031494],
    "bn.bias": [0.13004831969738007, -0.1699860692024231, 0.26998233795166016],
}
# steps=2, episodic=True, SGD lr=0.5 on reference_inputs(1): the outputs; the reference leaves the model with
# these BatchNorm parameters (it resets before the next batch; this wrapper resets right after the batch).
REF_EPISODIC_OUT = [[0.3386215567588806, -0.3606957495212555, 0.47354909777641296, -0.4749228358268738],
                    [0.309857577085495, -0.32643866539001465, 0.4344846308231354, -0.4318329095840454],
                    [0.27409303188323975, -0.2907234728336334, 0.39953354001045227, -0.3983455300331116],
                    [0.23408626019954681, -0.25575360655784607, 0.3703005015850067, -0.37543439865112305]]


def _close(actual: Tensor, expected: list, atol: float = 2e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), atol=atol, rtol=0)


def test_tent_matches_reference_figures_sgd() -> None:
    model = configure_model(reference_model())
    params, names = collect_params(model)
    assert names == ["1.weight", "1.bias"]
    tent = Tent(model, torch.optim.SGD(params, lr=0.5, momentum=0.9), steps=1, episodic=False)
    outs = [tent(reference_inputs(k)) for k in range(3)]
    _close(outs[0], REF_SGD["out0"])
    _close(outs[2], REF_SGD["out2"])
    _close(model[1].weight.detach(), REF_SGD["bn.weight"])
    _close(model[1].bias.detach(), REF_SGD["bn.bias"])
    _close(torch.stack([softmax_entropy(o).mean() for o in outs]), REF_SGD["entropy"])


def test_tent_matches_reference_figures_adam() -> None:
    model = configure_model(reference_model())
    tent = Tent(model, torch.optim.Adam(collect_params(model)[0], lr=1e-2))
    outs = [tent(reference_inputs(k)) for k in range(3)]
    _close(outs[1], REF_ADAM["out1"])
    _close(model[1].weight.detach(), REF_ADAM["bn.weight"])
    _close(model[1].bias.detach(), REF_ADAM["bn.bias"])


def test_episodic_tent_matches_reference_and_leaves_model_exactly() -> None:
    model = configure_model(reference_model())
    before = state(model)
    optimizer = torch.optim.SGD(collect_params(model)[0], lr=0.5, momentum=0.9)
    opt_before = copy.deepcopy(optimizer.state_dict())
    tent = Tent(model, optimizer, steps=2, episodic=True)
    out = tent(reference_inputs(1))
    _close(out, REF_EPISODIC_OUT)
    after = state(model)
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert optimizer.state_dict() == opt_before  # no momentum buffer left behind
    torch.testing.assert_close(tent(reference_inputs(1)), out, atol=0, rtol=0)  # same batch, same outputs


@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_tent_updates_only_affine_parameters_and_lowers_entropy(norm: str) -> None:
    model = small_cnn(norm)
    before = state(model)
    x = shifted_batch()
    with torch.no_grad():
        entropy_before = softmax_entropy(model(x)).mean()  # the source model (BN: running statistics)
    tent = Tent.from_model(model, optimizer="adam", lr=0.05)
    first = softmax_entropy(tent(x)).mean()
    for _ in range(9):
        tent(x)
    entropy_after = softmax_entropy(tent.predict(x)).mean()
    assert entropy_after < first and entropy_after < entropy_before
    after = state(model)
    norm_params = set(collect_params(model)[1])
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == norm_params  # every affine parameter moved, and nothing else (buffers included)


def test_tent_under_outer_eval_still_uses_batch_statistics() -> None:
    tent_a = Tent.from_model(small_cnn("bn"), lr=1e-3)
    tent_a.model.eval()  # what Lightning's test loop does to the module
    tent_b = Tent.from_model(small_cnn("bn"), lr=1e-3)
    x = shifted_batch()
    torch.testing.assert_close(tent_a(x), tent_b(x), atol=0, rtol=0)


# ----------------------------------------------------------------------------- EATA


def test_eata_filters_hand_made_probabilities() -> None:
    eata = EATA(toy_model([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]), torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
                e_margin=0.8, d_margin=0.5)
    probs = torch.tensor([[0.90, 0.05, 0.05], [0.05, 0.90, 0.05], [0.40, 0.30, 0.30], [0.05, 0.05, 0.90]])
    entropy = -(probs * probs.log()).sum(1)  # 0.394, 0.394, 1.089, 0.394
    reliable, selected = eata.select(probs, entropy, 0.8)
    assert reliable.tolist() == [True, True, False, True] and selected.tolist() == reliable.tolist()  # no average yet
    eata.model_probs = torch.tensor([0.90, 0.05, 0.05])
    # cosines with m: 1.0, 0.11, (0.78, unreliable), 0.11 -> the first is redundant
    cos = F.cosine_similarity(eata.model_probs[None], probs, dim=1)
    assert cos[0] > 0.99 and cos[1] < 0.5 and cos[3] < 0.5
    reliable, selected = eata.select(probs, entropy, 0.8)
    assert reliable.tolist() == [True, True, False, True]
    assert selected.tolist() == [False, True, False, True]


def test_eata_step_reweights_selected_samples() -> None:
    x = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.2, 0.1, 0.0], [0.0, 0.0, 2.5]])
    model = toy_model([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    eata = EATA(model, torch.optim.SGD(collect_params(model)[0], lr=1.0), e_margin=0.8, d_margin=0.63)
    e0 = 0.8
    # by hand: logits = x * w + b; selected = the three confident rows (no average yet)
    w = torch.ones(3, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    ent = softmax_entropy(x * w + b)
    keep = ent.detach() < e0
    assert keep.tolist() == [True, True, False, True]
    loss = (ent[keep] * torch.exp(e0 - ent[keep].detach())).mean()
    gw, gb = torch.autograd.grad(loss, [w, b])
    probs = (x * w + b).detach().softmax(1)
    eata(x)
    torch.testing.assert_close(model[1].weight.detach(), 1.0 - gw, atol=1e-6, rtol=0)
    torch.testing.assert_close(model[1].bias.detach(), -gb, atol=1e-6, rtol=0)
    torch.testing.assert_close(eata.model_probs, probs[keep].mean(0))
    assert (eata.num_reliable, eata.num_selected) == (3, 3)
    # the next batch: redundancy against m, and m <- 0.9 m + 0.1 mean(p[selected])
    m = eata.model_probs.clone()
    with torch.no_grad():
        p2 = (x * model[1].weight + model[1].bias).softmax(1)
    reliable2 = softmax_entropy(p2.log()) < e0
    selected2 = reliable2 & (F.cosine_similarity(m[None], p2, dim=1).abs() < 0.63)
    eata(x)
    assert eata.last_reliable.tolist() == reliable2.tolist()
    assert eata.last_selected.tolist() == selected2.tolist() and 0 < int(selected2.sum()) < 3
    torch.testing.assert_close(eata.model_probs, 0.9 * m + 0.1 * p2[selected2].mean(0))


def test_eata_no_selected_sample_no_step_and_fisher_term() -> None:
    model = toy_model([1.0, 1.0], [0.0, 0.0])
    fishers = {"1.weight": (torch.tensor([2.0, 0.5]), torch.tensor([0.5, 1.0])),
               "1.bias": (torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]))}
    eata = EATA(model, torch.optim.SGD(collect_params(model)[0], lr=0.1), fishers=fishers, fisher_alpha=3.0,
                e_margin=0.1)
    before = state(model)
    eata(torch.zeros(4, 2))  # uniform outputs: entropy ln 2 > 0.1, nothing selected, no step at all
    assert all(torch.equal(before[k], v) for k, v in state(model).items())
    assert eata.model_probs is None and eata.num_selected == 0
    # a confident sample: grad = entropy term + 3 * 2 * F * (w - anchor)
    x = torch.tensor([[6.0, 0.0]])
    w = torch.ones(2, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    ent = softmax_entropy(x * w + b)
    loss = (ent * torch.exp(0.1 - ent.detach())).mean()
    loss = loss + 3.0 * ((fishers["1.weight"][0] * (w - fishers["1.weight"][1]) ** 2).sum() + (b ** 2).sum())
    gw, gb = torch.autograd.grad(loss, [w, b])
    eata(x)
    torch.testing.assert_close(model[1].weight.detach(), 1.0 - 0.1 * gw, atol=1e-6, rtol=0)
    torch.testing.assert_close(model[1].bias.detach(), -0.1 * gb, atol=1e-6, rtol=0)


# EATA and SAR figures: the authors' eata.py (github mr-eggplant/EATA, commit f739b3668cc7617e9b9f1979c1a358497a3472c3;
# Fisher as in its main.py) and sar.py + sam.py (github mr-eggplant/SAR, commit 20f6e24b17525f34503510afccedc0629b67b7c4),
# run outside this project on sharp_reference_model(), continual, reference_inputs(0..3).
REF_EATA = {  # fishers from reference_inputs(5), (6); SGD lr 0.5 momentum 0.9; fisher_alpha 50, e_margin 1.2, d_margin 0.4
    "fisher.weight": [0.0015847536269575357, 0.025787752121686935, 0.019260045140981674],
    "fisher.bias": [0.0023905285634100437, 0.022297995164990425, 0.030742548406124115],
    "bn.weight": [1.2489460706710815, 0.818923830986023, 1.582667350769043],
    "bn.bias": [0.4016856551170349, 0.13005845248699188, 0.39313748478889465],
    "probs": [0.21105892956256866, 0.011924530379474163, 0.7734021544456482, 0.003614354645833373],
    "counts": (16, 4),
}
REF_SAR = {  # SAM(SGD lr 0.5, momentum 0.9, rho 0.05), margin_e0 1.2
    "out3": [[6.070979595184326, -7.299522399902344, 8.479964256286621, -9.388678550720215],
             [5.891678333282471, -7.236448764801025, 8.534380912780762, -9.55949592590332],
             [6.000382423400879, -7.4107561111450195, 8.770801544189453, -9.853299140930176],
             [6.100516319274902, -7.5557379722595215, 8.957730293273926, -10.078432083129883]],
    "bn.weight": [1.6052237749099731, 1.541276454925537, 2.0169968605041504],
    "bn.bias": [0.8244859576225281, 0.9052138328552246, 0.966392993927002],
    "ema": 0.5636189289391041,
}


def test_eata_matches_reference_figures() -> None:
    model = configure_model(sharp_reference_model())
    params, _ = collect_params(model)
    fishers = fisher_information(model, [reference_inputs(5), reference_inputs(6)])
    _close(fishers["1.weight"][0], REF_EATA["fisher.weight"], atol=1e-8)
    _close(fishers["1.bias"][0], REF_EATA["fisher.bias"], atol=1e-8)
    eata = EATA(model, torch.optim.SGD(params, 0.5, momentum=0.9), fishers, fisher_alpha=50.0, e_margin=1.2,
                d_margin=0.4)
    for k in range(4):
        eata(reference_inputs(k))
    _close(model[1].weight.detach(), REF_EATA["bn.weight"], atol=1e-6)
    _close(model[1].bias.detach(), REF_EATA["bn.bias"], atol=1e-6)
    _close(eata.model_probs, REF_EATA["probs"], atol=1e-6)
    assert (eata.num_reliable, eata.num_selected) == REF_EATA["counts"]


# ----------------------------------------------------------------------------- SAR


def test_sam_step_equals_hand_computation() -> None:
    w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    target = torch.tensor([0.0, 1.0, 2.0])
    opt = SAM([w], torch.optim.SGD, rho=0.1, lr=0.2)
    ((w - target) ** 2).sum().backward()
    opt.first_step(zero_grad=True)
    g = 2 * (torch.tensor([1.0, -2.0, 0.5]) - target)
    e = 0.1 * g / g.norm()
    torch.testing.assert_close(w.detach(), torch.tensor([1.0, -2.0, 0.5]) + e)
    ((w - target) ** 2).sum().backward()
    opt.second_step(zero_grad=True)
    g2 = 2 * (torch.tensor([1.0, -2.0, 0.5]) + e - target)
    torch.testing.assert_close(w.detach(), torch.tensor([1.0, -2.0, 0.5]) - 0.2 * g2)


def test_sar_step_equals_hand_computation_on_tiny_model() -> None:
    x = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.5, 0.0], [0.1, 0.0, 0.05], [0.0, 0.2, 2.0]])
    w0, b0 = torch.tensor([1.0, 0.8, 1.2]), torch.tensor([0.1, 0.0, -0.1])
    model = toy_model(w0.tolist(), b0.tolist())
    margin, rho, lr = 0.9, 0.05, 0.3
    sar = SAR(model, SAM(collect_params(model)[0], torch.optim.SGD, rho=rho, lr=lr), margin_e0=margin)
    # by hand
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    ent = softmax_entropy(x * w + b)
    keep = ent.detach() < margin
    assert keep.tolist() == [True, True, False, True]
    gw, gb = torch.autograd.grad(ent[keep].mean(), [w, b])
    norm = torch.cat([gw, gb]).norm()
    w1 = (w0 + rho * gw / (norm + 1e-12)).requires_grad_()
    b1 = (b0 + rho * gb / (norm + 1e-12)).requires_grad_()
    ent2 = softmax_entropy(x * w1 + b1)
    keep2 = keep & (ent2.detach() < margin)
    loss2 = ent2[keep2].mean()
    gw2, gb2 = torch.autograd.grad(loss2, [w1, b1])
    out = sar(x)
    torch.testing.assert_close(out, x * w0 + b0)  # the first forward's outputs
    torch.testing.assert_close(model[1].weight.detach(), w0 - lr * gw2, atol=1e-6, rtol=0)
    torch.testing.assert_close(model[1].bias.detach(), b0 - lr * gb2, atol=1e-6, rtol=0)
    assert sar.ema == pytest.approx(float(loss2.detach()))
    assert sar.last_selected.tolist() == keep2.tolist()


def test_sar_matches_reference_figures() -> None:
    model = configure_model(sharp_reference_model())
    sar = SAR(model, SAM(collect_params(model)[0], torch.optim.SGD, lr=0.5, momentum=0.9), margin_e0=1.2)
    outs = [sar(reference_inputs(k)) for k in range(4)]
    _close(outs[3], REF_SAR["out3"], atol=1e-5)
    _close(model[1].weight.detach(), REF_SAR["bn.weight"], atol=1e-6)
    _close(model[1].bias.detach(), REF_SAR["bn.bias"], atol=1e-6)
    assert sar.ema == pytest.approx(REF_SAR["ema"], abs=1e-6)


def test_sar_recovery_resets_to_the_initial_state() -> None:
    model = toy_model([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    initial = state(model)
    optimizer = SAM(collect_params(model)[0], torch.optim.SGD, rho=0.05, lr=0.5, momentum=0.9)
    sar = SAR(model, optimizer, margin_e0=1.0, reset_constant_em=5.0)  # every moving average is below 5
    x = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    sar(x)
    assert sar.recoveries == 1 and sar.ema is not None  # the average survives, as in the authors' code
    assert all(torch.equal(initial[k], v) for k, v in state(model).items())
    assert optimizer.state_dict()["state"] == {}  # the momentum is reset too
    sar.reset()
    assert sar.ema is None and sar.recoveries == 0


# ----------------------------------------------------------------------------- T3A


class EncoderHead(nn.Module):
    def __init__(self, encoder: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


def test_t3a_leaves_weights_untouched_and_without_test_supports_is_the_classifier() -> None:
    torch.manual_seed(0)
    head = nn.Linear(4, 3)
    with torch.no_grad():  # unit-norm rows, no bias: the classifier T3A starts from
        head.weight.copy_(F.normalize(torch.randn(3, 4), dim=1) * 1.0)
        head.bias.zero_()
    model = EncoderHead(nn.Identity(), head)
    before = state(model)
    t3a = T3A(model, filter_k=1)
    z = 0.1 * torch.randn(6, 4)  # small embeddings: higher entropy than the warm-up supports, never kept
    assert bool((softmax_entropy(head(z)) > t3a.entropy.max()).all())
    for _ in range(3):
        out = t3a(z)
    torch.testing.assert_close(out, head(z).detach())
    assert torch.equal(out.argmax(1), head(z).argmax(1))
    assert torch.equal(t3a.supports, head.weight.detach())  # only the warm-up supports remain
    assert all(torch.equal(before[k], v) for k, v in state(model).items())


def test_t3a_prototypes_by_hand() -> None:
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    t3a = T3A(EncoderHead(nn.Identity(), head), filter_k=2)
    z = torch.tensor([[3.0, 1.0], [4.0, 0.0], [0.5, 0.4]])
    out = t3a(z)
    # supports: warm-up e1, e2 (entropy of softmax([1, 0]) = 0.582), then z: class 0 with entropies
    # 0.127 (3,1), 0.018 (4,0), 0.691 (0.5,0.4). Class 0 keeps the two lowest: (4,0) and (3,1); class 1: e2.
    s = F.normalize(torch.tensor([[4.0, 0.0], [3.0, 1.0]]), dim=1).sum(0)
    protos = torch.stack([s / s.norm(), torch.tensor([0.0, 1.0])], dim=1)
    torch.testing.assert_close(out, z @ protos)
    assert t3a.supports.shape == (3, 2)
    t3a.reset()
    torch.testing.assert_close(t3a.supports, torch.eye(2))


def test_t3a_contract() -> None:
    with pytest.raises(TypeError, match="model.encoder"):
        T3A(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="nn.Linear"):
        T3A(EncoderHead(nn.Identity(), nn.Sequential(nn.Linear(2, 2))))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- BN-adapt


def test_bn_adapt_prior_zero_is_batch_statistics_and_mixture_by_hand() -> None:
    model = small_cnn("bn")
    x = shifted_batch(16)
    reference = copy.deepcopy(model).train()
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False
    with torch.no_grad():
        expected = reference(x)
    before = state(model)
    torch.testing.assert_close(BNAdapt(model)(x), expected, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in state(model).items())  # no momentum: nothing changes
    # one BatchNorm1d by hand: N = 8 pseudo-samples, n = 4
    bn = nn.BatchNorm1d(2).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
        bn.running_var.copy_(torch.tensor([2.0, 0.5]))
    xb = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, -1.0], [6.0, 1.0]])
    mean = (8 * torch.tensor([1.0, -1.0]) + 4 * xb.mean(0)) / 12
    var = (8 * torch.tensor([2.0, 0.5]) + 4 * xb.var(0, unbiased=False)) / 12
    torch.testing.assert_close(BNAdapt(bn, prior=8)(xb), (xb - mean) / torch.sqrt(var + bn.eps))


def test_bn_adapt_running_reestimation_and_episodic() -> None:
    bn = nn.BatchNorm1d(2).eval()
    xb = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, -1.0], [6.0, 1.0]])
    adapt = BNAdapt(bn, prior=0, momentum=0.25)
    adapt(xb)
    torch.testing.assert_close(bn.running_mean, 0.75 * torch.zeros(2) + 0.25 * xb.mean(0))
    torch.testing.assert_close(bn.running_var, 0.75 * torch.ones(2) + 0.25 * xb.var(0, unbiased=True))
    assert not bn.training  # the layer's mode is put back
    adapt.reset()
    torch.testing.assert_close(bn.running_mean, torch.zeros(2))
    episodic = BNAdapt(bn, prior=4, momentum=0.25, episodic=True)
    episodic(xb)
    torch.testing.assert_close(bn.running_mean, torch.zeros(2))
    with pytest.raises(ValueError, match="BatchNorm"):
        BNAdapt(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))


# ----------------------------------------------------------------------------- protocol, state, registry


def _wrapped(name: str) -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    encoder = small_cnn("bn")[:-1]
    model = EncoderHead(encoder, nn.Linear(8, 5))
    kwargs = {"tent": {"lr": 0.01}, "eata": {"lr": 0.01, "e_margin": 1.5, "d_margin": 0.9},
              "sar": {"lr": 0.01, "margin_e0": 1.5}, "t3a": {"filter_k": 3}, "bn_adapt": {"prior": 4, "momentum": 0.3}}
    return model, kwargs[name]


@pytest.mark.parametrize("name", ["bn_adapt", "tent", "eata", "sar", "t3a"])
def test_state_dict_resumes_exactly_and_episodic_leaves_the_model(name: str) -> None:
    batches = [shifted_batch(16) * (1 + 0.1 * k) for k in range(4)]
    model, kwargs = _wrapped(name)
    initial = copy.deepcopy(model)
    wrapper = create_tta(name, model, **kwargs)
    outs = [wrapper(x) for x in batches]
    # stop after two batches, resume in a new wrapper around the initial model
    model_a, _ = _wrapped(name)
    first = create_tta(name, model_a, **kwargs)
    for x in batches[:2]:
        first(x)
    saved = copy.deepcopy(first.adapted_state_dict())
    model_b = copy.deepcopy(initial)
    second = create_tta(name, model_b, **kwargs)
    second.load_state_dict(saved, strict=False)
    resumed = [second(x) for x in batches[2:]]
    for a, b in zip(outs[2:], resumed):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    full, part = wrapper.state_dict(), second.state_dict()
    assert all(torch.equal(full[k], part[k]) for k in full if k != "_extra_state")
    # reset: back to the initial tensors
    wrapper.reset()
    init = initial.state_dict()
    assert all(torch.equal(init[k], v) for k, v in wrapper.model.state_dict().items())
    # episodic: the model is left exactly as it was after every batch
    model_e, _ = _wrapped(name)
    episodic = create_tta(name, model_e, episodic=True, **kwargs)
    start = state(model_e)
    e1 = episodic(batches[1])
    assert all(torch.equal(start[k], v) for k, v in state(model_e).items())
    torch.testing.assert_close(episodic(batches[1]), e1, atol=0, rtol=0)


def test_registry_and_argument_checks() -> None:
    assert list_tta_methods() == ["bn_adapt", "eata", "sar", "t3a", "tent"]
    with pytest.raises(ValueError, match="did you mean 'tent'"):
        check_tta_kwargs("tnet", {})
    with pytest.raises(ValueError, match="did you mean 'filter_k'"):
        check_tta_kwargs("t3a", {"filter_K": 5})
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        create_tta("tent", small_cnn("bn"), steps=0)
    with pytest.raises(TypeError, match="SAM"):
        SAR(configure_model(small_cnn("bn")), torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))


def test_entropy_is_float32_under_bfloat16() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.bfloat16)
    entropy = softmax_entropy(logits)
    assert entropy.dtype == torch.float32
    p = torch.softmax(torch.tensor([2.0, 0.0, -1.0]), 0)
    assert entropy.item() == pytest.approx(float(-(p * p.log()).sum()), abs=1e-6)
    assert math.isclose(softmax_entropy(torch.zeros(1, 5)).item(), math.log(5), rel_tol=1e-6)


def test_public_surface_is_sorted_and_exact() -> None:
    import types

    import fewlabel.plugins.tta as package

    public = {name for name, value in vars(package).items()
              if not name.startswith("_") and name != "annotations" and not isinstance(value, types.ModuleType)}
    assert list(package.__all__) == sorted(package.__all__) and set(package.__all__) == public


@pytest.mark.parametrize(("name", "kwargs"), [
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 16, "depth": 1, "embed_dim": 32, "num_heads": 2}),
    ("convnext_atto", {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)}),
    ("resnet10t", {"zero_init_last": False}),  # (a zero-initialised last BN would block every gradient of bn1)
])
def test_tent_on_timm_backbones_adapts_only_their_norm_layers(name: str, kwargs: dict) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs).eval()
    before = state(model)
    norms = [n for n, m in model.named_modules()
             if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None]
    tent = Tent.from_model(model, lr=1e-2)
    tent(torch.randn(4, 3, 32, 32))
    after = state(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    expected = {f"{n}.{p}" for n in norms for p in ("weight", "bias")}
    assert changed == expected and norms
