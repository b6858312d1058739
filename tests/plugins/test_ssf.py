"""SSF (arXiv 2210.08823): identity at insertion, only scales/shifts train, and they fold into the weights."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins import Classifier
from fewlabel.plugins.encoders import AudioNTT, SmallCNN, TimmEncoder, add_ssf, has_ssf, merge_ssf, ssf_parameters


def _encoders() -> list[tuple[str, nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    return [
        ("small_cnn", SmallCNN(width=4), torch.randn(3, 1, 8, 8)),
        ("audio_ntt", AudioNTT(n_mels=16, channels=4, embed_dim=16,
                               frontend={"n_fft": 256, "win_length": 256, "hop_length": 64}), torch.randn(2, 4000)),
        # zero_init_last=False: timm zero-initialises the last BN of each block, which blocks gradients at init
        ("resnet18", TimmEncoder("resnet18", zero_init_last=False), torch.randn(2, 3, 32, 32)),
        ("vit_tiny", TimmEncoder("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2),
         torch.randn(2, 3, 32, 32)),
    ]


ENCODERS = _encoders()


@pytest.fixture(params=ENCODERS, ids=[name for name, _, _ in ENCODERS])
def encoder_and_input(request: pytest.FixtureRequest) -> tuple[nn.Module, torch.Tensor]:
    _, encoder, x = request.param
    return copy.deepcopy(encoder).eval(), x


def _perturb(encoder: nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ssf_parameters(encoder):
            p.add_(0.2 * torch.randn(p.shape, generator=generator))


def test_identity_at_insertion_and_only_ssf_parameters_train(encoder_and_input: tuple[nn.Module, torch.Tensor]) -> None:
    encoder, x = encoder_and_input
    with torch.no_grad():
        before = encoder(x)
    names = set(encoder.state_dict())
    add_ssf(encoder)
    with torch.no_grad():
        after = encoder(x)
    assert torch.equal(before, after)  # bit for bit: x * 1 + 0 == x
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    ssf = {n for n, _ in encoder.named_parameters() if n.rsplit(".", 1)[-1] in ("ssf_scale", "ssf_shift")}
    assert trainable == ssf and len(ssf) >= 8
    assert names <= set(encoder.state_dict())  # the layers' own names are untouched
    assert [id(p) for p in ssf_parameters(encoder)] == [id(p) for n, p in encoder.named_parameters() if n in ssf]


def test_gradients_reach_every_ssf_parameter_and_nothing_else(
        encoder_and_input: tuple[nn.Module, torch.Tensor]) -> None:
    encoder, x = encoder_and_input
    add_ssf(encoder)  # eval mode, as Classifier(peft="ssf") holds BatchNorm (in train mode a shift before BN is void)
    encoder(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ssf_parameters(encoder))
    ssf = {id(p) for p in ssf_parameters(encoder)}
    assert all(p.grad is None for p in encoder.parameters() if id(p) not in ssf)


def test_merge_folds_scales_and_shifts_into_the_layers(encoder_and_input: tuple[nn.Module, torch.Tensor]) -> None:
    encoder, x = encoder_and_input
    add_ssf(encoder)
    _perturb(encoder)
    merged = merge_ssf(copy.deepcopy(encoder))
    with torch.no_grad():
        expected, got = encoder(x), merged(x)
    assert not any(has_ssf(m) for m in merged.modules()) and not list(ssf_parameters(merged))
    assert not any("ssf" in name for name in merged.state_dict())
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    # the merged network has exactly the structure of the original (plus a bias where there was none)
    assert sum(p.numel() for p in merged.parameters()) < sum(p.numel() for p in encoder.parameters())


def test_merge_holds_in_train_mode_too() -> None:
    encoder = add_ssf(SmallCNN(width=4)).train()
    _perturb(encoder)
    merged = merge_ssf(copy.deepcopy(encoder))
    x = torch.randn(6, 1, 8, 8)
    assert torch.allclose(merged(x), encoder(x), atol=1e-5)  # batch statistics: still the same function


def test_hand_computed_linear_and_norm_layers() -> None:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    net = add_ssf(nn.Sequential(layer, nn.LayerNorm(2, elementwise_affine=False)), layers=["linear"])
    assert has_ssf(net[0]) and not has_ssf(net[1])
    with torch.no_grad():
        net[0].ssf_scale.copy_(torch.tensor([2.0, -1.0]))
        net[0].ssf_shift.copy_(torch.tensor([0.5, 1.0]))
    x = torch.tensor([[1.0, 1.0]])
    assert torch.equal(net[0](x), torch.tensor([[2.0 * 3.0 + 0.5, -7.0 + 1.0]]))
    merge_ssf(net)
    assert torch.equal(net[0].weight, torch.tensor([[2.0, 4.0], [-3.0, -4.0]]))
    assert torch.equal(net[0].bias, torch.tensor([0.5, 1.0]))
    assert not net[0].weight.requires_grad and not net[0].bias.requires_grad  # frozen, as the weight was


def test_channels_first_layers_scale_the_channel_axis() -> None:
    from timm.layers import LayerNorm2d

    torch.manual_seed(0)
    for layer, x in ((nn.Conv2d(3, 4, 1), torch.randn(2, 3, 5, 5)), (nn.BatchNorm2d(4), torch.randn(2, 4, 5, 5)),
                     (nn.GroupNorm(2, 4), torch.randn(2, 4, 5, 5)), (LayerNorm2d(4), torch.randn(2, 4, 5, 5)),
                     (nn.Conv1d(3, 4, 1), torch.randn(2, 3, 5)), (nn.BatchNorm1d(4), torch.randn(3, 4))):
        layer.eval()
        with torch.no_grad():
            plain = layer(x)
            add_ssf(layer)
            layer.ssf_scale.fill_(2.0)
            layer.ssf_shift.copy_(torch.arange(4.0))
            shape = (1, 4) + (1,) * (x.ndim - 2)
            assert torch.allclose(layer(x), 2.0 * plain + torch.arange(4.0).view(shape)), type(layer).__name__


def test_skips_layers_that_cannot_be_folded_and_checks_arguments() -> None:
    from timm.layers import BatchNormAct2d, StdConv2d

    net = nn.Sequential(StdConv2d(3, 4, 3), BatchNormAct2d(4), nn.Conv2d(4, 4, 1))
    add_ssf(net)
    assert [has_ssf(m) for m in net] == [False, False, True]
    with pytest.raises(ValueError, match="already has SSF"):
        add_ssf(net)
    with pytest.raises(ValueError, match="layers must be a non-empty subset"):
        add_ssf(nn.Linear(2, 2), layers=["attention"])
    with pytest.raises(ValueError, match="no conv layer"):
        add_ssf(nn.Linear(2, 2), layers=["conv"])
    with pytest.raises(ValueError, match="no SSF layers"):
        merge_ssf(nn.Linear(2, 2))
    torch.manual_seed(0)
    noisy = add_ssf(nn.Linear(4, 64), init_std=0.02)
    assert 0.005 < noisy.ssf_scale.std().item() < 0.05 and abs(noisy.ssf_scale.mean().item() - 1) < 0.02


def test_deepcopy_and_state_dict_round_trip() -> None:
    encoder = add_ssf(SmallCNN(width=4)).eval()
    _perturb(encoder)
    clone = copy.deepcopy(encoder)
    fresh = add_ssf(SmallCNN(width=4)).eval()
    fresh.load_state_dict(encoder.state_dict())
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(clone(x), encoder(x)) and torch.equal(fresh(x), encoder(x))


def test_classifier_trains_only_ssf_and_head(tmp_path: Path) -> None:
    dm = DigitsDataModule(labels_per_class=3, batch_size=16)
    dm.setup("fit")
    torch.manual_seed(0)
    module = Classifier({"name": "small_cnn", "width": 4}, num_classes=dm.num_classes, lr=0.01, peft="ssf")
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"} | {
        n for n, _ in module.named_parameters() if n.endswith(("ssf_scale", "ssf_shift"))}
    groups = module.parameter_groups()
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in ssf_parameters(module.encoder)}
    before = {k: v.clone() for k, v in module.state_dict().items()}
    module.train()
    assert not any(m.training for m in module.encoder.modules() if isinstance(m, nn.BatchNorm2d))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=dm.labeled_dataloader())
    after = module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if k.startswith("head.") or k.endswith(("ssf_scale", "ssf_shift"))}
    with pytest.raises(ValueError, match="peft must be None"):
        Classifier({"name": "small_cnn", "width": 4}, num_classes=3, peft="lora")
    with pytest.raises(ValueError, match="freeze_encoder"):
        Classifier({"name": "small_cnn", "width": 4}, num_classes=3, peft="ssf", freeze_encoder=True)
