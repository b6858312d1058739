"""ClassifierEnsemble: several fine-tunes in one vmapped step equal the same fine-tunes run separately."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins.augment import BatchImageAugment
from fewlabel.plugins.methods import Classifier, ClassifierEnsemble
from tests.callbacks.trainer_helpers import make_trainer as _trainer

SEEDS = (0, 1, 2)


def make_trainer(root: Path, max_epochs: int, **kwargs: object) -> L.Trainer:
    return _trainer(max_epochs, [], default_root_dir=str(root), **kwargs)


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(labels_per_class=2, batch_size=8, val_fraction=0.0)
    dm.setup("fit")
    return dm


def _make(**kwargs: object):
    def make(seed: int) -> Classifier:
        return Classifier({"name": "small_cnn", "width": 4}, num_classes=10, lr=3e-3, encoder_lr_scale=0.5,
                          augment=BatchImageAugment(rotation=10.0, noise=0.05), **kwargs)
    return make


def _separate(dm: DigitsDataModule, make, tmp_path: Path, **trainer_kwargs: object) -> list[Classifier]:
    runs = []
    for seed in SEEDS:
        L.seed_everything(seed, workers=True, verbose=False)
        module = make(seed)
        make_trainer(tmp_path, **trainer_kwargs).fit(module, dm.with_labels(2, seed).labeled_dataloader())
        runs.append(module)
    return runs


def _together(dm: DigitsDataModule, make, tmp_path: Path, vectorize: bool | None = None,
              **trainer_kwargs: object) -> ClassifierEnsemble:
    ensemble = ClassifierEnsemble.build(make, SEEDS, vectorize=vectorize)
    loaders = [dm.with_labels(2, seed).labeled_dataloader() for seed in SEEDS]
    make_trainer(tmp_path, **trainer_kwargs).fit(ensemble, loaders)
    return ensemble


def _assert_same(ensemble: ClassifierEnsemble, runs: list[Classifier], exact: bool) -> None:
    for member, run in zip(ensemble.members, runs):
        ours, theirs = member.state_dict(), run.state_dict()
        assert ours.keys() == theirs.keys()
        for name in ours:
            if exact:
                assert torch.equal(ours[name], theirs[name]), name
            else:
                torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("vectorize", [False, True])
@pytest.mark.parametrize("kwargs", [{}, {"bn_eval": True}, {"freeze_encoder": True}])
def test_members_equal_separate_runs(digits: DigitsDataModule, tmp_path: Path, kwargs: dict, vectorize: bool) -> None:
    """Member after member: bit for bit; vectorized (vmap): up to float rounding."""
    make = _make(**kwargs)
    fresh = ClassifierEnsemble.build(make, SEEDS).members  # the members' initial weights
    runs = _separate(digits, make, tmp_path, max_epochs=6)
    ensemble = _together(digits, make, tmp_path, vectorize=vectorize, max_epochs=6)
    _assert_same(ensemble, runs, exact=not vectorize)
    for member, start in zip(ensemble.members, fresh):  # every member really trained what it claims
        assert not torch.equal(member.head.weight, start.head.weight)
        encoder_moved = any(not torch.equal(a, b) for a, b in zip(member.encoder.parameters(), start.encoder.parameters()))
        assert encoder_moved != bool(kwargs.get("freeze_encoder"))


def test_members_differ_and_predictions_match(digits: DigitsDataModule, tmp_path: Path) -> None:
    make = _make()
    runs = _separate(digits, make, tmp_path, max_epochs=4)
    ensemble = _together(digits, make, tmp_path, vectorize=True, max_epochs=4)
    x = next(iter(digits.test_dataloader()))["input"]
    ensemble.eval()
    with torch.no_grad():
        together = ensemble(x)
        separate = torch.stack([run.eval()(x) for run in runs])
    torch.testing.assert_close(together, separate, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(together[0], together[1])


def test_resumed_ensemble_equals_uninterrupted(digits: DigitsDataModule, tmp_path: Path) -> None:
    make = _make()
    whole = ClassifierEnsemble.build(make, SEEDS, vectorize=True)
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=3, save_top_k=-1)
    loaders = [digits.with_labels(2, seed).labeled_dataloader() for seed in SEEDS]
    _trainer(6, [saver], default_root_dir=str(tmp_path), enable_checkpointing=True).fit(whole, loaders)
    (middle,) = [p for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("epoch=2")]
    resumed = ClassifierEnsemble.build(make, (7, 8, 9), vectorize=True)  # other initial weights and streams: the checkpoint wins
    loaders = [digits.with_labels(2, seed).labeled_dataloader() for seed in SEEDS]
    make_trainer(tmp_path / "resume", max_epochs=6).fit(resumed, loaders, ckpt_path=middle)
    for ours, theirs in zip(resumed.members, whole.members):
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_bad_members_are_refused() -> None:
    make = _make()
    with pytest.raises(ValueError, match="at least one member"):
        ClassifierEnsemble([])
    with pytest.raises(ValueError, match="LP-FT"):
        ClassifierEnsemble([_make(lp_steps=2)(0)])
    with pytest.raises(ValueError, match="other hyperparameters"):
        ClassifierEnsemble([make(0), Classifier({"name": "small_cnn", "width": 4}, num_classes=10, lr=1.0)])
    with pytest.raises(ValueError, match="another architecture"):
        ClassifierEnsemble([make(0), Classifier({"name": "small_cnn", "width": 8}, num_classes=10, lr=3e-3,
                                                encoder_lr_scale=0.5, augment=BatchImageAugment())])
    with pytest.raises(ValueError, match="Classifiers"):
        ClassifierEnsemble([nn.Linear(2, 2)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="names has 1 entries for 2 members"):
        ClassifierEnsemble([make(0), make(1)], names=["a"])


def test_one_loader_per_member_is_required(digits: DigitsDataModule, tmp_path: Path) -> None:
    ensemble = ClassifierEnsemble.build(_make(), SEEDS)
    with pytest.raises(ValueError, match="3 members but the fit has 2 dataloaders"):
        make_trainer(tmp_path, max_epochs=1).fit(ensemble, [digits.with_labels(2, s).labeled_dataloader() for s in (0, 1)])


def test_gradient_clipping_by_norm_is_refused(digits: DigitsDataModule, tmp_path: Path) -> None:
    ensemble = ClassifierEnsemble.build(_make(), SEEDS[:2])
    loaders = [digits.with_labels(2, s).labeled_dataloader() for s in SEEDS[:2]]
    with pytest.raises(ValueError, match="clip gradients by norm"):
        make_trainer(tmp_path, max_epochs=1, gradient_clip_val=1.0).fit(ensemble, loaders)


def test_vectorized_members_need_batches_of_one_shape(digits: DigitsDataModule, tmp_path: Path) -> None:
    """Member after member, draws of other sizes train together; vectorized, the error names the shapes."""
    loaders = [digits.with_labels(1, 0).labeled_dataloader(), digits.with_labels(2, 1).labeled_dataloader()]
    make_trainer(tmp_path, max_epochs=1).fit(ClassifierEnsemble.build(_make(), (0, 1), vectorize=False), loaders)
    with pytest.raises(ValueError, match="differ in shape"):
        make_trainer(tmp_path, max_epochs=1).fit(ClassifierEnsemble.build(_make(), (0, 1), vectorize=True), loaders)
