"""Per-view pipelines (ViewPipelines, make_views), BYOL's blur and solarization, and torchvision v2 on batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from fewlabel.callbacks import EMATeacher
from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins.augment import (
    AUGMENTS, BatchImageAugment, MultiCrop, TorchvisionAugment, ViewPipeline, ViewPipelines, byol_views,
    create_augment, gaussian_blur, make_views, solarize,
)
from fewlabel.plugins.methods import BYOL, SimCLR

NO_AFFINE = {"scale": (1.0, 1.0), "rotation": 0.0, "translate": 0.0}
ENCODER = {"name": "small_cnn", "width": 4}


class AddOne(nn.Module):
    """A raw stage that records what it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x)
        return x + 1


class DoublingEncoder(nn.Module):
    """A plain module with a front end (``preprocess`` doubles) that counts its front-end runs."""

    embed_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.fc = nn.Linear(3, 4)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return 2 * x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _solarizer() -> BatchImageAugment:
    return BatchImageAugment(**NO_AFFINE, solarize_prob=1.0)


# ---------------------------------------------------------------- pipelines


def test_view_i_comes_from_pipeline_i() -> None:
    x = torch.rand(4, 3, 8, 8)
    identity, solarized = ViewPipelines([None, _solarizer()])(x)
    assert torch.equal(identity, x)
    assert torch.equal(solarized, torch.where(x >= 0.5, 1 - x, x))
    # through a method: Method.views hands the pipelines the encoder's front end
    module = SimCLR(ENCODER, augment=ViewPipelines([_solarizer(), nn.Identity()]), out_dim=8)
    first, second = module.views({"input": x}, 2)
    assert torch.equal(first, torch.where(x >= 0.5, 1 - x, x)) and torch.equal(second, x)


def test_front_end_runs_once_for_shared_views_and_once_per_raw_stage() -> None:
    x = torch.rand(5, 3)
    encoder = DoublingEncoder()
    raw = AddOne()
    pipelines = ViewPipelines([None, ViewPipeline(raw=raw), nn.Identity(), ViewPipeline(nn.Identity(), raw=raw)])
    views = make_views(encoder, {"input": x}, pipelines, 4)
    assert encoder.calls == 3  # once for views 0 and 2, once for each of views 1 and 3
    assert torch.equal(views[0], 2 * x) and torch.equal(views[2], 2 * x)
    assert torch.equal(views[1], 2 * (x + 1)) and torch.equal(views[3], 2 * (x + 1))  # raw stage, then front end
    assert all(torch.equal(seen, x) for seen in raw.seen)  # the raw stage saw the raw input


def test_plain_augment_keeps_its_behaviour_and_random_stream() -> None:
    x = torch.rand(4, 1, 8, 8)
    aug = BatchImageAugment(rotation=20.0, brightness=0.2, noise=0.05)
    torch.manual_seed(0)
    views = make_views(nn.Identity(), {"input": x}, aug, 3)
    torch.manual_seed(0)
    expected = [aug(x) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(views, expected))
    assert make_views(nn.Identity(), {"input": x}, None, 2) == [x, x]


def test_count_mismatch_names_both_counts() -> None:
    module = SimCLR(ENCODER, augment=ViewPipelines([None, None, _solarizer()]), out_dim=8)
    with pytest.raises(ValueError, match="2 views were asked for, but the ViewPipelines augment has 3 pipelines"):
        module.views({"input": torch.rand(2, 1, 8, 8)}, 2)
    # views made by the datamodule do not go through the pipelines
    given = [torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)]
    assert all(torch.equal(a, b) for a, b in zip(module.views({"views": given}, 2), given))


def test_same_seed_same_views_different_seed_different() -> None:
    x = torch.rand(6, 3, 16, 16)
    pipelines = byol_views()

    def run(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return pipelines(x)

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])
    assert not torch.equal(first[0], first[1])


def test_registry_form_builds_the_same_pipelines() -> None:
    assert {"views", "byol_image", "torchvision", "spec_augment", "waveform"} <= set(AUGMENTS.names())
    x = torch.rand(4, 3, 8, 8)
    built = create_augment("views", pipelines=[{"name": "image", **NO_AFFINE, "solarize_prob": 1.0, "noise": 0.1},
                                               None, {"name": "none", "raw": {"name": "image", "rotation": 30.0}}])
    direct = ViewPipelines([BatchImageAugment(**NO_AFFINE, solarize_prob=1.0, noise=0.1), None,
                            ViewPipeline(raw=BatchImageAugment(rotation=30.0))])
    assert isinstance(built, ViewPipelines) and built.num_views == 3
    assert built.pipelines[1].augment is None and built.pipelines[2].augment is None
    torch.manual_seed(0)
    a = built(x)
    torch.manual_seed(0)
    b = direct(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    # the BYOL preset by name
    torch.manual_seed(0)
    a = create_augment("byol_image", hflip=0.0)(x)
    torch.manual_seed(0)
    b = byol_views(hflip=0.0)(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: create_augment("views", pipelines=[None, {"name": "imag"}]),
         r"pipelines\[1\]: unknown augment 'imag' \(did you mean 'image'\?\)"),
        (lambda: create_augment("views", pipelines=[{"raw": {"name": "waveform", "gain_db": [3, -3]}}]),
         r"pipelines\[0\]\.raw: gain_db must be a range"),
        (lambda: create_augment("views", pipelines=[{"name": "image", "rotaton": 3}]), r"pipelines\[0\]:.*rotaton"),
        (lambda: create_augment("views", pipelines={"name": "image"}), "one augment spec per view"),
        (lambda: ViewPipelines([]), "non-empty list"),
        (lambda: ViewPipelines([lambda x: x]), r"pipelines\[0\] must be an nn.Module"),
        (lambda: ViewPipelines([byol_views()]), "not ViewPipelines"),
        (lambda: create_augment("views", pipelines=[{"name": "byol_image"}]), "not ViewPipelines"),
        (lambda: MultiCrop(global_augment=byol_views()), "global_augment must be an nn.Module applied to every crop"),
        (lambda: byol_views(blur_prob=0.5), r"byol_views sets \['blur_prob'\] per view"),
        (lambda: create_augment("byol_image", hflp=0.0), r"unknown BatchImageAugment argument 'hflp' \(did you mean "
                                                         r"'hflip'\?\)"),
    ],
)
def test_bad_pipelines_raise(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


# ---------------------------------------------------------------- blur and solarization


@pytest.mark.parametrize(("size", "kernel", "sigma"), [(8, 3, 0.7), (32, 3, 1.3), (64, 7, 2.0), (64, 7, 0.1)])
def test_blur_matches_torchvision(size: int, kernel: int, sigma: float) -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 3, size, size)
    expected = TF.gaussian_blur(x[0], kernel_size=[kernel, kernel], sigma=[sigma, sigma])
    torch.testing.assert_close(gaussian_blur(x, torch.tensor([sigma]), kernel)[0], expected, rtol=0, atol=1e-6)
    blurred = BatchImageAugment(**NO_AFFINE, blur_prob=1.0, blur_sigma=(sigma, sigma))(x)
    torch.testing.assert_close(blurred[0], expected, rtol=0, atol=1e-5)  # the identity warp adds ~1e-6


def test_blur_kernels_are_per_sample() -> None:
    x = torch.rand(3, 2, 16, 16)
    sigma = torch.tensor([0.5, 1.0, 2.0])
    out = gaussian_blur(x, sigma, 5)
    for i in range(3):
        expected = TF.gaussian_blur(x[i], kernel_size=[5, 5], sigma=[float(sigma[i])] * 2)
        torch.testing.assert_close(out[i], expected, rtol=0, atol=1e-6)


def test_solarize_is_exact() -> None:
    x = torch.tensor([0.0, 0.25, 0.4999, 0.5, 0.75, 1.0]).view(1, 1, 2, 3)
    expected = torch.tensor([0.0, 0.25, 0.4999, 0.5, 0.25, 0.0]).view(1, 1, 2, 3)
    assert torch.equal(solarize(x), expected)
    assert torch.equal(_solarizer()(x), expected)
    y = torch.rand(4, 3, 8, 8)
    assert torch.equal(solarize(y), TF.solarize(y, threshold=0.5))


def test_blur_and_solarize_off_draw_no_random_numbers() -> None:
    x = torch.rand(4, 3, 8, 8)
    kwargs = {"rotation": 20.0, "brightness": 0.2, "contrast": 0.3, "saturation": 0.4, "grayscale": 0.3,
              "noise": 0.05}

    def run(**extra: Any) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        out = BatchImageAugment(**kwargs, **extra)(x)
        return out, torch.get_rng_state()

    out, state = run()
    off, off_state = run(blur_prob=0.0, solarize_prob=0.0, blur_sigma=(1.0, 3.0))
    assert torch.equal(out, off) and torch.equal(state, off_state)
    on, on_state = run(blur_prob=0.5)
    assert not torch.equal(state, on_state)  # the check above is able to see a draw


def test_blur_and_solarize_per_sample() -> None:
    x = torch.rand(1, 3, 16, 16).repeat(32, 1, 1, 1)
    torch.manual_seed(0)
    solar = BatchImageAugment(**NO_AFFINE, solarize_prob=0.5)(x)
    hit = torch.tensor([torch.allclose(s, solarize(x[0]), atol=1e-5) for s in solar])
    miss = torch.tensor([torch.allclose(s, x[0], atol=1e-5) for s in solar])
    assert bool((hit ^ miss).all()) and 0 < int(hit.sum()) < 32
    torch.manual_seed(0)
    blurred = BatchImageAugment(**NO_AFFINE, blur_prob=0.5, blur_sigma=(0.5, 2.0))(x)
    unchanged = torch.tensor([torch.allclose(b, x[0], atol=1e-5) for b in blurred])
    assert 0 < int(unchanged.sum()) < 32
    changed = blurred[~unchanged]
    assert not torch.allclose(changed[0], changed[1])  # sigma drawn per sample


def test_byol_views_settings() -> None:
    first, second = (p.augment for p in byol_views(noise=0.01).pipelines)
    assert (first.blur_prob, first.solarize_prob, second.blur_prob, second.solarize_prob) == (1.0, 0.0, 0.1, 0.2)
    for aug in (first, second):
        assert (aug.hflip, aug.jitter_prob, aug.grayscale, aug.noise) == (0.0, 0.8, 0.2, 0.01)  # flips: opt-in
        assert aug.blur_sigma == (0.1, 2.0)
        assert (aug.brightness, aug.contrast, aug.saturation, aug.hue) == (0.4, 0.4, 0.2, 0.1)
    assert all(p.augment.hflip == 0.5 for p in byol_views(hflip=0.5).pipelines)  # the paper's setting, asked for


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"blur_prob": 1.5}, r"blur_prob is a probability in \[0, 1\], got 1.5"),
        ({"solarize_prob": -0.1}, "solarize_prob is a probability"),
        ({"blur_sigma": (0.0, 1.0)}, r"blur_sigma must be a range \(lo, hi\) with 0 < lo <= hi"),
        ({"blur_sigma": (2.0, 1.0)}, "blur_sigma must be a range"),
        ({"scale": (1.2, 0.9)}, "scale must be a range"),
    ],
)
def test_bad_blur_and_solarize_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BatchImageAugment(**kwargs)


def test_bf16_in_bf16_out() -> None:
    x = torch.rand(4, 3, 16, 16).bfloat16()
    assert BatchImageAugment(blur_prob=1.0, solarize_prob=0.5)(x).dtype == torch.bfloat16
    assert all(v.dtype == torch.bfloat16 for v in byol_views()(x))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = BatchImageAugment(**NO_AFFINE, blur_prob=1.0, blur_sigma=(1.0, 1.0))(x.float())
    assert out.dtype == torch.float32  # numerics stay float32 under autocast
    torch.testing.assert_close(out[0], TF.gaussian_blur(x[0].float(), [3, 3], [1.0, 1.0]), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- torchvision v2


def test_torchvision_parameters_are_drawn_per_sample_and_seeded() -> None:
    x = torch.rand(1, 3, 12, 12).repeat(8, 1, 1, 1)
    aug = TorchvisionAugment(v2.Compose([v2.RandomResizedCrop(8, scale=(0.2, 1.0)), v2.ColorJitter(0.4, 0.4)]))
    torch.manual_seed(0)
    out = aug(x)
    assert out.shape == (8, 3, 8, 8)
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8  # each sample its own crop and jitter
    torch.manual_seed(0)
    assert torch.equal(aug(x), out)
    torch.manual_seed(1)
    assert not torch.equal(aug(x), out)


def test_torchvision_yaml_form_and_registry() -> None:
    specs = [{"name": "RandomApply", "p": 1.0, "transforms": [{"name": "ColorJitter", "brightness": 0.4}]},
             {"name": "RandomHorizontalFlip", "p": 0.5}]
    built = create_augment("torchvision", transforms=specs)
    assert isinstance(built, TorchvisionAugment) and isinstance(built.transform, v2.Compose)
    assert isinstance(built.transform.transforms[0].transforms[0], v2.ColorJitter)
    direct = TorchvisionAugment(v2.Compose([v2.RandomApply([v2.ColorJitter(brightness=0.4)], p=1.0),
                                            v2.RandomHorizontalFlip(p=0.5)]))
    x = torch.rand(4, 3, 8, 8)
    torch.manual_seed(0)
    a = built(x)
    torch.manual_seed(0)
    assert torch.equal(a, direct(x))
    assert built(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        ([{"name": "RandomResizedCorp", "size": 8}], r"unknown torchvision.transforms.v2 transform "
                                                     r"'RandomResizedCorp' \(did you mean 'RandomResizedCrop'\?\)"),
        ([{"size": 8}], "needs a 'name'"),
        ([{"name": "ColorJitter", "brightnes": 0.4}], r"torchvision.transforms.v2.ColorJitter"),
        ("ColorJitter", "a torchvision transform spec is"),
    ],
)
def test_torchvision_bad_specs(specs: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TorchvisionAugment(specs)


def test_torchvision_different_output_sizes_are_refused() -> None:
    aug = TorchvisionAugment([{"name": "RandomResizedCrop", "size": 8}, {"name": "RandomResize", "min_size": 4,
                                                                             "max_size": 12}])
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="different shapes"):
        aug(torch.rand(16, 3, 12, 12))


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_byol_trains_with_byol_image_views(tmp_path: Path, precision: str) -> None:
    torch.manual_seed(0)
    dm = DigitsDataModule(labels_per_class=5, batch_size=64, train_split="unlabeled")
    module = BYOL(ENCODER, augment=create_augment("byol_image", hflip=0.0), hidden_dim=32, out_dim=16)
    start = {k: v.detach().clone() for k, v in module.encoder.named_parameters()}
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, precision=precision, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        limit_val_batches=0, default_root_dir=tmp_path,
                        callbacks=[EMATeacher(base_momentum=0.9, final_momentum=0.9)])
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(start[k], v) for k, v in module.encoder.named_parameters())
