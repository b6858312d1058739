"""DINO: the multi-crop views, the head, and the method in real Lightning Trainers on the digits data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from fewlabel.callbacks import EMATeacher, RNGStateKeeper
from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins.augment import BatchImageAugment, MultiCrop
from fewlabel.plugins.heads import DINOHead
from fewlabel.plugins.methods import DINO, METHODS

# ---------------------------------------------------------------------------------------------- MultiCrop


class _Add(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.value


def test_multicrop_views_globals_first_with_their_sizes_and_augmentations() -> None:
    x = torch.full((5, 1, 8, 8), 0.25)
    views = MultiCrop(num_local=3, global_augment=_Add(1.0), local_augment=_Add(2.0))(x)
    assert [tuple(v.shape) for v in views] == [(5, 1, 8, 8)] * 2 + [(5, 1, 4, 4)] * 3  # local: max(4, 8 * 3/7)
    # A constant image stays constant under any crop; the tags show globals come first.
    assert [v.unique().tolist() for v in views] == [[1.25]] * 2 + [[2.25]] * 3

    crops = MultiCrop(num_global=1, num_local=1, global_size=(6, 10), local_size=3)
    views = crops(torch.rand(2, 3, 32, 48, dtype=torch.bfloat16))
    assert [tuple(v.shape) for v in views] == [(2, 3, 6, 10), (2, 3, 3, 3)]
    assert all(v.dtype == torch.bfloat16 for v in views)
    assert MultiCrop().output_sizes(224, 224) == ((224, 224), (96, 96))  # DINO's 224 / 96
    assert MultiCrop(num_local=0)(torch.rand(2, 1, 8, 8)).__len__() == 2


def test_multicrop_of_the_whole_image_reproduces_it() -> None:
    """With scale 1 no box of aspect ratio != 1 fits, so every sample takes torchvision's fallback,
    the whole (square) image; resampled to its own size, that is the input up to float rounding."""
    torch.manual_seed(0)
    x = torch.rand(4, 2, 8, 8)
    same = MultiCrop(num_global=1, num_local=0, global_scale=(1.0, 1.0))(x)[0]
    assert torch.allclose(same, x, atol=1e-6)
    resized = MultiCrop(num_global=1, num_local=0, global_scale=(1.0, 1.0), global_size=(5, 12))(x)[0]
    assert torch.allclose(resized, F.interpolate(x, size=(5, 12), mode="bilinear", align_corners=False), atol=1e-6)


def test_multicrops_are_resized_sub_windows() -> None:
    """On an image whose two channels are the column and row coordinates, a bilinear downscaled crop
    is exactly the coordinates of its sample points: a regular, axis-aligned grid inside the image
    whose box has the drawn area and aspect ratio."""
    size = 32
    coords = torch.arange(size, dtype=torch.float32)
    image = torch.stack([coords.expand(size, size), coords[:, None].expand(size, size)])  # (2, H, W): col, row
    n = 64
    crops = MultiCrop(num_global=1, num_local=1, global_size=8, local_size=4)  # downscaling only: no edge clamping
    torch.manual_seed(0)
    views = crops(image.expand(n, 2, size, size).contiguous())
    for view, scale in zip(views, (crops.global_scale, crops.local_scale)):
        out = view.shape[-1]
        col, row = view[:, 0], view[:, 1]
        assert torch.allclose(col, col[:, :1, :].expand_as(col), atol=1e-4)  # columns do not vary down a column
        assert torch.allclose(row, row[:, :, :1].expand_as(row), atol=1e-4)
        step_w, step_h = col[:, 0, 1] - col[:, 0, 0], row[:, 1, 0] - row[:, 0, 0]
        assert torch.allclose(col[:, 0].diff(), step_w[:, None].expand(n, out - 1), atol=1e-4)  # regular grid
        assert bool((step_w > 0).all() and (step_h > 0).all())  # no flip
        width, height = step_w * out, step_h * out  # box sides in pixels
        left, top = col[:, 0, 0] + 0.5 - step_w / 2, row[:, 0, 0] + 0.5 - step_h / 2
        assert bool((left > -1e-4).all() and (left + width < size + 1e-4).all())
        assert bool((top > -1e-4).all() and (top + height < size + 1e-4).all())
        area = width * height / size**2
        assert bool((area > scale[0] - 1e-4).all() and (area < scale[1] + 1e-4).all())
        assert bool(((width / height > 0.75 - 1e-4) & (width / height < 4 / 3 + 1e-4)).all())
        assert len(torch.unique(left.round(decimals=3))) > n // 2  # one box per sample


def test_multicrop_draws_from_the_global_generator() -> None:
    x = torch.rand(3, 1, 8, 8)
    torch.manual_seed(1)
    first = MultiCrop()(x)
    torch.manual_seed(1)
    again = MultiCrop()(x)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_global": 0}, "num_global must be an int >= 1"),
        ({"num_local": -1}, "num_local must be an int >= 0"),
        ({"num_local": 1.5}, "num_local must be an int"),
        ({"global_scale": (0.5, 1.2)}, r"global_scale must be a range \(lo, hi\) with 0 < lo <= hi <= 1"),
        ({"local_scale": (0.4, 0.05)}, "local_scale must be a range"),
        ({"ratio": (0.0, 1.0)}, "ratio must be a range"),
        ({"local_size": 0}, "local_size must be None, an int >= 1 or a pair"),
        ({"global_size": (8, 8, 8)}, "global_size must be None"),
        ({"interpolation": "area"}, r"interpolation must be one of \['bilinear', 'bicubic', 'nearest'\]"),
        ({"global_augment": lambda x: x}, "global_augment must be an nn.Module"),
    ],
)
def test_multicrop_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MultiCrop(**kwargs)


def test_multicrop_rejects_non_image_batches() -> None:
    with pytest.raises(ValueError, match=r"floating \(B, C, H, W\)"):
        MultiCrop()(torch.rand(3, 8, 8))


# ---------------------------------------------------------------------------------------------- DINOHead


def test_dino_head_shape_structure_and_unit_norm_last_layer() -> None:
    torch.manual_seed(0)
    head = DINOHead(16, out_dim=40, hidden_dim=24, bottleneck_dim=8)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert [m.out_features for m in head.mlp if isinstance(m, nn.Linear)] == [24, 24, 8]
    assert all(float(m.bias.detach().abs().max()) == 0 for m in head.mlp if isinstance(m, nn.Linear))
    out = head(torch.randn(6, 16))
    assert out.shape == (6, 40)
    magnitude = head.last_layer.parametrizations.weight.original0
    assert not magnitude.requires_grad and torch.equal(magnitude, torch.ones(40, 1))
    row_norms = head.last_layer.weight.norm(dim=1)
    assert torch.allclose(row_norms, torch.ones(40), atol=1e-6)
    assert float(out.abs().max()) <= 1 + 1e-5  # cosines of a unit vector with unit directions
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = head(torch.randn(6, 16))
    assert mixed.dtype == torch.float32

    free = DINOHead(16, out_dim=40, num_layers=1, batch_norm=True, norm_last_layer=False)
    assert [type(m).__name__ for m in free.mlp] == ["Linear"]
    assert free.last_layer.parametrizations.weight.original0.requires_grad
    with_bn = DINOHead(16, num_layers=2, batch_norm=True)
    assert [type(m).__name__ for m in with_bn.mlp] == ["Linear", "BatchNorm1d", "GELU", "Linear"]
    with pytest.raises(ValueError, match="DINOHead: out_dim must be an int >= 1, got 0"):
        DINOHead(16, out_dim=0)
    with pytest.raises(ValueError, match="DINOHead: num_layers must be an int >= 1, got True"):
        DINOHead(16, num_layers=True)


# ---------------------------------------------------------------------------------------------- DINO

_TINY = dict(out_dim=32, hidden_dim=16, bottleneck_dim=8)


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(labels_per_class=5, batch_size=64, train_split="unlabeled")
    dm.setup("fit")
    return dm


def _dino(**kwargs: Any) -> DINO:
    settings: dict[str, Any] = dict(_TINY, augment=BatchImageAugment())
    settings.update(kwargs)
    return DINO({"name": "small_cnn", "width": 4}, **settings)


def _trainer(tmp_path: Path, epochs: int = 1, batches: int = 2, callbacks: list[L.Callback] | None = None,
             **kwargs: Any) -> L.Trainer:
    if callbacks is None:
        callbacks = [EMATeacher(base_momentum=0.9, final_momentum=0.9)]
    settings: dict[str, Any] = dict(accelerator="cpu", devices=1, max_epochs=epochs, limit_train_batches=batches,
                                    logger=False, enable_progress_bar=False, enable_model_summary=False,
                                    enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path)
    return L.Trainer(callbacks=callbacks, **{**settings, **kwargs})


def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_dino_trains_with_an_ema_teacher(digits: DigitsDataModule, tmp_path: Path, precision: str) -> None:
    torch.manual_seed(0)
    module = _dino(freeze_last_layer_epochs=0)
    student = _params(module.encoder)
    trainer = _trainer(tmp_path, precision=precision)
    trainer.fit(module, datamodule=digits)
    loss = trainer.callback_metrics["train/loss"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(not p.requires_grad and p.grad is None for p in module.teacher_encoder.parameters())
    assert all(not p.requires_grad and p.grad is None for p in module.teacher_head.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(student, module.encoder.parameters()))
    assert module.teacher_encoder.training  # the teacher runs in train mode, as in the reference


def test_dino_teacher_moves_only_by_ema_and_centre_follows_teacher_mean(digits: DigitsDataModule,
                                                                        tmp_path: Path) -> None:
    """Each step: teacher_after = 0.9 teacher_before + 0.1 student (after its optimizer step), the teacher is
    untouched in between, and centre = 0.9 centre + 0.1 mean of the teacher's outputs on the two global views."""
    torch.manual_seed(0)
    module = _dino(freeze_last_layer_epochs=0)
    pairs = module.momentum_pairs()
    assert [(s, t) for s, t in pairs] == [(module.encoder, module.teacher_encoder), (module.head, module.teacher_head)]
    for student, teacher in pairs:  # the teacher starts as a copy of the student
        assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), teacher.state_dict().values()))
    records: list[dict[str, Any]] = []
    teacher_outputs: list[torch.Tensor] = []
    module.teacher_head.register_forward_hook(lambda m, args, out: teacher_outputs.append(out.detach().clone()))

    class BeforeEMA(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
            records.append({"student": [_params(s) for s, _ in pairs], "teacher": [_params(t) for _, t in pairs],
                            "center": module.loss.center.clone()})

    class AfterEMA(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
            records[-1]["teacher_after"] = [_params(t) for _, t in pairs]

    initial = [_params(t) for _, t in pairs]
    ema = EMATeacher(base_momentum=0.9, final_momentum=0.9)
    _trainer(tmp_path, batches=3, callbacks=[BeforeEMA(), ema, AfterEMA()]).fit(module, datamodule=digits)
    assert len(records) == 3 and len(teacher_outputs) == 3
    previous, center = initial, torch.zeros(module.hparams.out_dim)
    for record, outputs in zip(records, teacher_outputs):
        for before, prior in zip(record["teacher"], previous):
            assert all(torch.equal(a, b) for a, b in zip(before, prior))  # nothing but the EMA moved the teacher
        for before, student, after in zip(record["teacher"], record["student"], record["teacher_after"]):
            for t, s, a in zip(before, student, after):
                assert torch.allclose(a, 0.9 * t + 0.1 * s, atol=1e-6)
        previous = record["teacher_after"]
        assert outputs.shape == (2 * 64, module.hparams.out_dim)  # only the two global views
        center = 0.9 * center + 0.1 * outputs.mean(dim=0)
        assert torch.allclose(record["center"].flatten(), center, atol=1e-6)
    assert float(center.norm()) > 0


def test_dino_needs_an_ema_teacher_callback(digits: DigitsDataModule, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"add fewlabel\.callbacks\.EMATeacher\(base_momentum=0\.996\) to the "
                                           r"Trainer's callbacks"):
        _trainer(tmp_path, callbacks=[]).fit(_dino(), datamodule=digits)


def test_dino_freezes_the_last_layer_for_the_first_epochs(digits: DigitsDataModule, tmp_path: Path) -> None:
    """With ``freeze_last_layer_epochs=1`` the head's last layer stays fixed (weight decay included) during
    epoch 0 while the rest of the head learns, then trains; the teacher temperature warms up per epoch."""
    torch.manual_seed(0)
    module = _dino(freeze_last_layer_epochs=1, warmup_teacher_temp=0.02, teacher_temp=0.04,
                   warmup_teacher_temp_epochs=2)
    last, mlp = _params(module.head.last_layer), _params(module.head.mlp)
    snapshots: list[dict[str, Any]] = []

    class Snapshot(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            snapshots.append({"last": _params(module.head.last_layer), "mlp": _params(module.head.mlp),
                              "temp": float(trainer.callback_metrics["train/teacher_temp"])})

    ema = EMATeacher(base_momentum=0.9, final_momentum=0.9)
    _trainer(tmp_path, epochs=2, callbacks=[ema, Snapshot()]).fit(module, datamodule=digits)
    assert all(torch.equal(a, b) for a, b in zip(last, snapshots[0]["last"]))
    assert any(not torch.equal(a, b) for a, b in zip(mlp, snapshots[0]["mlp"]))
    assert any(not torch.equal(a, b) for a, b in zip(last, snapshots[1]["last"]))
    assert [s["temp"] for s in snapshots] == pytest.approx([0.02, 0.04])


class _Interrupt(L.Callback):
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def test_dino_resume_matches_uninterrupted(digits: DigitsDataModule, tmp_path: Path) -> None:
    """Student, teacher, centre and the EMA schedule resume where they stopped (the last layer frozen in
    epoch 0 only, the teacher temperature warming up over the two epochs)."""

    def run(root: Path, ckpt: str | None = None, crash: bool = False) -> DINO:
        if ckpt is None:
            L.seed_everything(0, verbose=False)
        module = _dino(warmup_teacher_temp=0.02, warmup_teacher_temp_epochs=2)
        checkpoint = ModelCheckpoint(dirpath=root, filename="last", save_top_k=1, enable_version_counter=False)
        callbacks: list[L.Callback] = [RNGStateKeeper(), EMATeacher(base_momentum=0.9), checkpoint]
        callbacks += [_Interrupt()] if crash else []
        _trainer(root, epochs=2, callbacks=callbacks, enable_checkpointing=True).fit(module, datamodule=digits,
                                                                                     ckpt_path=ckpt)
        return module

    full = run(tmp_path / "full")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "part", crash=True)
    resumed = run(tmp_path / "part", ckpt=str(tmp_path / "part" / "last.ckpt"))
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_dino_views_optimizer_groups_checkpoint_and_registry() -> None:
    torch.manual_seed(0)
    module = METHODS.create("dino", encoder={"name": "small_cnn", "width": 4}, num_local=3, **_TINY)
    assert isinstance(module, DINO) and module.multicrop.num_views == 5
    views = module.views({"input": torch.rand(4, 1, 8, 8)})
    assert [tuple(v.shape) for v in views] == [(4, 1, 8, 8)] * 2 + [(4, 1, 4, 4)] * 3
    given = [torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8), torch.rand(4, 1, 6, 6)]
    assert all(a is b for a, b in zip(module.views({"views": given}), given))  # the datamodule's views as they are
    with pytest.raises(ValueError, match="at least 2 views"):
        module.views({"views": given[:1]})
    out = module.student(views)
    assert [tuple(o.shape) for o in out] == [(4, 32)] * 5

    decay, no_decay = module.parameter_groups()
    names = {id(p): n for n, p in module.named_parameters()}
    assert all(p.ndim > 1 for p in decay["params"]) and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith(".bias") or p.ndim == 1 for p in no_decay["params"])
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert {id(p) for g in (decay, no_decay) for p in g["params"]} == trainable
    assert not any(names[id(p)].startswith("teacher_") for p in module.parameters() if p.requires_grad)

    state = module.state_dict()
    assert "loss.center" in state and any(k.startswith("teacher_encoder.") for k in state)
    assert any(k.startswith("teacher_head.last_layer.parametrizations") for k in state)
    fresh = DINO({"name": "small_cnn", "width": 4}, num_local=3, **_TINY)
    fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), state.values()))
    with pytest.raises(ValueError, match="freeze_last_layer_epochs must be an int >= 0, got -1"):
        DINO({"name": "small_cnn", "width": 4}, freeze_last_layer_epochs=-1)
    assert math.isclose(module.loss.teacher_temperature(0), 0.04)
